"""SIGTERM and SIGINT on a real run: no new file is taken, nothing half-written counts as done, and a rerun
picks up exactly where the run stopped."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def start_run(source: Path, out: Path, model: str, *extra: str) -> subprocess.Popen[str]:
    # Batches of 2 chunks: with batches shared across files, a batch of 16 would read all five files at once.
    command = [sys.executable, "-m", "batch", "run", str(source), "--out", str(out), "--model", model, "--no-align",
               "--prefetch", "1", "--batch-size", "2", *extra]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_manifest(out: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("*.manifest.json")):
        assert time.monotonic() < deadline, "no file finished in time"
        time.sleep(0.05)


@pytest.fixture
def calls(tmp_path: Path, sample_wav: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    for index in range(5):
        shutil.copy(sample_wav, source / f"call{index}.wav")
    return source


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_the_files_already_read_then_stops(
    calls: Path, tmp_path: Path, tiny_en: str, signum: int, code: int
) -> None:
    out = tmp_path / "out"
    process = start_run(calls, out, tiny_en, "--grace-seconds", "120")
    wait_for_first_manifest(out)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == code, stderr
    assert "finishing the current file" in stderr
    done = sorted(p.name.removesuffix(".manifest.json") for p in out.glob("*.manifest.json"))
    assert 1 <= len(done) < 5
    for key in done:
        assert json.loads((out / f"{key}.manifest.json").read_text())["status"] == "succeeded"
    report = json.loads(next((out / "_runs").glob("*.json")).read_text())
    assert report["stopped_by_signal"] == signum and sorted(report["succeeded"]) == done

    rerun = subprocess.run([sys.executable, "-m", "batch", "run", str(calls), "--out", str(out), "--model", tiny_en,
                            "--no-align"], capture_output=True, text=True)  # fmt: skip
    assert rerun.returncode == 0
    assert f"{5 - len(done)} succeeded, {len(done)} skipped, 0 failed" in rerun.stderr


def test_past_the_grace_period_the_file_in_progress_is_abandoned_cleanly(
    calls: Path, tmp_path: Path, tiny_en: str
) -> None:
    out, metrics = tmp_path / "out", tmp_path / "run.prom"
    process = start_run(calls, out, tiny_en, "--grace-seconds", "0", "--metrics-textfile", str(metrics))
    wait_for_first_manifest(out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "abandoning the file in progress" in stderr
    assert re.search(r"^whisperx_batch_run_exit_code 143\.0$", metrics.read_text(), re.MULTILINE)  # for the alerts
    done = [p for p in out.glob("*.manifest.json")]
    assert all(json.loads(p.read_text())["status"] == "succeeded" for p in done)
    rerun = subprocess.run([sys.executable, "-m", "batch", "run", str(calls), "--out", str(out), "--model", tiny_en,
                            "--no-align"], capture_output=True, text=True)  # fmt: skip
    assert rerun.returncode == 0 and f"{5 - len(done)} succeeded, {len(done)} skipped" in rerun.stderr
