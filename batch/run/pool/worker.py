"""The worker process: one pipeline, fed decoded files by the pool through a socket, outcomes sent back.

Its signals are the parent's business: it runs in a session of its own (a terminal's Ctrl-C does not reach it)
and ignores SIGINT and SIGTERM (systemd signals every process of the unit); the parent says STOP instead, so the
grace period holds for all. If the parent goes away (its socket closes), the worker exits at once: nothing it
holds can be written any more. Its log records go to the parent, which writes them as its own (one log, one
format, the progress bar kept whole), each marked with the worker's name.

This module imports only the standard library at the top: the worker's environment (its GPU, its thread pools)
is set by the command that starts it, and malloc is set up before numpy, torch or CTranslate2 load.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "batch.engine.whisperx_pipeline:WhisperxPipeline"
# A worker whose CUDA context is lost (a sticky CUDA error) exits with this (sysexits' EX_TEMPFAIL): this process
# can run nothing more on its GPU, a fresh one can. The parent then handles it as any worker's death.
EXIT_CONTEXT_LOST = 75


@dataclass(frozen=True)
class Greeting:
    """The worker's first message, of plain values only: reading it imports nothing."""

    sys_path: list[str]  # the parent's (its pipeline factory may live outside the installed package)
    name: str  # gpu0, cpu1
    reuse_freed_memory: bool  # the parent's malloc setting (batch.common.runtime.reuse_freed_memory)
    quiet: bool
    spec: bytes  # the pickled WorkerSpec


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker's pipeline is built from."""

    pipeline: Any  # batch.engine.config.PipelineConfig, with this worker's device and threads
    factory: str = DEFAULT_FACTORY  # "module:callable" taking the PipelineConfig, returning a Pipeline
    run_id: str | None = None


def main(argv: list[str]) -> None:
    """The worker process's entry point: `python -m batch.run.pool FD`, FD its end of the pool's socket pair."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    fd = int(argv[1])
    os.set_inheritable(fd, False)  # a process this one starts must not keep the parent's socket open
    conn = Connection(fd)
    greeting: Greeting = conn.recv()
    sys.path[:] = greeting.sys_path
    from batch.common.runtime import exit_at_once, reuse_freed_memory  # the standard library's imports only

    if greeting.reuse_freed_memory:  # before any library starts a thread
        reuse_freed_memory()
    worker = Worker(conn, greeting.name)
    worker.forward_logs(greeting.quiet)
    from batch.run.pool.messages import START_FAILED, ErrorInfo

    try:
        spec: WorkerSpec = pickle.loads(greeting.spec)  # imports the engine's modules
    except Exception as exc:  # a factory that cannot be imported, a broken install: said, not lost
        worker.send(START_FAILED, ErrorInfo.of(exc))
        exit_at_once(0)
    _keep_the_token_out_of_logs(spec)
    from batch.common.logs import prints_to_log, run_id_var

    run_id_var.set(spec.run_id)
    with prints_to_log():  # stdout is the parent's (its dry run's keys): what a library prints goes to the log
        code = worker.serve(spec)
    exit_at_once(code)  # all is said and sent: no waiting for a library's threads at interpreter shutdown


def _keep_the_token_out_of_logs(spec: WorkerSpec) -> None:
    from batch.common.errors import register_secret

    hub = getattr(spec.pipeline, "hub", None)
    register_secret(getattr(hub, "token", None))


class Worker:
    def __init__(self, conn: Connection, name: str):
        self.conn, self.name = conn, name
        self._send_lock = threading.Lock()  # log records come from every thread
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.stopping = threading.Event()
        self.quitting = False
        self._records_sent = 0
        threading.Thread(target=self._listen, name="pool-inbox", daemon=True).start()

    def forward_logs(self, quiet: bool) -> None:
        from batch.common.logs import setup_logging

        setup_logging(quiet=quiet, handler=_Forwarding(self))

    def serve(self, spec: WorkerSpec) -> int:
        """Load the pipeline and do the files the parent hands over; returns the process's exit code."""
        from batch.run.pool.messages import FATAL, FLUSHED, READY, START_FAILED, ErrorInfo

        try:
            self.pipeline = build_pipeline(spec)
            self.pipeline.load()
        except Exception as exc:
            self.send(START_FAILED, ErrorInfo.of(exc))
            return 0
        self.send(READY, self.pipeline.stats().load_seconds)
        try:
            while not self.quitting:
                self._one_session()
                self.send(FLUSHED, self._stats_update())
                if self.stopping.is_set():
                    return 0
        except Exception as exc:  # a BatchError (stops the run), a lost CUDA context, a defect: the parent decides
            info = ErrorInfo.of(exc)
            self.send(FATAL, info)
            if info.context_lost:  # this process can run nothing more on its GPU: it goes, a fresh one comes
                return EXIT_CONTEXT_LOST
        return 0

    def _one_session(self) -> None:
        """Files until the parent says END: the pipeline drains, as at the end of an in-process run."""
        from batch.run.pool.messages import DONE, Done

        timings_before: dict[int, dict[str, float]] = {}
        tickets: dict[int, int] = {}  # id(DecodedFile) -> ticket
        for outcome in self.pipeline.process(self._files(timings_before, tickets), self.stopping.is_set):
            ticket = tickets.pop(id(outcome.file))
            done = Done.of(ticket, outcome, timings_before.pop(ticket))
            self.send(DONE, done, self._stats_update())

    def _files(self, timings_before: dict[int, dict[str, float]], tickets: dict[int, int]) -> Iterator[Any]:
        from batch.run.pool.messages import END, FILE, QUIT, WANT

        while True:
            self.send(WANT)
            kind, *payload = self._inbox.get()
            if kind == FILE:
                task = payload[0]
                file = task.decoded()
                timings_before[task.ticket] = dict(task.timings)
                tickets[id(file)] = task.ticket
                yield file
            elif kind == QUIT:
                self.quitting = True
                return
            elif kind == END:
                return

    def _stats_update(self) -> Any:
        from dataclasses import replace

        from batch.run.pool.messages import StatsUpdate

        stats = self.pipeline.stats()
        records = list(stats.gpu_records)
        new, self._records_sent = records[self._records_sent :], len(records)
        return StatsUpdate(replace(stats, gpu_records=[]), new)

    def _listen(self) -> None:
        from batch.run.pool.messages import STOP

        while True:
            try:
                message = self.conn.recv()
            except BaseException:  # the parent is gone (EOF), or a file could not be read in (memory): either
                os._exit(1)  # way this worker can do nothing more; the parent retries what it held
            if message[0] == STOP:
                self.stopping.set()
            else:
                self._inbox.put(message)

    def send(self, *message: Any) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except (BrokenPipeError, OSError):
                os._exit(1)


class _Forwarding(logging.Handler):
    """Sends each log record, as plain values, to the parent, which logs it as its own."""

    def __init__(self, worker: Worker):
        super().__init__()
        self.worker, self.pid = worker, os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        from batch.common.logs import key_var
        from batch.run.pool.messages import LOG

        if os.getpid() != self.pid:  # a process a library forked must not write into this one's socket
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.worker.send(LOG, record.levelno, record.name, message, key_var.get())
        except Exception:
            self.handleError(record)


def build_pipeline(spec: WorkerSpec) -> Any:
    module, _, name = spec.factory.partition(":")
    factory: Callable[[Any], Any] = getattr(importlib.import_module(module), name)
    return factory(spec.pipeline)
