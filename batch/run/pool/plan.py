"""Which worker processes a run starts: one per GPU that `--gpus` names, or `--workers` N on the CPU.

No plan (an empty tuple) is today's single pipeline, in the main process: the default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from batch.common.errors import ConfigError, EnvironmentProblem
from batch.common.runtime import THREAD_POOL_ENV_VARS
from batch.engine.config import RuntimeOptions
from batch.engine.gpu.listing import GpusUnavailable, VisibleGpu, select_gpus, visible_gpus
from batch.settings.values import GpuSelection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process of the run, and the one a fresh process replaces when it dies."""

    name: str  # gpu0, cpu1: in the logs, the metrics and the run report
    device: str  # cuda | cpu
    threads: int
    detail: str  # GPU 2 (NVIDIA A100, 40.0 GiB, GPU-...) | CPU, 4 threads
    environ: Mapping[str, str] = field(default_factory=dict)  # set in the worker before anything loads

    def runtime(self, shared: RuntimeOptions) -> RuntimeOptions:
        from dataclasses import replace

        return replace(shared, device=self.device, threads=self.threads)


def plan_workers(
    gpus: str | None,
    workers: int | None,
    runtime: RuntimeOptions,
    environ: Mapping[str, str],
    nvml: object = None,
) -> tuple[WorkerSlot, ...]:
    """The run's workers; () for one pipeline in this process. Raises EnvironmentProblem (exit 3) when `--gpus`
    names GPUs this process cannot see or use."""
    if gpus is not None:
        return gpu_workers(GpuSelection.parse(gpus), runtime, environ, nvml)
    if workers is not None and workers > 1:
        if runtime.device != "cpu":
            raise ConfigError(
                "workers",
                f"--workers splits the CPU, but this run uses {runtime.device} (device auto found a GPU): "
                "use --gpus for one worker per GPU, or --device cpu",
            )
        return cpu_workers(workers, runtime.threads)
    return ()


def gpu_workers(
    selection: GpuSelection, runtime: RuntimeOptions, environ: Mapping[str, str], nvml: object = None
) -> tuple[WorkerSlot, ...]:
    if runtime.device != "cuda":
        raise EnvironmentProblem(
            f"--gpus {selection}: no usable GPU here (the device resolved to {runtime.device}); "
            "`whisperx-batch doctor` says why"
        )
    try:
        visible = visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"), nvml)  # type: ignore[arg-type]
        chosen = select_gpus(selection.every, selection.count, selection.devices, visible)
    except GpusUnavailable as exc:
        raise EnvironmentProblem(f"--gpus {selection}: {exc}") from None
    threads = shares(runtime.threads, len(chosen))
    return tuple(_gpu_slot(gpu, each) for gpu, each in zip(chosen, threads, strict=True))


def _gpu_slot(gpu: VisibleGpu, threads: int) -> WorkerSlot:
    return WorkerSlot(
        name=f"gpu{gpu.number}",
        device="cuda",
        threads=threads,
        detail=gpu.describe(),
        # By UUID, whatever CUDA's order; the order set too, so that the worker's cuda:0 is doctor's gpuN anyway.
        environ={"CUDA_VISIBLE_DEVICES": gpu.uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **_thread_pools(threads)},
    )


def cpu_workers(count: int, threads: int) -> tuple[WorkerSlot, ...]:
    if count > threads:
        log.warning("%d workers for %d CPU threads: each gets 1 thread, and they share the cores", count, threads)
    return tuple(
        WorkerSlot(f"cpu{index}", "cpu", each, f"CPU, {each} thread{'s' if each > 1 else ''}", _thread_pools(each))
        for index, each in enumerate(shares(threads, count))
    )


def shares(threads: int, workers: int) -> list[int]:
    """The threads split as evenly as they go (8 for 3: 3, 3, 2), at least 1 each."""
    each, left = divmod(threads, workers)
    return [max(1, each + (index < left)) for index in range(workers)]


def _thread_pools(threads: int) -> dict[str, str]:
    """A worker's OpenMP and BLAS pools sized to its own share: the parent's variables say the whole machine."""
    return {name: str(threads) for name in THREAD_POOL_ENV_VARS}
