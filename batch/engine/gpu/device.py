"""Which device the models run on, judged by what the stages really load on CUDA.

PyTorch (VAD, alignment, diarization) brings its CUDA libraries and finds them itself, cuDNN included (loaded
lazily, by path, from its own wheels). CTranslate2 (the ASR) links no CUDA library: when it first runs on CUDA
it loads `libcuda.so.1` (the driver) and cuBLAS by the name its build compiled in (`libcublas.so.12` for CUDA 12
builds: `kernels.cublas_library`), and no cuDNN. A run on cuda therefore needs the driver, a CUDA device for
PyTorch and for CTranslate2, code of CTranslate2's that the card runs with this driver (`kernels`: an H100 JITs
its PTX, which needs a driver as new as the CUDA that wrote it), and cuBLAS where the loader finds it:
`load_cublas` makes sure of the last, loading first the copy PyTorch's wheels carry (nvidia/cublas/lib beside
PyTorch, which its libraries link to), so that the process holds one cuBLAS, and finding NVIDIA's wheel in any
folder packages are imported from. cuDNN is only reported (the doctor's information row).

`probe_gpu` is the seam through which the run and the doctor see the GPU, so that tests can stand in for a GPU
machine; `cuda_problems` says what stops CUDA here, each with its fix, and `resolve_device` decides.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.common.advice import NO_DRIVER_FIX, advice_for, cublas_fix, pip_nvidia_lib_dirs, torch_nvidia_lib_dir
from batch.common.errors import EnvironmentProblem
from batch.engine.gpu.kernels import cannot_run, cublas_library, installed_code, kernels_fix
from batch.engine.gpu.nvml import DriverReading, NvmlUnavailable, read_driver

# Reported only: PyTorch loads its cuDNN itself, and CTranslate2 4.x loads none.
CUDNN_LIBRARY = "libcudnn_ops.so.9"

CPU_TORCH_FIX = "install PyTorch's CUDA build (the default on PyPI for Linux x86_64), or use the project's image"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuFacts:
    """What the NVIDIA driver (NVML), PyTorch and CTranslate2 say about CUDA on this machine."""

    driver_version: str | None = None
    driver_cuda: str | None = None  # newest CUDA the driver supports, "12.8"
    gpus: tuple[str, ...] = ()
    capabilities: tuple[tuple[int, int] | None, ...] = ()  # each GPU's compute capability, as NVML gives it
    nvml_error: str | None = None
    torch_cuda_build: str | None = None  # CUDA PyTorch was built for; None for a CPU-only build
    torch_devices: int = 0
    torch_error: str | None = None
    ctranslate2_devices: int = 0
    cublas_error: str | None = None  # why cublas_library() cannot be loaded as CTranslate2 loads it
    cudnn_version: str | None = None  # the cuDNN PyTorch carries

    @property
    def usable(self) -> bool:
        return self.torch_devices > 0 and self.ctranslate2_devices > 0 and self.cublas_error is None


@dataclass(frozen=True)
class CudaProblem:
    """One thing that stops the models from running on CUDA here: which part, what is wrong, what to do."""

    part: str  # "nvidia driver", "cuda" or "cublas": the doctor's row
    detail: str
    fix: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Seam: the real GPU probe


def probe_gpu() -> GpuFacts:
    """Ask NVML, PyTorch and CTranslate2 about CUDA, and make cuBLAS loadable as CTranslate2 needs it."""
    facts: dict[str, object] = {}
    facts.update(_probe_nvml())
    facts.update(_probe_torch())
    facts.update(_probe_ctranslate2())
    if facts.get("torch_devices"):  # without a device, CTranslate2 never loads cuBLAS
        facts["cublas_error"] = load_cublas()
    return GpuFacts(**facts)  # type: ignore[arg-type]


def _probe_nvml() -> dict[str, object]:
    try:
        driver = read_driver()
    except NvmlUnavailable as exc:
        return {"nvml_error": str(exc)}
    return {
        "driver_version": driver.version,
        "driver_cuda": driver.cuda,
        "gpus": driver.gpus,
        "capabilities": driver.capabilities,
    }


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


def load_cublas() -> str | None:
    """Make cuBLAS loadable by the name CTranslate2 loads it by; None when it is, else why not.

    The copy beside PyTorch first, by its path (the one PyTorch's libraries link to, so that the process loads
    one cuBLAS whether PyTorch is imported before or after: the ASR loads on a thread of its own while the main
    one imports PyTorch), then by name (the loader's path), then from NVIDIA's wheel in any folder packages are
    imported from (a `pip install --user`, PYTHONPATH). A library loaded once by its full path is found by name
    afterwards (the loader matches its soname), so CTranslate2 needs no LD_LIBRARY_PATH.
    """
    library = cublas_library()
    beside_torch = torch_nvidia_lib_dir("cublas")
    if beside_torch is not None and _load_global(beside_torch / library) is None:
        return None
    by_name = _load_global(library)
    if by_name is None:
        return None
    for folder in pip_nvidia_lib_dirs("cublas"):
        if _load_global(folder / library) is None:
            return None
    return by_name


def _load_global(library: str | Path) -> str | None:
    """Load `library` for every later user in the process (RTLD_GLOBAL); None when it loads, else why not."""
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------------------
# The judgement


def cuda_problems(facts: GpuFacts) -> list[CudaProblem]:
    """What stops the models from running on CUDA here; [] when nothing does."""
    driver = driver_problem(facts)
    problems = [driver] if driver is not None else []
    if facts.torch_devices == 0:
        problems.append(_torch_problem(facts, driver_visible=facts.driver_version is not None))
    elif facts.ctranslate2_devices == 0:
        problems.append(CudaProblem("cuda", "CTranslate2 sees no CUDA device (a CPU-only CTranslate2 build?)"))
    elif (no_code := ctranslate2_kernels_problem(facts, fixable=False)) is not None:
        problems.append(no_code)
    elif facts.cublas_error is not None:
        library = cublas_library()
        problems.append(CudaProblem("cublas", f"{library} cannot be loaded: {facts.cublas_error}", cublas_fix(library)))
    return problems


def driver_problem(facts: GpuFacts) -> CudaProblem | None:
    """The driver not visible, of an older CUDA major than PyTorch's build, or too old to JIT CTranslate2's PTX
    for a card its machine code does not cover. An older minor of the same major runs everything else: PyTorch's
    and CTranslate2's machine code, through CUDA's minor version compatibility."""
    if facts.driver_version is None:
        return CudaProblem(
            "nvidia driver", f"not visible ({facts.nvml_error or 'NVML found no driver'})", NO_DRIVER_FIX
        )
    driver, built = major_minor(facts.driver_cuda), major_minor(facts.torch_cuda_build)
    if driver and built and driver[0] < built[0]:
        detail = f"{driver_summary(facts)}; PyTorch was built for CUDA {facts.torch_cuda_build}"
        return CudaProblem("nvidia driver", detail, advice_for("driver too old"))
    return ctranslate2_kernels_problem(facts, fixable=True)


def ctranslate2_kernels_problem(facts: GpuFacts, fixable: bool) -> CudaProblem | None:
    """The first GPU on which CTranslate2 cannot run its kernels: where a newer driver would let it (`fixable`,
    the driver's row), or where no driver would (CTranslate2 has no code for the card: the cuda row)."""
    code = installed_code()
    if code is None:  # no CTranslate2 library to read: its device count says the rest
        return None
    for gpu, capability in zip(facts.gpus, facts.capabilities, strict=False):
        if capability is None:
            continue
        problem = cannot_run(code, capability, major_minor(facts.driver_cuda))
        fix = kernels_fix(code, capability)
        if problem is not None and (fix is not None) == fixable:
            name = gpu.split(" (")[0]
            if fixable:
                return CudaProblem("nvidia driver", f"{driver_summary(facts)}; on the {name}: {problem}", fix)
            return CudaProblem("cuda", f"{name}: {problem}", "run with --device cpu, or on a card CTranslate2 runs")
    return None


def driver_summary(facts: GpuFacts) -> str:
    return f"{facts.driver_version} (CUDA {facts.driver_cuda}), {len(facts.gpus)} GPU: {', '.join(facts.gpus)}"


def _torch_problem(facts: GpuFacts, driver_visible: bool) -> CudaProblem:
    if facts.torch_cuda_build is None:
        reason = facts.torch_error or "PyTorch is a CPU-only build"
        fix: str | None = (
            "install PyTorch's CUDA build (the default on PyPI for Linux x86_64), or use the project's image"
        )
    else:
        reason = facts.torch_error or "no usable CUDA device"
        # When the driver is not even visible, the driver's problem already says what to do.
        fix = (advice_for(reason) or advice_for("no usable CUDA device")) if driver_visible else None
    return CudaProblem("cuda", f"no usable device: {reason}", fix)


def major_minor(version: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version or "")[:2])


def gpu_problem(facts: GpuFacts) -> str | None:
    """Why CUDA cannot run the models here, with what to do about it, in one line; None when it can."""
    problems = cuda_problems(facts)
    if not problems:
        return None
    fix = next((problem.fix for problem in problems if problem.fix), None)
    text = "; ".join(f"{problem.part}: {problem.detail}" for problem in problems)
    return f"{text}. Fix: {fix}" if fix else text


def resolve_device(requested: str) -> str:
    """`auto` -> cuda when CUDA can run the models, else cpu: with a warning and the fix when a GPU is there but
    cannot be used (cuBLAS 12 not found, a driver too old). `cuda` that cannot run is exit 3, with the fix.
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


def require_usable_cuda() -> None:
    """What `resolve_device` checks, for a process about to load models on cuda: a worker of `--gpus`, whose parent
    saw its GPU through NVML alone, which cannot tell whether PyTorch and CTranslate2 run on it. Raises
    EnvironmentProblem (exit 3) saying what stops CUDA here, with the fix."""
    problem = gpu_problem(probe_gpu())
    if problem is not None:
        raise EnvironmentProblem(f"CUDA cannot run the models here: {problem}")


def resolve_device_for_workers(requested: str, nvml: Any = None) -> str:
    """The device of a run whose models run in worker processes (`--gpus`, `--workers`), decided from NVML alone so
    that this process, which only hands out files, loads no model library: `cuda` where NVML shows a GPU on which
    CTranslate2's kernels run with this driver (its library's code is read from the file), else cpu (`auto`) or
    exit 3 (`cuda`). Each worker checks CUDA in full as it loads its models (`require_usable_cuda`); one that
    cannot run says why and leaves the run, and when no worker can start the run stops (exit 3, with the
    workers' reason)."""
    if requested == "cpu":
        return "cpu"
    try:
        driver = read_driver(nvml)
    except NvmlUnavailable as exc:
        reason = str(exc)
    else:
        if driver.gpus:
            return _workers_device(requested, driver)
        reason = "NVML lists none"
    if requested == "cuda":
        raise EnvironmentProblem(f"device cuda was asked for but no GPU is visible ({reason}). Fix: {NO_DRIVER_FIX}")
    log.info("device auto: using cpu (no GPU visible: %s)", reason)
    return "cpu"


def _workers_device(requested: str, driver: DriverReading) -> str:
    """What NVML alone says of CTranslate2's kernels on these GPUs with this driver, for `resolve_device_for_workers`:
    "cuda" where they run, else "cpu" with a warning (`auto`) or exit 3 (`cuda`)."""
    facts = GpuFacts(
        driver_version=driver.version, driver_cuda=driver.cuda, gpus=driver.gpus, capabilities=driver.capabilities
    )
    problem = ctranslate2_kernels_problem(facts, fixable=True) or ctranslate2_kernels_problem(facts, fixable=False)
    if problem is None:
        return "cuda"
    text = f"{problem.part}: {problem.detail}. Fix: {problem.fix}"
    if requested == "cuda":
        raise EnvironmentProblem(f"device cuda was asked for but CUDA cannot run here: {text}")
    log.warning("device auto: a GPU is present but cannot run the models, so the CPU is used (slow): %s", text)
    return "cpu"


def compute_types_in_a_child(device: str) -> list[str]:
    """CTranslate2's compute types for `device`, asked in a short-lived process: for a process that must not map
    CTranslate2 itself (the parent of worker processes)."""
    code = f"import ctranslate2, json; print(json.dumps(sorted(ctranslate2.get_supported_compute_types({device!r}))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(done.stdout))


# On CUDA, the first of these that CTranslate2 says this GPU runs (its list follows the card's compute capability:
# Pascal cards such as sm_61 are offered no float16); float32 runs everywhere.
CUDA_COMPUTE_TYPES = ("float16", "int8_float16", "int8_float32", "float32")


def supported_compute_types(device: str, supported: Callable[[str], Iterable[str]] | None = None) -> set[str] | None:
    """CTranslate2's compute types for `device` (through `supported`, the seam, when given); None when it cannot
    tell (no CUDA device, a broken install)."""
    try:
        if supported is None:
            import ctranslate2

            supported = ctranslate2.get_supported_compute_types
        return set(supported(device))
    except Exception:
        return None


def default_compute_type(device: str, supported: Callable[[str], Iterable[str]] | None = None) -> str:
    """int8 on the CPU; on CUDA the best type this GPU runs (`supported`: CTranslate2's list, the seam)."""
    if not device.startswith("cuda"):
        return "int8"
    available = supported_compute_types("cuda", supported)
    if available is None:  # CTranslate2 cannot tell: the device check has said what is wrong
        return "float16"
    return next((kind for kind in CUDA_COMPUTE_TYPES if kind in available), "float32")


# CTranslate2 picks a compute type the device supports for these.
ANY_DEVICE_COMPUTE_TYPES = ("default", "auto")


def compute_type_problem(
    compute_type: str, device: str, supported: Callable[[str], Iterable[str]] | None = None
) -> str | None:
    """Why CTranslate2 cannot run `compute_type` on `device` here, naming what it can; None when it can (or when
    CTranslate2 cannot tell: the device check then says what is wrong). `supported`: CTranslate2's list."""
    if compute_type in ANY_DEVICE_COMPUTE_TYPES:
        return None
    found = supported_compute_types(device, supported)
    if found is None or compute_type in found:
        return None
    available = sorted(found)
    where = "the CPU" if device == "cpu" else "this GPU"
    return f"{compute_type} cannot run on {where}; supported here: {', '.join(available)} (or default)"
