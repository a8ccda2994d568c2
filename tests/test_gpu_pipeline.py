"""The GPU memory controller inside the real pipeline and runner (real model, real audio); the fault and the
free-memory probe are the injected seams, since this machine has no GPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from batch.config import load_settings
from batch.gpu import BatchSizer
from batch.pipeline import Pipeline, RuntimeOptions
from batch.runner import Runner
from batch.storage import LocalDest, LocalSource

GIB = 1024**3


class FakeProbe:
    def __init__(self, free: int, total: int = 16 * GIB):
        self.free, self.total = free, total

    def free_and_total(self) -> tuple[int, int]:
        return self.free, self.total

    def used(self) -> int:
        return self.total - self.free


class OutOfMemoryFirst:
    """Wraps the real ASR pipeline; its first `failures` calls at a batch size above 1 run out of memory."""

    def __init__(self, real, failures: int):
        self.real, self.failures, self.sizes = real, failures, []

    def __call__(self, pieces, batch_size: int, num_workers: int):
        self.sizes.append(batch_size)
        if self.failures and batch_size > 1:
            self.failures -= 1
            raise RuntimeError("CUDA failed with error out of memory")
        return self.real(pieces, batch_size=batch_size, num_workers=num_workers)

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: object) -> None:  # the pipeline sets the tokenizer per file
        if name in ("real", "failures", "sizes"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.real, name, value)


def make_runner(source: Path, out: Path, model: str, batch_size: int = 16) -> Runner:
    settings = load_settings({"model": model, "align": False, "batch_size": batch_size}, environ={})
    runtime = RuntimeOptions(device="cpu", compute_type="int8", threads=2, batch_size=batch_size)
    pipeline = Pipeline(settings, runtime)
    pipeline.load()
    return Runner(settings, LocalSource(source), LocalDest(out), pipeline, runtime)


@pytest.fixture
def calls(tmp_path: Path, sample_wav: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.wav", "b.wav"):
        shutil.copy(sample_wav, source / name)
    return source


def test_out_of_memory_halves_the_batch_and_retries_the_same_file(calls: Path, tmp_path: Path, tiny_en: str) -> None:
    runner = make_runner(calls, tmp_path / "out", tiny_en)
    fault = OutOfMemoryFirst(runner.pipeline._asr, failures=2)
    runner.pipeline._asr = fault
    report = runner.run()
    assert report.failed == [] and report.succeeded == ["a.wav", "b.wav"]
    assert fault.sizes[:3] == [16, 8, 4]
    first = json.loads((tmp_path / "out/a.wav.manifest.json").read_text())
    assert first["gpu"]["asr"]["batch_size_requested"] == 16
    assert first["gpu"]["asr"]["batch_size_used"] == 4 and first["gpu"]["asr"]["oom_retries"] == 2
    second = json.loads((tmp_path / "out/b.wav.manifest.json").read_text())
    assert second["gpu"]["asr"]["batch_size_used"] == 4  # the lowered size is remembered for the next file
    summary = json.loads(next((tmp_path / "out/_runs").glob("*.json")).read_text())["gpu"]["asr"]
    assert summary["oom_retries"] == 2 and summary["runs"] == 2


def test_a_file_that_does_not_fit_even_at_one_fails_alone(calls: Path, tmp_path: Path, tiny_en: str) -> None:
    runner = make_runner(calls, tmp_path / "out", tiny_en, batch_size=2)

    class AlwaysOutOfMemory(OutOfMemoryFirst):
        def __call__(self, pieces, batch_size: int, num_workers: int):
            self.sizes.append(batch_size)
            if len(self.sizes) <= 2:  # the first file: at 2, then at 1
                raise RuntimeError("CUDA failed with error out of memory")
            return self.real(pieces, batch_size=batch_size, num_workers=num_workers)

    runner.pipeline._asr = AlwaysOutOfMemory(runner.pipeline._asr, failures=0)
    report = runner.run()
    assert [f["key"] for f in report.failed] == ["a.wav"] and report.succeeded == ["b.wav"]
    error = json.loads((tmp_path / "out/a.wav.manifest.json").read_text())["error"]
    assert error["type"] == "GpuOutOfMemory"
    assert error["message"].startswith("out of GPU memory at batch size 1 in stage asr")


def test_batch_size_follows_free_memory_under_the_ceiling(calls: Path, tmp_path: Path, tiny_en: str) -> None:
    runner = make_runner(calls, tmp_path / "out", tiny_en)
    probe = FakeProbe(free=GIB + 300 * 1024**2)  # 300 MiB above the 1 GiB reserve
    runner.pipeline.sizer = BatchSizer.for_model(16, tiny_en, "int8", probe, reserve_bytes=GIB)
    runner.run()
    record = json.loads((tmp_path / "out/a.wav.manifest.json").read_text())["gpu"]["asr"]
    per_item = runner.pipeline.sizer.item_bytes("asr")
    assert 1 <= record["batch_size_used"] < 16
    assert record["batch_size_used"] == max(1, min(16, (300 * 1024**2) // per_item))
    assert record["free_bytes"] == probe.free


def test_the_same_unexpected_failure_in_a_row_stops_the_run_as_an_environment_error(
    tmp_path: Path, tiny_en: str, sample_wav: Path
) -> None:
    from batch.errors import EnvironmentProblem

    source = tmp_path / "in"
    source.mkdir()
    for index in range(6):
        shutil.copy(sample_wav, source / f"call{index}.wav")
    runner = make_runner(source, tmp_path / "out", tiny_en)

    class BrokenDevice(OutOfMemoryFirst):
        """The real pipeline, whose every batch hits a fault that sticks to the device."""

        def __call__(self, pieces, batch_size: int, num_workers: int):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    runner.pipeline._asr = BrokenDevice(runner.pipeline._asr, failures=0)
    with pytest.raises(EnvironmentProblem, match="3 files in a row failed with RuntimeError"):
        runner.run()
    assert 3 <= len(runner.report.failed) < 6 and runner.report.error["type"] == "EnvironmentProblem"
