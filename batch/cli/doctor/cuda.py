"""The doctor's CUDA rows: the NVIDIA driver, CUDA for PyTorch and CTranslate2, cuBLAS 12 (which CTranslate2
loads by name), and cuDNN (information only: PyTorch loads its own, CTranslate2 4.x none), judged as a run
judges them (`batch.engine.gpu.device.cuda_problems`) and by what --device asks: `cuda` needs them (fail),
`auto` falls back to the CPU (warn), `cpu` does not use them (skip)."""

from __future__ import annotations

from batch.common.advice import Check, Status, advice_for
from batch.engine.gpu.device import (
    CUBLAS_LIBRARY,
    CudaProblem,
    GpuFacts,
    cuda_problems,
    driver_behind_minor,
    driver_summary,
)


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
    if driver_behind_minor(facts):
        # An older minor release of the same major runs through CUDA's minor version compatibility.
        detail = f"{driver_summary(facts)}; PyTorch was built for CUDA {facts.torch_cuda_build}"
        return Check("nvidia driver", "warn", detail, advice_for("driver too old"))
    return Check("nvidia driver", "ok", driver_summary(facts))


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
    if facts.torch_devices == 0:
        return Check("cublas", "skip", f"not checked without a CUDA device ({CUBLAS_LIBRARY}, for CTranslate2)")
    return Check("cublas", "ok", f"{CUBLAS_LIBRARY} loads, as CTranslate2 loads it")


def _cudnn_row(facts: GpuFacts) -> Check:
    if facts.cudnn_version is None:
        return Check("cudnn", "skip", "none with this PyTorch (information only: no stage needs it by name)")
    return Check("cudnn", "ok", f"cuDNN {facts.cudnn_version}, PyTorch's own (information only)")
