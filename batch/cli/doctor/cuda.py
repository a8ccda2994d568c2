"""The doctor's CUDA rows: the NVIDIA driver (visible, of PyTorch's CUDA major, and new enough to JIT
CTranslate2's PTX on a card its machine code does not cover), CUDA for PyTorch and CTranslate2, cuBLAS (which
CTranslate2 loads by the name its build compiled in), and cuDNN (information only: PyTorch loads its own,
CTranslate2 4.x none), judged as a run judges them (`batch.engine.gpu.device.cuda_problems`) and by what
--device asks: `cuda` needs them (fail), `auto` falls back to the CPU (warn), `cpu` does not use them (skip).
An older driver of the same CUDA major is no problem by itself: the wheels carry their CUDA libraries, and
their machine code runs on it through CUDA's minor version compatibility."""

from __future__ import annotations

import os

from batch.common.advice import Check, Status
from batch.engine.gpu.device import CudaProblem, GpuFacts, cuda_problems, driver_summary
from batch.engine.gpu.kernels import cublas_library, installed_code, route


def device_checks(facts: GpuFacts, requested: str) -> list[Check]:
    """One row each for the driver, CUDA, cuBLAS and cuDNN."""
    missing: Status = {"cuda": "fail", "auto": "warn"}.get(requested, "skip")
    problems = {problem.part: problem for problem in cuda_problems(facts)}
    return [
        _driver_row(facts, problems.get("nvidia driver"), missing),
        _cuda_row(facts, problems.get("cuda"), requested, missing),
        _cublas_row(facts, problems.get("cublas"), missing),
        _cudnn_row(facts),
    ]


def _problem_row(problem: CudaProblem, missing: Status, detail: str | None = None) -> Check:
    return Check(problem.part, missing, detail or problem.detail, problem.fix if missing != "skip" else None)


def _driver_row(facts: GpuFacts, problem: CudaProblem | None, missing: Status) -> Check:
    if problem is not None:
        return _problem_row(problem, missing)
    return Check("nvidia driver", "ok", driver_summary(facts) + _jit_note(facts))


def _jit_note(facts: GpuFacts) -> str:
    """Where this driver runs CTranslate2's kernels by JIT-compiling its PTX: said, with where they are cached
    (the first run on a card JIT-compiles them all; later ones read the cache)."""
    code = installed_code()
    routes = {capability: route(code, capability) for capability in facts.capabilities if capability and code}
    jitted = sorted(f"sm_{major}{minor}" for (major, minor), found in routes.items() if found and found.jit_cuda)
    if not jitted:
        return ""
    cache = os.environ.get("CUDA_CACHE_PATH") or "~/.nv/ComputeCache"
    return f"; CTranslate2's kernels for {', '.join(jitted)} are JIT-compiled from its PTX (cached in {cache})"


def _cuda_row(facts: GpuFacts, problem: CudaProblem | None, requested: str, missing: Status) -> Check:
    if problem is None:
        used = "the run uses cuda" if requested != "cpu" else "not used (--device cpu)"
        detail = f"{facts.torch_devices} device(s) for PyTorch (CUDA {facts.torch_cuda_build}), "
        return Check("cuda", "ok", detail + f"{facts.ctranslate2_devices} for CTranslate2; {used}")
    fallback = {"auto": "; the run uses the CPU (slow with large models)", "cpu": " (--device cpu)"}.get(requested, "")
    detail = f"{problem.detail}; CTranslate2 sees {facts.ctranslate2_devices}{fallback}"
    return _problem_row(problem, missing, detail)


def _cublas_row(facts: GpuFacts, problem: CudaProblem | None, missing: Status) -> Check:
    if problem is not None:
        return _problem_row(problem, missing)
    library = cublas_library()
    if facts.torch_devices == 0:
        return Check("cublas", "skip", f"not checked without a CUDA device ({library}, for CTranslate2)")
    return Check("cublas", "ok", f"{library} loads, as CTranslate2 loads it")


def _cudnn_row(facts: GpuFacts) -> Check:
    if facts.cudnn_version is None:
        return Check("cudnn", "skip", "none with this PyTorch (information only: no stage needs it by name)")
    return Check("cudnn", "ok", f"cuDNN {facts.cudnn_version}, PyTorch's own (information only)")
