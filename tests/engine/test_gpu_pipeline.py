"""The GPU memory controller inside the real engine and runner (real model, real audio); the fault and the
free-memory probe are the injected seams, since this machine has no GPU."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from batch.engine.asr.recognizer import Chunk, Recognized
from batch.engine.gpu.sizing import BatchSizer
from batch.engine.whisperx_pipeline import WhisperxPipeline
from batch.run.job import Job
from batch.settings.options import load_settings

GIB = 1024**3


class FakeProbe:
    def __init__(self, free: int, total: int = 16 * GIB):
        self.free, self.total = free, total

    def free_and_total(self) -> tuple[int, int]:
        return self.free, self.total

    def used(self) -> int:
        return self.total - self.free


def make_job(source: Path, out: Path, model: str, batch_size: int = 16) -> tuple[Job, WhisperxPipeline]:
    """A real job whose engine is loaded, so a test can put a seam in place before the run."""
    settings = load_settings(
        {
            "source": str(source),
            "out": str(out),
            "model": model,
            "align": False,
            "batch_size": batch_size,
            "device": "cpu",
        },
        environ={},
    )
    job = Job(settings, environ={})
    engine = job._real_pipeline()
    assert isinstance(engine, WhisperxPipeline)
    engine.load()
    job._pipeline = engine
    return job, engine


@pytest.fixture
def calls(tmp_path: Path, sample_wav: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.wav", "b.wav"):
        shutil.copy(sample_wav, source / name)
    return source


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_out_of_memory_halves_a_shared_batch_and_the_lowered_size_is_kept(
    tmp_path: Path, tiny_en: str, sample_wav: Path
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for index in range(8):  # one 30 s chunk each: one shared batch of 8
        shutil.copy(sample_wav, source / f"call{index}.wav")
    job, engine = make_job(source, tmp_path / "out", tiny_en, batch_size=8)
    real, sizes = engine.recognizer.recognize, []  # type: ignore[union-attr]

    def out_of_memory_above_two(chunks: Sequence[Chunk]) -> list[Recognized]:
        sizes.append(len(chunks))
        if len(chunks) > 2:
            raise RuntimeError("CUDA failed with error out of memory")
        return real(chunks)

    engine.recognizer.recognize = out_of_memory_above_two  # type: ignore[union-attr]
    report = job.run()
    assert report.failed == [] and len(report.succeeded) == 8
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2 and sum(sizes[2:]) == 8  # no chunk read twice
    first = read(tmp_path / "out/call0.wav.manifest.json")["gpu"]["asr"]
    assert first["batch_size_requested"] == 8 and first["batch_size_used"] == 2 and first["oom_retries"] == 2
    summary = read(next((tmp_path / "out/_runs").glob("*.json")))["gpu"]["asr"]
    assert summary["oom_retries"] == 2


def test_a_file_that_does_not_fit_even_at_one_fails_alone(calls: Path, tmp_path: Path, tiny_en: str) -> None:
    job, engine = make_job(calls, tmp_path / "out", tiny_en, batch_size=2)
    real, calls_made = engine.recognizer.recognize, []  # type: ignore[union-attr]
    first_file = {}

    def never_fits_for_the_first_file(chunks: Sequence[Chunk]) -> list[Recognized]:
        calls_made.append(len(chunks))
        first_file.setdefault("audio", chunks[0].audio.base)
        if any(chunk.audio.base is first_file["audio"] for chunk in chunks):
            raise RuntimeError("CUDA failed with error out of memory")
        return real(chunks)

    engine.recognizer.recognize = never_fits_for_the_first_file  # type: ignore[union-attr]
    report = job.run()
    assert [f.key for f in report.failed] == ["a.wav"] and report.succeeded == ["b.wav"]
    error = read(tmp_path / "out/a.wav.manifest.json")["error"]
    assert error["type"] in ("GpuOutOfMemory", "BatchOutOfMemory")
    assert error["message"].startswith("out of GPU memory at batch size 1 in stage asr")


def test_batch_size_follows_free_memory_under_the_ceiling(calls: Path, tmp_path: Path, tiny_en: str) -> None:
    job, engine = make_job(calls, tmp_path / "out", tiny_en)
    probe = FakeProbe(free=GIB + 300 * 1024**2)  # 300 MiB above the 1 GiB reserve
    engine.sizer = BatchSizer.for_model(16, tiny_en, "int8", probe, reserve_bytes=GIB)
    job.run()
    record = read(tmp_path / "out/a.wav.manifest.json")["gpu"]["asr"]
    per_item = engine.sizer.item_bytes("asr")
    assert 1 <= record["batch_size_used"] < 16
    assert record["batch_size_used"] == max(1, min(16, (300 * 1024**2) // per_item))
    assert record["free_bytes"] == probe.free


def test_the_same_device_fault_in_a_row_stops_the_run_as_an_environment_error(
    tmp_path: Path, tiny_en: str, sample_wav: Path
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for index in range(6):
        shutil.copy(sample_wav, source / f"call{index}.wav")
    job, engine = make_job(source, tmp_path / "out", tiny_en, batch_size=4)

    def broken_device(chunks: Sequence[Chunk]) -> list[Recognized]:
        raise RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`")

    engine.recognizer.recognize = broken_device  # type: ignore[union-attr]
    report = job.run()
    assert report.exit_code == 3 and report.error is not None and report.error.type == "EnvironmentProblem"
    # Files of one shared batch fail together, so the count may pass 3 before the check runs; it says how many.
    assert re.match(r"the last [3-5] files failed with RuntimeError", report.error.message)
    assert 3 <= len(report.failed) < 6


def test_a_lost_cuda_context_stops_an_in_process_run_at_once_with_no_file_failed(
    tmp_path: Path, tiny_en: str, sample_wav: Path
) -> None:
    """A sticky CUDA error: nothing more can run in this process, so the run stops (exit 3) without failing the
    file in hand or any other: none has a manifest, and the rerun (or the restarted pod) does them all."""
    source = tmp_path / "in"
    source.mkdir()
    for index in range(4):
        shutil.copy(sample_wav, source / f"call{index}.wav")
    job, engine = make_job(source, tmp_path / "out", tiny_en, batch_size=4)

    def lost_context(chunks: Sequence[Chunk]) -> list[Recognized]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    engine.recognizer.recognize = lost_context  # type: ignore[union-attr]
    report = job.run()
    assert report.exit_code == 3 and report.error is not None and report.error.type == "CudaContextLost"
    assert "illegal memory access" in report.error.message
    assert not report.failed and not report.succeeded
    assert not list((tmp_path / "out").glob("*.manifest.json"))
