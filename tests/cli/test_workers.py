"""`--workers 2` with the real models, the real command line and real signals: one run, whatever its workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LoggedProcess, copies


class Run(LoggedProcess):
    """`python -m batch run` in the background, its stderr read as it comes."""

    def __init__(self, source: Path, out: Path, model: str, *extra: str):
        command = [sys.executable, "-m", "batch", "run", str(source), "--out", str(out), "--model", model]
        command += ["--no-align", "--device", "cpu", "--threads", "2", "--workers", "2", "--batch-size", "2", *extra]
        super().__init__(command)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.process.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no line matched {pattern!r}:\n" + "".join(self.lines))

    def worker_pids(self) -> dict[str, int]:
        found = (re.search(r"worker (\w+): starting on .* \(pid (\d+)\)", line) for line in self.lines)
        return {match[1]: int(match[2]) for match in found if match}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for every purpose here
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def calls(tmp_path: Path, sample_wav: Path) -> Path:
    return copies(sample_wav, tmp_path / "in", 6)


def report_of(out: Path) -> dict:
    return json.loads(sorted((out / "_runs").glob("*.json"))[-1].read_text())


def test_sigterm_reaches_every_worker_and_a_rerun_does_exactly_the_rest(
    calls: Path, tmp_path: Path, tiny_en: str
) -> None:
    out = tmp_path / "out"
    run = Run(calls, out, tiny_en, "--grace-seconds", "120")
    run.wait_for(r"call\d\.wav: succeeded")
    pids = run.worker_pids()
    run.process.send_signal(signal.SIGTERM)
    code, stderr = run.finish()
    assert code == 143, stderr
    assert re.search(r"INFO +\[cpu0\] models loaded", stderr)  # the workers' lines, in the run's own log
    assert len(pids) == 2 and not any(alive(pid) for pid in pids.values()), pids
    done = sorted(p.name.removesuffix(".manifest.json") for p in out.glob("*.manifest.json"))
    assert 1 <= len(done) < 6
    assert all(json.loads((out / f"{key}.manifest.json").read_text())["status"] == "succeeded" for key in done)
    report = report_of(out)
    assert report["stopped_by_signal"] == signal.SIGTERM and sorted(report["succeeded"]) == done

    rerun = Run(calls, out, tiny_en)
    code, stderr = rerun.finish()
    assert code == 0, stderr
    assert f"{6 - len(done)} succeeded, {len(done)} skipped, 0 failed" in stderr


def test_a_worker_killed_mid_file_has_its_files_retried_and_the_run_succeeds(
    calls: Path, tmp_path: Path, tiny_en: str
) -> None:
    out = tmp_path / "out"
    run = Run(calls, out, tiny_en)
    run.wait_for(r"worker cpu0: ready")
    run.wait_for(r"call\d\.wav: succeeded")  # both workers are into the files (each pulls a batch ahead)
    os.kill(run.worker_pids()["cpu0"], signal.SIGKILL)
    code, stderr = run.finish()
    assert code == 0, stderr
    assert re.search(r"worker cpu0 was killed by SIGKILL .*; [1-9]\d* file\(s\) it held go back", stderr), stderr
    report = report_of(out)
    assert sorted(report["succeeded"]) == [f"call{index}.wav" for index in range(6)] and not report["failed"]
    workers = {worker["name"]: worker for worker in report["workers"]}
    assert workers["cpu0"]["restarts"] == 1 and workers["cpu1"]["restarts"] == 0
    assert sum(worker["files"] for worker in workers.values()) == 6


def test_the_parent_of_workers_maps_no_model_library(tmp_path: Path, sample_wav: Path, tiny_en: str) -> None:
    """With --workers (and --device auto, the default) the parent lists, decodes and writes; the workers load the
    models. The parent decides the device from NVML (none here: the CPU) and imports neither PyTorch nor
    CTranslate2 nor faster-whisper, which cost it seconds and hundreds of MB when it did."""
    calls = copies(sample_wav, tmp_path / "in", 2)
    out = tmp_path / "out"
    argv = ["whisperx-batch", "run", str(calls), "--out", str(out), "--model", tiny_en, "--no-align"]
    argv += ["--workers", "2", "--threads", "2"]
    code = (
        "import atexit, sys\n"
        "libraries = ('torch', 'ctranslate2', 'faster_whisper', 'pyannote', 'transformers')\n"
        "atexit.register(lambda: print('loaded:', [m for m in libraries if m in sys.modules]))\n"
        f"sys.argv = {argv!r}\n"
        "from batch.cli.app import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"
    assert "2 succeeded" in done.stderr and re.search(r"workers: cpu0 \d files, cpu1 \d files", done.stderr)
