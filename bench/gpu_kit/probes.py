"""Steps `cuda`, `device` and `memory`: what torch sees, what the project's device choice decides, and how NVML's
free memory compares with the CUDA runtime's (`torch.cuda.mem_get_info`) on the same device."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import sys
from typing import Any

from bench.gpu_kit.steps import NO_GPU, StepContext, attempt, error_text

MiB = 2**20
#: the libraries a run on CUDA loads by name: CTranslate2 4.x's cuBLAS (CUDA 12) and the cuDNN the device
#: check has asked for (item 1 of issue 29); torch's CUDA 13 build brings cuBLAS 13
LIBRARIES = ("libcublas.so.12", "libcublasLt.so.12", "libcudnn_ops.so.9", "libcublas.so.13", "libcuda.so.1")


# --- cuda ----------------------------------------------------------------------------------------------------


def cuda_facts() -> dict[str, Any]:
    """torch's version and CUDA build, and the device it sees; "reason" says why there is none."""
    import torch

    facts: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
    }
    facts["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        available = torch.cuda.is_available()
        if not available and torch.version.cuda:
            torch.cuda.init()  # raises with the driver's reason ("Found no NVIDIA driver on your system...")
    except Exception as exc:
        available, facts["reason"] = False, error_text(exc)
    facts["available"] = bool(available)
    if not available:
        facts.setdefault("reason", "torch is a CPU-only build" if not torch.version.cuda else "no CUDA device")
        return facts
    properties = torch.cuda.get_device_properties(0)
    facts.update(
        device_count=torch.cuda.device_count(),
        name=properties.name,
        capability=f"{properties.major}.{properties.minor}",
        total_mib=round(properties.total_memory / MiB),
        cudnn=torch.backends.cudnn.version(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        tf32_cudnn=torch.backends.cudnn.allow_tf32,
    )
    attempt(facts, "driver", _driver_version)
    return facts


def _driver_version() -> str:
    import pynvml

    pynvml.nvmlInit()
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    finally:
        pynvml.nvmlShutdown()


def cuda_step(context: StepContext) -> dict[str, Any]:
    facts = cuda_facts()
    if not facts["available"]:
        (context.steps_dir / NO_GPU).write_text(facts["reason"] + "\n")
    return facts


# --- device --------------------------------------------------------------------------------------------------


def library_loads() -> dict[str, str]:
    """For each of `LIBRARIES`: "loads", or the loader's error, when opened by bare name as CTranslate2 opens it."""
    loads = {}
    for name in LIBRARIES:
        try:
            ctypes.CDLL(name)
            loads[name] = "loads"
        except OSError as exc:
            loads[name] = str(exc)
    return loads


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


def decide(requested: str) -> dict[str, Any]:
    """What `batch.engine.gpu.device.resolve_device(requested)` decides here, with what it logs, or its error."""
    from batch.engine.gpu import device

    handler = _Records()
    logger = logging.getLogger(device.__name__)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        decision: dict[str, Any] = {"device": device.resolve_device(requested)}
    except Exception as exc:
        decision = {"device": None, "error": error_text(exc)}
    finally:
        logger.removeHandler(handler)
    decision["log"] = handler.lines
    return decision


def device_step(context: StepContext) -> dict[str, Any]:
    """The project's device choice as a pip install there would make it: the facts its probe gathers, the
    problems it finds (the doctor's failing rows), and what `--device auto` and `--device cuda` become."""
    from batch.engine.gpu import device

    result: dict[str, Any] = {}
    facts = attempt(result, "facts", lambda: dataclasses.asdict(device.probe_gpu()))
    if facts is not None:
        probed = device.GpuFacts(**facts)
        attempt(result, "problem", lambda: device.gpu_problem(probed))
        attempt(result, "problems", lambda: [dataclasses.asdict(found) for found in device.cuda_problems(probed)])
    result["auto"] = decide("auto")
    result["cuda"] = decide("cuda")
    if hasattr(device, "default_compute_type"):
        attempt(result, "compute_type", lambda: device.default_compute_type(result["auto"]["device"] or "cpu"))
    result["libraries"] = library_loads()
    return result


# --- memory --------------------------------------------------------------------------------------------------


def nvml_memory(index: int = 0) -> dict[str, int]:
    """NVML's free, used and total MiB of device `index` (NVML's numbering: run.sh sets CUDA_DEVICE_ORDER)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return {"free": memory.free // MiB, "used": memory.used // MiB, "total": memory.total // MiB}
    finally:
        pynvml.nvmlShutdown()


def torch_memory() -> dict[str, int]:
    """The CUDA runtime's free and total MiB, and what torch's caching allocator holds."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return {
        "free": free // MiB,
        "total": total // MiB,
        "allocated": torch.cuda.memory_allocated() // MiB,
        "reserved": torch.cuda.memory_reserved() // MiB,
    }


def project_probe() -> dict[str, Any]:
    """What the batch sizer's probe (`NvmlProbe.open(0)`: CUDA device 0 matched to NVML) reads."""
    from batch.engine.gpu.nvml import NvmlProbe

    probe = NvmlProbe.open(0)
    reading = probe.free_and_total()
    free, total = reading if reading is not None else (None, None)
    used = probe.used()
    return {
        "uuid": probe.uuid,
        "free": None if free is None else free // MiB,
        "total": None if total is None else total // MiB,
        "used": None if used is None else used // MiB,
    }


def memory_readings() -> dict[str, Any]:
    """NVML and the CUDA runtime side by side: before CUDA starts, once this process has a context, with 1 GiB
    allocated, with it freed but kept in torch's cache (reserved, unallocated), and after empty_cache."""
    import torch

    readings: dict[str, Any] = {}
    attempt(readings, "nvml_before_cuda", nvml_memory)
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the context, and the allocator's first block
    phases = {}
    phases["context"] = {"nvml": nvml_memory(), "torch": torch_memory()}
    block = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    phases["1 GiB allocated"] = {"nvml": nvml_memory(), "torch": torch_memory()}
    del block
    phases["freed, cached"] = {"nvml": nvml_memory(), "torch": torch_memory()}
    torch.cuda.empty_cache()
    phases["after empty_cache"] = {"nvml": nvml_memory(), "torch": torch_memory()}
    readings["phases"] = phases
    attempt(readings, "project_probe", project_probe)
    before = readings.get("nvml_before_cuda", {})
    if "used" in before:
        readings["context_mib"] = phases["context"]["nvml"]["used"] - before["used"]
    readings["free_difference_mib"] = {
        name: phase["nvml"]["free"] - phase["torch"]["free"] for name, phase in phases.items()
    }
    return readings


def memory_step(context: StepContext) -> dict[str, Any]:
    return memory_readings()
