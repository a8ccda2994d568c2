"""A stop asked for at any moment of a run is honoured, and the grace timer never outlives the run (issue 28,
item 4): the signal handling of `whisperx-batch run` (batch.cli.console.graceful_stop) around a real Job with a
fake pipeline at the seam, real files, real signals sent to this process."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from batch.cli import console
from batch.run.job import Job
from batch.settings.options import load_settings
from tests.conftest import tone
from tests.fakes import FakePipeline


@pytest.fixture
def source(tmp_path: Path) -> Path:
    for name in ("a.wav", "b.wav", "c.wav"):
        tone(tmp_path / "in" / name)
    return tmp_path / "in"


def make_job(source: Path, pipeline: FakePipeline) -> Job:
    settings = load_settings({"source": str(source), "out": str(source.parent / "out"), "device": "cpu"})
    return Job(settings, pipeline=pipeline)


def grace_timers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer) and thread.is_alive()]


def test_a_stop_during_the_start_up_checks_is_honoured(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = FakePipeline()
    job = make_job(source, pipeline)
    in_check, stop_heard = threading.Event(), threading.Event()
    real_check = job.source.check_readable

    def slow_probe(role: str = "SOURCE") -> None:  # a start-up check that takes a while (an S3 probe)
        in_check.set()
        assert stop_heard.wait(10)
        real_check(role)

    def signal_during_the_probe() -> None:
        assert in_check.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    real_request = job.request_stop

    def request_stop(signum: int | None = None) -> None:
        real_request(signum)
        stop_heard.set()

    monkeypatch.setattr(job.source, "check_readable", slow_probe)
    monkeypatch.setattr(job, "request_stop", request_stop)
    threading.Thread(target=signal_during_the_probe, daemon=True).start()
    with console.graceful_stop(job, grace_seconds=60):
        report = job.run()
    assert report.exit_code == 143 and report.stopped_by_signal == signal.SIGTERM
    assert pipeline.pulled == [] and pipeline.loads == 0 and report.succeeded == []
    assert not grace_timers()


def test_the_grace_timer_ends_with_the_run(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    abandoned: list[int] = []
    monkeypatch.setattr(console, "exit_at_once", abandoned.append)
    pipeline = FakePipeline(batch_size=1, on_batch=lambda keys: os.kill(os.getpid(), signal.SIGTERM))
    job = make_job(source, pipeline)
    with console.graceful_stop(job, grace_seconds=3600):
        report = job.run()
        assert grace_timers()  # the signal started one
    assert not grace_timers() and not abandoned  # cancelled when the run ended: it can neither log nor exit
    assert report.exit_code == 143 and len(report.succeeded) == 1


def test_a_grace_timer_that_fires_after_the_run_ended_leaves_its_report_alone(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    abandoned: list[int] = []
    monkeypatch.setattr(console, "exit_at_once", abandoned.append)
    job = make_job(source, FakePipeline())
    fire: list[threading.Timer] = []
    monkeypatch.setattr(console.threading, "Timer", lambda seconds, call, args: fire.append(call) or _Started())
    with console.graceful_stop(job, grace_seconds=0):
        report = job.run()
        os.kill(os.getpid(), signal.SIGTERM)  # a signal as the run is being torn down
    fire[0](signal.SIGTERM)  # its timer fires after the run's end
    assert not abandoned and report.exit_code == 0 and report.stopped_by_signal is None


class _Started:
    daemon = False

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def join(self) -> None:
        pass
