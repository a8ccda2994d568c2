"""The doctor's GPU rows: every GPU this process may use, named as the run names its workers (gpu0, gpu1, ...),
and the workers `--gpus` would start: the job's --gpus, else all of them.

The GPUs are read through NVML only (batch.engine.gpu.listing) and the workers planned by the run's own plan
(batch.run.pool.plan), so the rows say what a run would do. Without the NVIDIA driver there is one row that says
so; it fails only when the job asks for --gpus.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import ModuleType

from batch.common.advice import Check
from batch.common.errors import EnvironmentProblem
from batch.common.runtime import available_cpus
from batch.engine.config import RuntimeOptions
from batch.engine.gpu.listing import GpusUnavailable, VisibleGpu, visible_gpus
from batch.run.pool.plan import gpu_workers
from batch.settings.options import Settings
from batch.settings.values import GpuSelection

NAME = "gpus"
NO_GPU_FIX = (
    "check `nvidia-smi` and CUDA_VISIBLE_DEVICES; in Docker run with `--gpus all`, in Kubernetes request "
    "`nvidia.com/gpu`; or leave --gpus out"
)
PICK_FIX = "name GPUs among the rows above (gpu2 is --gpus device=2), give a count, or give --gpus all"


def gpu_checks(
    settings: Settings,
    cuda_problem: str | None,
    environ: Mapping[str, str] | None = None,
    nvml: ModuleType | None = None,
) -> list[Check]:
    """One row per GPU, then the workers row. `cuda_problem`: why CUDA cannot run the models here
    (batch.engine.gpu.device.gpu_problem), None when it can."""
    environ = os.environ if environ is None else environ
    try:
        visible = visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"), nvml)
    except GpusUnavailable as exc:
        return [no_gpu_check(settings, str(exc))]
    if not visible:
        listed = environ.get("CUDA_VISIBLE_DEVICES")
        where = f" in CUDA_VISIBLE_DEVICES={listed!r}" if listed is not None else ""
        return [no_gpu_check(settings, f"NVML lists none{where}")]
    rows = [Check(f"gpu{gpu.number}", "ok", gpu.summary()) for gpu in visible]
    return [*rows, workers_check(settings, cuda_problem, visible, environ, nvml)]


def no_gpu_check(settings: Settings, why: str) -> Check:
    if settings.gpus is None:
        return Check(NAME, "skip", f"no GPU: {why}; --gpus cannot be used here")
    return Check(NAME, "fail", f"--gpus {settings.gpus}: no GPU: {why}", NO_GPU_FIX)


def workers_check(
    settings: Settings,
    cuda_problem: str | None,
    visible: Sequence[VisibleGpu],
    environ: Mapping[str, str],
    nvml: ModuleType | None,
) -> Check:
    """What the job's --gpus (else --gpus all) would start, as the run plans it; fails only the job's own."""
    asked = settings.gpus is not None
    selection = GpuSelection.parse(settings.gpus) if settings.gpus is not None else GpuSelection(every=True)
    if settings.device == "cpu":  # the settings refuse --gpus with it: this is only what could be
        return Check(NAME, "skip", f"{len(visible)} GPU(s) not used (--device cpu); --gpus needs cuda or auto")
    if cuda_problem is not None:
        detail = f"--gpus {selection} cannot start workers: CUDA cannot run the models here (see the rows above)"
        return Check(NAME, "fail" if asked else "skip", detail)
    threads = settings.threads or available_cpus()
    try:
        slots = gpu_workers(selection, RuntimeOptions("cuda", "float16", threads, settings.batch_size), environ, nvml)
    except EnvironmentProblem as exc:
        return Check(NAME, "fail" if asked else "warn", str(exc), PICK_FIX)
    names = {gpu.uuid: gpu.name or "unnamed" for gpu in visible}
    started = ", ".join(f"{slot.name} ({names.get(slot.environ['CUDA_VISIBLE_DEVICES'], '?')})" for slot in slots)
    each = f"{slots[0].threads} CPU thread{'s' if slots[0].threads > 1 else ''} each"
    workers = f"{len(slots)} worker{'s' if len(slots) > 1 else ''}"
    return Check(NAME, "ok", f"--gpus {selection} would start {workers}, {each}: {started}")
