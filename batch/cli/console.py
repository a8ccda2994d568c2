"""What `whisperx-batch run` adds around a Job: the dry run's listing, signals, the progress bar, the summary."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from batch.cli.progress import Progress, for_terminal
from batch.cli.signals import run_over
from batch.common.errors import EXIT_OK, exit_code_for_signal
from batch.common.logs import prints_to_log
from batch.common.runtime import exit_at_once
from batch.run.job import Job
from batch.run.report import RunReport
from batch.settings.options import Settings

log = logging.getLogger(__name__)


def run_from_command_line(settings: Settings, stdout: TextIO | None = None) -> int:
    """Everything `whisperx-batch run` does once its settings are valid; returns the exit code."""
    progress = Progress(for_terminal(settings.quiet, settings.log_format), settings.progress_interval)
    with prints_to_log() as real_stdout:
        job = Job(settings, environ=os.environ, on_file=progress.update)
        if settings.dry_run:
            print_keys(job, stdout or real_stdout)
            return EXIT_OK
        job.watch_listing(progress.census_of(job.source))
        with progress, graceful_stop(job, settings.grace_seconds, settings.log_format):
            report = job.run()
            assert report.exit_code is not None
            run_over(report.exit_code)
    announce(report, settings.log_format)
    return report.exit_code


def announce(report: RunReport, log_format: str) -> None:
    """The run's summary on stderr: lines for a person, or one JSON record a log system can alert on."""
    if log_format == "json":
        fields = {
            "event": "run",
            "counts": report.counts,
            "audio_seconds": round(report.audio_seconds, 3),
            "wall_seconds": report.wall_seconds,
            "realtime_factor": report.realtime_factor,
            "exit_code": report.exit_code,
            "error_type": report.error.type if report.error else None,
        }
        message = report.summary().splitlines()[0]
        if report.error is not None:
            log.error("%s; error: %s", message, report.error.message, extra={"fields": fields})
        else:
            log.info("%s", message, extra={"fields": fields})
        return
    print(report.summary(), file=sys.stderr, flush=True)
    if report.error is not None:
        print(f"whisperx-batch: error: {report.error.message}", file=sys.stderr, flush=True)


def print_keys(job: Job, out: TextIO) -> None:
    """The keys a run would take, one a line: a key that is not valid UTF-8 as its original bytes."""
    for item in job.pending():
        out.flush()
        out.buffer.write(item.key.encode("utf-8", "surrogateescape") + b"\n")
        out.buffer.flush()


@contextlib.contextmanager
def graceful_stop(job: Job, grace_seconds: float, log_format: str = "text") -> Iterator[None]:
    """SIGTERM and SIGINT stop taking new files; files already read by the models may finish within the grace
    period. Past it (or on a second signal) the run is abandoned at once: files in progress have no manifest,
    so nothing half-written counts as done, and a rerun redoes exactly those files.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    timers: list[threading.Timer] = []

    def abandon(signum: int) -> None:
        if job.finished.is_set():  # the run ended within its grace: its own report and exit code stand
            return
        log.error("grace period over: abandoning the file in progress (a rerun redoes it)")
        report, runner = job.report, job.runner
        if report is not None and runner is not None:
            report.stopped_by_signal, report.exit_code = signum, exit_code_for_signal(signum)
            job.give_back()  # claims and queue messages: for other workers now, not after their TTL or timeout
            runner.write_report()  # best effort: the outcome so far, for `status` and the logs
            job.flush_metrics()  # the exit code, for the alerts
            announce(report, log_format)
        exit_at_once(exit_code_for_signal(signum))

    def on_signal(signum: int, _frame: Any) -> None:
        if job.stop_signal is not None:  # a second signal: at once
            abandon(signum)
        job.request_stop(signum)
        log.warning("signal %d: finishing the current file (up to %.0f s), then stopping", signum, grace_seconds)
        timer = threading.Timer(grace_seconds, abandon, args=(signum,))
        timer.daemon = True
        timers.append(timer)
        timer.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for timer in timers:  # the run has ended: no grace timer outlives it
            timer.cancel()
            timer.join()
