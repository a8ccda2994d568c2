"""Which device the models run on: the NVIDIA driver, CUDA and cuDNN, from what NVML, PyTorch and CTranslate2 say,
judged as the run needs them (`resolve_device`) and as the doctor shows them (`device_checks`).

`probe_gpu` is the seam through which they see the GPU, so that tests can stand in for a GPU machine.
"""

from __future__ import annotations

import ctypes
import logging
import re
from dataclasses import dataclass

from batch.common.advice import NO_DRIVER_FIX, Check, Status, _cudnn_fix, advice_for
from batch.common.errors import EnvironmentProblem

# The cuDNN library CTranslate2 (cuDNN 9 builds) loads by name when it first runs on CUDA.
CUDNN_OPS_LIBRARY = "libcudnn_ops.so.9"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuFacts:
    """What the NVIDIA driver (NVML), PyTorch and CTranslate2 say about CUDA on this machine."""

    driver_version: str | None = None
    driver_cuda: str | None = None  # newest CUDA the driver supports, "12.8"
    gpus: tuple[str, ...] = ()
    nvml_error: str | None = None
    torch_cuda_build: str | None = None  # CUDA PyTorch was built for; None for a CPU-only build
    torch_devices: int = 0
    torch_error: str | None = None
    ctranslate2_devices: int = 0
    cudnn_version: str | None = None
    cudnn_error: str | None = None  # why CUDNN_OPS_LIBRARY could not be loaded

    @property
    def usable(self) -> bool:
        return self.torch_devices > 0 and self.ctranslate2_devices > 0


# ---------------------------------------------------------------------------------------------------------
# Seam: the real GPU probe


def probe_gpu() -> GpuFacts:
    """Ask NVML, PyTorch and CTranslate2 about CUDA, and try loading cuDNN as CTranslate2 would."""
    facts: dict[str, object] = {}
    facts.update(_probe_nvml())
    facts.update(_probe_torch())
    facts.update(_probe_ctranslate2())
    facts.update(_probe_cudnn())
    return GpuFacts(**facts)  # type: ignore[arg-type]


def _probe_nvml() -> dict[str, object]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
                gpus.append(f"{_text(pynvml.nvmlDeviceGetName(handle))} ({memory:.0f} GiB)")
            return {
                "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
                "driver_cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "gpus": tuple(gpus),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return {"nvml_error": str(exc) or type(exc).__name__}


def _probe_torch() -> dict[str, object]:
    try:
        import torch
    except Exception as exc:
        return {"torch_error": f"cannot import torch: {exc}"}
    facts: dict[str, object] = {"torch_cuda_build": torch.version.cuda}
    try:
        version = torch.backends.cudnn.version() if torch.version.cuda else None
        if version:
            facts["cudnn_version"] = f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
        if torch.cuda.is_available():
            facts["torch_devices"] = torch.cuda.device_count()
        elif torch.version.cuda:
            torch.cuda.init()  # raises with the reason ("Found no NVIDIA driver on your system...")
            facts["torch_error"] = "no usable CUDA device"
    except Exception as exc:
        # The first sentence says it ("Found no NVIDIA driver on your system."); the rest is a download link.
        facts["torch_error"] = str(exc).strip().split(". ")[0] or type(exc).__name__
    return facts


def _probe_ctranslate2() -> dict[str, object]:
    try:
        import ctranslate2

        return {"ctranslate2_devices": ctranslate2.get_cuda_device_count()}
    except Exception:
        return {"ctranslate2_devices": 0}


def _probe_cudnn() -> dict[str, object]:
    # Loaded after PyTorch (as in a run), by name, the way CTranslate2 loads it.
    try:
        ctypes.CDLL(CUDNN_OPS_LIBRARY)
    except OSError as exc:
        return {"cudnn_error": str(exc)}
    return {}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------------------
# The checks


def device_checks(facts: GpuFacts, requested: str) -> list[Check]:
    """NVIDIA driver, CUDA and cuDNN, judged by what --device asks: `cuda` needs them, `auto` falls back."""
    missing: Status = {"cuda": "fail", "auto": "warn"}.get(requested, "skip")
    uses_cuda = requested == "cuda" or (requested == "auto" and facts.usable)
    checks = [_driver_check(facts, missing), _cuda_check(facts, requested, missing)]
    if facts.cudnn_error is None:
        version = f"cuDNN {facts.cudnn_version}: " if facts.cudnn_version else ""
        checks.append(Check("cudnn", "ok", f"{version}{CUDNN_OPS_LIBRARY} loads"))
    elif uses_cuda:
        checks.append(
            Check("cudnn", "fail", f"{CUDNN_OPS_LIBRARY} cannot be loaded: {facts.cudnn_error}", _cudnn_fix())
        )
    else:
        checks.append(Check("cudnn", "skip", f"not needed on the CPU ({CUDNN_OPS_LIBRARY} not found: needed for CUDA)"))
    return checks


def gpu_problem(facts: GpuFacts) -> str | None:
    """Why CUDA cannot run the models here, with what to do about it; None when it can."""
    failed = [check for check in device_checks(facts, "cuda") if check.status == "fail"]
    if not failed:
        return None
    if any(check.name != "cudnn" for check in failed):  # no GPU to run on: cuDNN is beside the point
        failed = [check for check in failed if check.name != "cudnn"]
    fix = next((check.fix for check in failed if check.fix), None)
    problem = "; ".join(f"{check.name}: {check.detail}" for check in failed)
    return f"{problem}. Fix: {fix}" if fix else problem


def _driver_check(facts: GpuFacts, missing: Status) -> Check:
    if facts.driver_version is None:
        reason = facts.nvml_error or "NVML found no driver"
        return Check("nvidia driver", missing, f"not visible ({reason})", NO_DRIVER_FIX if missing != "skip" else None)
    detail = f"{facts.driver_version} (CUDA {facts.driver_cuda}), {len(facts.gpus)} GPU: {', '.join(facts.gpus)}"
    driver, built = _major_minor(facts.driver_cuda), _major_minor(facts.torch_cuda_build)
    if driver and built and driver < built:
        # An older minor release of the same major runs through CUDA's minor version compatibility; an older
        # major does not run at all.
        status: Status = missing if driver[0] < built[0] else "warn"
        fix = advice_for("driver too old")
        return Check("nvidia driver", status, f"{detail}; PyTorch was built for CUDA {facts.torch_cuda_build}", fix)
    return Check("nvidia driver", "ok", detail)


def _cuda_check(facts: GpuFacts, requested: str, missing: Status) -> Check:
    if facts.usable:
        used = "the run uses cuda" if requested != "cpu" else "not used (--device cpu)"
        detail = f"{facts.torch_devices} device(s) for PyTorch (CUDA {facts.torch_cuda_build}), "
        return Check("cuda", "ok", detail + f"{facts.ctranslate2_devices} for CTranslate2; {used}")
    if facts.torch_cuda_build is None:
        reason = facts.torch_error or "PyTorch is a CPU-only build"
        fix = "install PyTorch's CUDA build (the default on PyPI for Linux x86_64), or use the project's image"
    else:
        reason = facts.torch_error or "no usable CUDA device"
        # When the driver is not even visible, the driver row already says what to do.
        fix = None if facts.driver_version is None else advice_for(reason) or advice_for("no usable CUDA device")
    fallback = {"auto": "; the run uses the CPU (slow with large models)", "cpu": " (--device cpu)"}.get(requested, "")
    detail = f"no usable device: {reason}; CTranslate2 sees {facts.ctranslate2_devices}{fallback}"
    return Check("cuda", missing, detail, fix if missing != "skip" else None)


def _major_minor(version: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version or "")[:2])


def resolve_device(requested: str) -> str:
    """`auto` -> cuda when CUDA and cuDNN can run the models, else cpu: with a warning and the fix when a GPU is
    there but cannot be used (cuDNN 9 not found, a driver too old). `cuda` that cannot run is exit 3, with the fix.
    """
    if requested == "cpu":
        return "cpu"

    facts = probe_gpu()
    problem = gpu_problem(facts)
    if problem is None:
        if requested == "auto":
            log.info("device auto: using cuda")
        return "cuda"
    if requested == "cuda":
        raise EnvironmentProblem(f"device cuda was asked for but CUDA cannot run here: {problem}")
    if facts.gpus:
        log.warning("device auto: a GPU is present but cannot run the models, so the CPU is used (slow): %s", problem)
    else:
        log.info("device auto: using cpu (no usable CUDA device)")
    return "cpu"


def default_compute_type(device: str) -> str:
    return "float16" if device == "cuda" else "int8"


# CTranslate2 picks a compute type the device supports for these.
ANY_DEVICE_COMPUTE_TYPES = ("default", "auto")


def compute_type_problem(compute_type: str, device: str) -> str | None:
    """Why CTranslate2 cannot run `compute_type` on `device` here, naming what it can; None when it can (or when
    CTranslate2 cannot tell: the device check then says what is wrong)."""
    if compute_type in ANY_DEVICE_COMPUTE_TYPES:
        return None
    try:
        import ctranslate2

        supported = sorted(ctranslate2.get_supported_compute_types(device))
    except Exception:
        return None
    if compute_type in supported:
        return None
    where = "the CPU" if device == "cpu" else "this GPU"
    return f"{compute_type} cannot run on {where}; supported here: {', '.join(supported)} (or default)"
