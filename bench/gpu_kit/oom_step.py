"""Step `oom`: a real out-of-memory in each stage and the project's back-off recovering from it.

A ballast leaves `HEADROOM_BYTES` free on the card (as another process on a shared card would), and the sizer
is seeded far below the stage's real need, so the planned batch (the stage's ceiling in `CEILINGS`) cannot fit:
`batch.engine.gpu.oom.run_with_oom_backoff` must see the real CUDA error, free the caches, halve the size and
run again until a size fits. Recorded per stage: the sizes tried, the first error's text, what the back-off's
record says, whether the next file starts at the lowered size (no new out-of-memory), and whether torch's
allocated memory went back to its level before (nothing of the failed batches left behind).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.gpu_kit.steps import StepContext, error_text

GiB = 2**30
HEADROOM_BYTES = 3 * GiB
#: the first batch tried per stage: far past what 3 GiB hold (a 30 s segment takes ~0.5 GiB in wav2vec2-base)
CEILINGS = {"vad": 4096, "align": 256, "embed": 1024}
UNDERESTIMATE_BYTES = 2**20  # the need per item the sizer is told: 1 MiB


def first_line(exc: BaseException) -> str:
    return error_text(exc).splitlines()[0][:300]


def backoff_trial(
    stage: str,
    sizer: Any,
    run_batch: Callable[[int], Any],
    free_caches: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run `run_batch(size)` under the back-off twice, as two files in a row: the first from the sizer's plan
    (expected to run out of memory and back off), the second from what the first left the sizer at."""
    from batch.engine.gpu.oom import GpuOutOfMemory, free_gpu_caches, is_out_of_memory, run_with_oom_backoff

    caches = free_caches or free_gpu_caches
    result: dict[str, Any] = {}
    for file in ("first_file", "next_file"):
        tried: list[int] = []
        errors: list[str] = []

        def call(size: int, tried: list[int] = tried, errors: list[str] = errors) -> Any:
            tried.append(size)
            try:
                return run_batch(size)
            except Exception as exc:
                if is_out_of_memory(exc):
                    errors.append(first_line(exc))
                raise

        started = clock()
        try:
            _, record = run_with_oom_backoff(stage, sizer, call, free_caches=caches)
            outcome: dict[str, Any] = {"recovered": True, "record": record.to_dict()}
        except GpuOutOfMemory as exc:
            outcome = {"recovered": False, "error": str(exc), "record": exc.record.to_dict()}
        outcome.update(tried=tried, seconds=round(clock() - started, 2), first_error=errors[0] if errors else None)
        result[file] = outcome
    return result


def stage_trial(name: str, probe: Any, seconds_left: Callable[[], float]) -> dict[str, Any]:
    """`backoff_trial` on the real network of stage `name` under the ballast."""
    import torch

    from batch.engine.gpu.sizing import BatchSizer
    from bench.gpu_kit.kit_models import STAGES
    from bench.gpu_kit.measuring import ballast

    stage = STAGES[name]
    model = stage.build("cuda")

    def run_batch(size: int) -> None:
        with torch.inference_mode():
            stage.forward(model, stage.inputs(size, stage.item_seconds, "cuda"))
        torch.cuda.synchronize()

    sizer = BatchSizer(CEILINGS[name], {name: UNDERESTIMATE_BYTES}, probe)
    allocated_before = torch.cuda.memory_allocated()
    with ballast(HEADROOM_BYTES) as held:
        result = backoff_trial(name, sizer, run_batch)
        result["ballast_gib"] = round(held / GiB, 1)
        result["left_allocated_mib"] = round((torch.cuda.memory_allocated() - allocated_before - held) / 2**20, 1)
    return result


def oom_step(context: StepContext) -> dict[str, Any]:
    from batch.engine.gpu.oom import free_gpu_caches

    result: dict[str, Any] = {"headroom_gib": HEADROOM_BYTES / GiB, "ceilings": CEILINGS}
    probe = None
    try:
        from batch.engine.gpu.nvml import NvmlProbe

        probe = NvmlProbe.open(0)
    except Exception as exc:
        result["probe"] = error_text(exc)
    for name in CEILINGS:
        if context.left() < 10:
            result[name] = {"skipped": "out of time"}
            continue
        try:
            result[name] = stage_trial(name, probe, context.left)
        except Exception as exc:
            result[name] = {"error": error_text(exc)}
        free_gpu_caches()  # the stage's network, gone with stage_trial's frame
    return result
