"""Step `alloc`: PyTorch's caching allocator, as it is and with expandable segments, on padded batches of varying
length (issue 35 item 8: measured before choosing).

The project's PyTorch stages (alignment above all) run batches whose padded length changes from file to file and
whose size the batch sizer changes; the default allocator can leave the blocks of one shape unusable for the next
(reserved but not allocated: fragmentation), and `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` maps memory
into growable segments instead. The variable is read when torch first initialises CUDA, so each setting runs in
its own child process (`python -m bench.gpu_kit.alloc WORKLOAD`), the same workload in both: the random
wav2vec2-base-960h-shaped model (`kit_models`, whisperx's English alignment model, group norm: a batch's segments
share one length), `Workload.batches` batches whose size and padded length are drawn from a fixed seed.

Each child records torch's peak reserved and peak allocated memory over the batches (the model's weights held
throughout), their ratio (reserved / allocated: what fragmentation costs), NVML's peak above the card's level
before the child opened CUDA, the batches' wall seconds, torch's allocation retries (a cudaMalloc that failed and
was retried after freeing the cache) and whether any batch ran out of memory; and whether its segments were in
fact expandable (the allocator's own snapshot). `verdict` applies the rule the project chooses by (`RULE`).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.gpu_kit.steps import StepContext, error_text

MARK = "gpu-kit-alloc: "
MiB = 2**20
CONF_VARIABLE = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"
#: the settings compared, in the order they run: name -> PYTORCH_CUDA_ALLOC_CONF (None: unset, torch's default)
SETTINGS: dict[str, str | None] = {"default": None, "expandable": EXPANDABLE}
#: the rule the project chooses by: expandable segments when they cut the peak reserved memory by more than
#: RESERVED_CUT_PERCENT at no more than TIME_COST_PERCENT more wall time, and run out of memory no more often
RESERVED_CUT_PERCENT = 10.0
TIME_COST_PERCENT = 5.0
RULE = (
    f"expandable segments if they cut peak reserved memory by more than {RESERVED_CUT_PERCENT:g} % at no more than "
    f"{TIME_COST_PERCENT:g} % more wall time and no more out-of-memory errors; else the default allocator"
)
CHILD_MARGIN_SECONDS = 2.0


@dataclass(frozen=True)
class Workload:
    """`batches` batches, each of a size drawn from 1..`max_batch` and a padded length drawn from
    `min_seconds`..`max_seconds` (seeded): the alignment's batches of a run's files, one after another."""

    batches: int = 20
    max_batch: int = 16
    min_seconds: float = 1.0
    max_seconds: float = 30.0  # whisperx's longest segment
    seed: int = 0

    def shapes(self) -> list[tuple[int, float]]:
        """(batch size, seconds) per batch, the same in every process."""
        draw = random.Random(self.seed)
        return [
            (draw.randint(1, self.max_batch), round(draw.uniform(self.min_seconds, self.max_seconds), 2))
            for _ in range(self.batches)
        ]


GPU_WORKLOAD = Workload()


class NvmlPeak:
    """The card's used memory (NVML, device 0) sampled every `interval` s on a thread; None without NVML."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)  # cuda:0 too: run.sh sets CUDA_DEVICE_ORDER=PCI_BUS_ID
            self._read = lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:
            self._read = None
        self.baseline = self.used()
        self.peak = self.baseline

    def used(self) -> int | None:
        return None if self._read is None else self._read()

    def start(self) -> None:
        if self._read is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(self.used())

    def _note(self, used: int | None) -> None:
        if used is not None and self.peak is not None:
            self.peak = max(self.peak, used)

    def stop(self) -> int | None:
        """The peak above the level before this process opened CUDA, in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._note(self.used())
        return None if self.peak is None or self.baseline is None else self.peak - self.baseline


def run_workload(workload: Workload, device: str) -> dict[str, Any]:
    """In this process (the child): the model built on `device`, a small warm-up batch, then the workload's
    batches, with the memory figures read on CUDA (None on the CPU, where only the plumbing runs)."""
    conf = os.environ.get(CONF_VARIABLE)  # read before torch is imported: what the allocator will see
    nvml = NvmlPeak() if device.startswith("cuda") else None
    import torch

    from bench.gpu_kit.kit_models import STAGES

    on_cuda = device.startswith("cuda")
    stage = STAGES["align"]
    model = stage.build(device)
    with torch.inference_mode():
        stage.forward(model, stage.inputs(1, workload.min_seconds, device))  # handles, kernels: paid once
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if nvml is not None:
        nvml.start()
    out_of_memory: list[str] = []
    started = time.perf_counter()
    for size, seconds in workload.shapes():
        try:
            with torch.inference_mode():
                stage.forward(model, stage.inputs(size, seconds, device))
            if on_cuda:
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError as exc:
            out_of_memory.append(f"{size} x {seconds} s: {error_text(exc).splitlines()[0][:200]}")
            torch.cuda.empty_cache()
    wall = time.perf_counter() - started
    figures: dict[str, Any] = {
        "conf": conf,
        "device": device,
        "batches": workload.batches,
        "wall_s": round(wall, 3),
        "out_of_memory": len(out_of_memory),
        "out_of_memory_errors": out_of_memory[:3],
    }
    if on_cuda:
        figures.update(cuda_figures(torch))
    if nvml is not None:
        nvml_peak = nvml.stop()
        figures["nvml_peak_mib"] = None if nvml_peak is None else round(nvml_peak / MiB, 1)
    return figures


def cuda_figures(torch: Any) -> dict[str, Any]:
    """Peak reserved and allocated memory since the peaks were reset, their ratio, the allocator's retries, and
    whether its segments are expandable (its snapshot's own flag)."""
    reserved, allocated = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
    stats = torch.cuda.memory_stats()
    try:
        segments = torch.cuda.memory._snapshot()["segments"]
        expandable: bool | None = any(segment.get("is_expandable") for segment in segments)
    except Exception:
        expandable = None
    return {
        "peak_reserved_mib": round(reserved / MiB, 1),
        "peak_allocated_mib": round(allocated / MiB, 1),
        "reserved_over_allocated": round(reserved / allocated, 3) if allocated else None,
        "alloc_retries": stats.get("num_alloc_retries"),
        "device_allocs": stats.get("num_device_alloc"),
        "expandable_segments": expandable,
    }


def child_env(conf: str | None) -> dict[str, str]:
    """This process's environment with the allocator's setting `conf` (None: unset), nothing else deciding it."""
    env = {key: value for key, value in os.environ.items() if key not in (CONF_VARIABLE, "PYTORCH_ALLOC_CONF")}
    if conf is not None:
        env[CONF_VARIABLE] = conf
    return env


def run_child(conf: str | None, workload: Workload, device: str, timeout: float) -> dict[str, Any]:
    """`python -m bench.gpu_kit.alloc` with the setting `conf`: its figures, or what went wrong."""
    command = [sys.executable, "-m", "bench.gpu_kit.alloc", json.dumps(asdict(workload)), device]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(conf))
    except subprocess.TimeoutExpired:
        return {"ok": False, "conf": conf, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    result: dict[str, Any] = {"exit_code": done.returncode, "process_s": round(time.perf_counter() - started, 2)}
    if not lines:
        return {**result, "ok": False, "conf": conf, "error": (done.stdout + done.stderr).strip()[-1500:]}
    return {**result, "ok": True, **json.loads(lines[-1][len(MARK) :])}


def percent_change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return round(100.0 * (after - before) / before, 1)


def verdict(default: dict[str, Any], expandable: dict[str, Any]) -> dict[str, Any]:
    """The project's choice by `RULE` from the two runs' figures (None where a figure is missing)."""
    reserved = percent_change(default.get("peak_reserved_mib"), expandable.get("peak_reserved_mib"))
    wall = percent_change(default.get("wall_s"), expandable.get("wall_s"))
    result: dict[str, Any] = {"rule": RULE, "reserved_change_percent": reserved, "time_change_percent": wall}
    if reserved is None or wall is None or not (default.get("ok") and expandable.get("ok")):
        return {**result, "choice": None, "why": "no figures to choose by (no GPU, or a run failed)"}
    if expandable.get("expandable_segments") is False:
        return {**result, "choice": None, "why": f"{CONF_VARIABLE} was not applied: no segment was expandable"}
    more_oom = expandable.get("out_of_memory", 0) > default.get("out_of_memory", 0)
    chosen = -reserved > RESERVED_CUT_PERCENT and wall <= TIME_COST_PERCENT and not more_oom
    why = f"peak reserved {reserved:+.1f} %, wall time {wall:+.1f} %" + (", more out-of-memory" if more_oom else "")
    return {**result, "choice": "expandable_segments" if chosen else "default", "why": why}


def compare(context: StepContext, device: str = "cuda", workload: Workload = GPU_WORKLOAD) -> dict[str, Any]:
    """The workload once per setting (`SETTINGS`), each in its own child, and the verdict."""
    result: dict[str, Any] = {"workload": asdict(workload), "model": "wav2vec2-base-960h-shaped (random)"}
    runs: dict[str, dict[str, Any]] = {}
    for index, (name, conf) in enumerate(SETTINGS.items()):
        share = (context.left() - CHILD_MARGIN_SECONDS) / (len(SETTINGS) - index)
        runs[name] = run_child(conf, workload, device, max(5.0, share))
    result["runs"] = runs
    result["verdict"] = verdict(runs["default"], runs["expandable"])
    return result


def alloc_step(context: StepContext) -> dict[str, Any]:
    return compare(context)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.gpu_kit.alloc WORKLOAD_JSON DEVICE")
    figures = run_workload(Workload(**json.loads(sys.argv[1])), sys.argv[2])
    print(MARK + json.dumps(figures, default=str), flush=True)
