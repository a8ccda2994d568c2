"""A GPU worker checks CUDA in full as it loads its models: real worker processes running the real pipeline.

The parent of `--gpus` workers decides the device from NVML alone, so that it loads no model library; what NVML
cannot tell (PyTorch's and CTranslate2's devices, the driver against PyTorch's CUDA, cuBLAS) each worker checks
itself, as `resolve_device` does in a one-process run. This machine has no NVIDIA driver: a worker started on a
GPU here is what a worker meets where NVML lists a GPU that CUDA cannot run.
"""

from __future__ import annotations

from pathlib import Path

from batch.common.advice import NO_DRIVER_FIX
from batch.common.errors import EXIT_ENVIRONMENT
from batch.run.config import configure
from batch.run.job import Job
from batch.run.pool.plan import WorkerSlot
from batch.run.pool.pool import WorkerPool
from batch.settings.options import load_settings
from tests.conftest import tone

GPU_UUID = "GPU-00000000-0000-0000-0000-000000000000"


def test_gpu_workers_that_cannot_run_cuda_say_why_with_the_fix(tmp_path: Path, tiny_en: str) -> None:
    tone(tmp_path / "in" / "call.wav")
    out = tmp_path / "out"
    flags = {"source": str(tmp_path / "in"), "out": str(out), "device": "cpu", "model": tiny_en, "align": False}
    settings = load_settings(flags, environ={})
    slots = tuple(
        WorkerSlot(f"gpu{index}", "cuda", 1, f"GPU {index} (NVML's)", {"CUDA_VISIBLE_DEVICES": GPU_UUID})
        for index in range(2)
    )
    pool = WorkerPool(configure(settings, environ={}).pipeline, slots)  # the real pipeline in each worker
    report = Job(settings, environ={}, pipeline=pool).run()

    # Every worker refused the same way: the run stops with that refusal, as one process would have.
    assert report.exit_code == EXIT_ENVIRONMENT and not report.succeeded and not report.failed
    assert report.error is not None and report.error.type == "EnvironmentProblem", report.error
    message = report.error.message
    assert message.startswith("CUDA cannot run the models here: nvidia driver: not visible"), message
    assert f"Fix: {NO_DRIVER_FIX}" in message
    assert [worker.problem for worker in report.workers] == [f"could not start: {message}"] * 2, report.workers
