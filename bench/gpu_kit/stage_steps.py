"""Steps `vad`, `align`, `align_large` and `embed`: each stage's GPU memory per batch item against the batch
sizer's constant (batch.engine.gpu.sizing), and its throughput at several batch sizes (alignment: batch 1, as
whisperx runs each segment, against batched forwards of equal-length segments, as the project batches wav2vec2;
`align` with English's wav2vec2-base, `align_large` with the XLSR-53-large shape most other languages load)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.gpu_kit.measuring import Meter
from bench.gpu_kit.steps import StepContext, attempt


@dataclass(frozen=True)
class Sweep:
    memory_sizes: tuple[int, ...]  # batch sizes for the memory per item, on items of the stage's own length
    throughput_sizes: tuple[int, ...]
    throughput_seconds: float  # length of one item in the throughput runs


SWEEPS = {
    "vad": Sweep((1, 8, 32, 128), (1, 8, 32, 128), 5.0),
    "align": Sweep((1, 2, 4, 8), (1, 4, 16, 32), 10.0),  # memory on 30 s segments, throughput on 10 s ones
    "align_large": Sweep((1, 2, 4, 8), (1, 4, 16), 10.0),
    "embed": Sweep((1, 8, 32), (1, 8, 32, 64), 10.0),
}
#: the Whisper model whose sizer seeds are compared (alignment's and diarization's do not depend on it)
SIZER_MODEL, SIZER_COMPUTE_TYPE = "large-v3", "float16"


def sizer_constant(stage: str | None) -> int | None:
    """The batch sizer's need per item for `stage` before anything is measured (None when it sizes no such stage)."""
    from batch.engine.gpu.needs import seed_item_bytes

    if stage is None:
        return None
    return seed_item_bytes(SIZER_MODEL, SIZER_COMPUTE_TYPE).get(stage)


def stage_figures(
    name: str,
    context: StepContext,
    device: str = "cuda",
    meter: Meter | None = None,
    sync: Callable[[], None] | None = None,
    sweep: Sweep | None = None,
) -> dict[str, Any]:
    """Stage `name`'s network built on `device`: its memory per item (`sweep.memory_sizes`) read by `meter`, then
    its throughput (`sweep.throughput_sizes`); the defaults are the GPU's (CudaMeter, cuda_sync, SWEEPS)."""
    import torch

    from bench.gpu_kit.kit_models import STAGES, parameter_count
    from bench.gpu_kit.measuring import CudaMeter, cuda_sync, memory_per_item, release_torch_cache, throughput

    stage, sweep = STAGES[name], sweep or SWEEPS[name]
    started = time.perf_counter()
    model = stage.build(device)
    result: dict[str, Any] = {
        "parameters": parameter_count(model),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    result["item_seconds"] = stage.item_seconds
    result["sizer_stage"] = stage.sizer_stage

    def run(size: int, seconds: float) -> None:
        with torch.inference_mode():
            stage.forward(model, stage.inputs(size, seconds, device))

    # Memory first, each size with torch's cache emptied before it (see memory_per_item), so that NVML sees what
    # the batch takes, not what it takes beyond the blocks the one before left.
    attempt(
        result,
        "memory",
        lambda: memory_per_item(
            lambda size: run(size, stage.item_seconds),
            sweep.memory_sizes,
            meter or CudaMeter(),
            context.left,
            sizer_constant(stage.sizer_stage),
            release_torch_cache if device.startswith("cuda") else None,
        ),
    )
    attempt(
        result,
        "throughput",
        lambda: throughput(
            lambda size: run(size, sweep.throughput_seconds),
            sweep.throughput_sizes,
            sweep.throughput_seconds,
            sync or cuda_sync,
            lambda: context.left() - 8,
        ),
    )
    if name == "vad":
        from batch.engine.vad.segmentation import BATCH_SIZE

        result["project_batch_size"] = BATCH_SIZE  # the VAD's fixed windows per forward
    return result


def vad_step(context: StepContext) -> dict[str, Any]:
    return stage_figures("vad", context)


def align_step(context: StepContext) -> dict[str, Any]:
    return stage_figures("align", context)


def align_large_step(context: StepContext) -> dict[str, Any]:
    return stage_figures("align_large", context)


def embed_step(context: StepContext) -> dict[str, Any]:
    return stage_figures("embed", context)
