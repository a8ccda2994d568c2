"""SIGTERM and SIGINT on a real run: no new file is taken, nothing half-written counts as done, and a rerun
picks up exactly where the run stopped."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copies


def start_run(source: Path, out: Path, model: str, *extra: str) -> subprocess.Popen[str]:
    # Batches of 2 chunks: with batches shared across files, a batch of 16 would read all five files at once.
    command = [
        sys.executable,
        "-m",
        "batch",
        "run",
        str(source),
        "--out",
        str(out),
        "--model",
        model,
        "--no-align",
        "--prefetch",
        "1",
        "--batch-size",
        "2",
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_manifest(out: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("*.manifest.json")):
        assert time.monotonic() < deadline, "no file finished in time"
        time.sleep(0.05)


@pytest.fixture
def calls(tmp_path: Path, sample_wav: Path) -> Path:
    return copies(sample_wav, tmp_path / "in", 5)


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

    rerun = subprocess.run(
        [sys.executable, "-m", "batch", "run", str(calls), "--out", str(out), "--model", tiny_en, "--no-align"],
        capture_output=True,
        text=True,
    )
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
    rerun = subprocess.run(
        [sys.executable, "-m", "batch", "run", str(calls), "--out", str(out), "--model", tiny_en, "--no-align"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0 and f"{5 - len(done)} succeeded, {len(done)} skipped" in rerun.stderr


PROGRAM_AFTER_SIGNAL = """
import os, signal, sys, time
from batch.cli.signals import exit_cleanly_on_signals, run_over
exit_cleanly_on_signals()
if sys.argv[1] != "-":
    run_over(int(sys.argv[1]))  # as the command line does once the run's work is written
print("ready", flush=True)
os.kill(os.getpid(), getattr(signal, sys.argv[2]))
time.sleep(30)
"""


@pytest.mark.parametrize(
    ("run_exit_code", "sig", "expected"),
    [("1", "SIGTERM", 1), ("0", "SIGTERM", 0), ("0", "SIGINT", 0), ("-", "SIGTERM", 143)],
)
def test_a_signal_outside_a_run_ends_the_program_with_a_listed_exit_code(
    run_exit_code: str, sig: str, expected: int
) -> None:
    """Without the program's handlers a SIGTERM that comes after the summary kills the process by the signal
    (a parent sees -15); with them it exits with the run's own code, or 143 before any run."""
    program = subprocess.run(
        [sys.executable, "-c", PROGRAM_AFTER_SIGNAL, run_exit_code, sig], capture_output=True, text=True, timeout=60
    )
    assert program.stdout.strip() == "ready"
    assert program.returncode == expected, program.stderr


PROGRAM_SIGNALLED_AS_PYTHON_SHUTS_DOWN = """
import os, signal, sys, time
from batch.cli.signals import exit_cleanly_on_signals, run_over
exit_cleanly_on_signals()
run_over(int(sys.argv[1]))

class SignalledAtTeardown:  # its __del__ runs as Python destroys the modules, after the exit callbacks
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)

keeper = SignalledAtTeardown()
print("ready", flush=True)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("run_exit_code", [0, 1])
def test_a_signal_during_pythons_own_shutdown_leaves_the_runs_exit_code(run_exit_code: int) -> None:
    """Python resets its handlers to the default action as it finalizes: without the program's last exit callback
    a SIGTERM that lands then kills the process (-15) after a summary that promised another code."""
    program = subprocess.run(
        [sys.executable, "-c", PROGRAM_SIGNALLED_AS_PYTHON_SHUTS_DOWN, str(run_exit_code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert program.stdout.strip() == "ready"
    assert program.returncode == run_exit_code, program.stderr


def test_the_program_keeps_its_signal_handlers_until_it_exits() -> None:
    """The entry point installs them before the app runs, and they are still there once the app has returned."""
    program = (
        "import signal, sys\n"
        "import batch.cli as cli\n"
        "sys.argv = ['whisperx-batch', '--version']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(signal.getsignal(signal.SIGTERM).__qualname__, signal.getsignal(signal.SIGINT).__qualname__)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    handler = "exit_cleanly_on_signals.<locals>.on_signal"
    assert result.stdout.split()[-2:] == [handler, handler], result.stderr


def test_the_command_line_marks_the_run_over_once_its_work_is_written(
    cli, tmp_path: Path, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a late signal exits with is the code the run's summary gives (here 0), set before the summary."""
    from batch.cli import signals
    from tests.conftest import tone

    monkeypatch.setattr(signals, "_exit_code_when_over", None)
    tone(tmp_path / "in" / "beep.wav")
    result = cli("run", tmp_path / "in", "--out", tmp_path / "out", "--model", tiny_en, "--device", "cpu", "--no-align")
    assert result.exit_code == 0, result.stderr
    assert signals._exit_code_when_over == 0
