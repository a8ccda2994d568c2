"""The worker processes themselves: how one starts, how it is ended, and what its exit says."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from batch.common.runtime import freed_memory_reused
from batch.engine.config import PipelineConfig
from batch.engine.pipeline import DecodedFile, PipelineStats
from batch.run.pool.plan import WorkerSlot
from batch.run.pool.worker import EXIT_CONTEXT_LOST, Greeting, WorkerSpec

log = logging.getLogger(__name__)

EXIT_WAIT_SECONDS = 10.0  # for a killed worker to be gone (one stuck in a GPU driver may never be)


class Phase(enum.Enum):
    """Where a worker process is, from the parent's side."""

    LOADING = "loading"  # started, its models not loaded yet
    WORKING = "working"  # ready; it has not asked for a file
    ASKING = "asking"  # ready, and asked for a file: it is owed a file or an END
    GONE = "gone"  # exited or killed; its connection is closed


@dataclass(eq=False)
class Worker:
    """One process of a slot."""

    process: subprocess.Popen[bytes]
    conn: Connection
    phase: Phase = Phase.LOADING
    in_flight: dict[int, DecodedFile] = field(default_factory=dict)  # ticket -> file
    stats: PipelineStats | None = None

    @property
    def ready(self) -> bool:
        return self.phase in (Phase.WORKING, Phase.ASKING)

    @property
    def gone(self) -> bool:
        return self.phase is Phase.GONE

    def send(self, *message: Any) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):  # it has died: the pool's next pass sees it
            self.conn.send(message)


def start_worker(plan: WorkerSlot, config: PipelineConfig, factory: str, run_id: str | None) -> Worker:
    """A fresh interpreter (`python -m batch.run.pool`), never a fork of this one (threads, CUDA), in a session of
    its own, with the slot's environment from its first instruction and one end of a socket pair to talk through.
    Raises OSError when no process can be started (no memory or processes left, right after the OOM killer)."""
    spec = WorkerSpec(replace(config, runtime=plan.runtime(config.runtime)), factory, run_id)
    greeting = Greeting(list(sys.path), plan.name, freed_memory_reused(), parent_is_quiet(), pickle.dumps(spec))
    ours, theirs = socket.socketpair()
    process, conn = None, None
    try:
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "batch.run.pool", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env={**os.environ, **plan.environ},
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the parent only, which stops them all
            )
        conn = Connection(ours.detach())
        conn.send(greeting)
    except OSError:
        (conn or ours).close()
        if process is not None:
            end_process(process)
        raise
    return Worker(process, conn)


def end_process(process: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """The process ended (killed after `grace` seconds) and reaped, without waiting forever for one that a GPU
    driver holds."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    if process.poll() is None:
        kill_process(process)
    try:
        process.wait(EXIT_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("worker process %s does not exit after SIGKILL (held by a device driver?)", process.pid)


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the worker's session (it leads one), so that a process it forked goes with it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()


def death_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode == EXIT_CONTEXT_LOST:
        return f"exited with code {exitcode} (its CUDA context was lost)"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    why = {
        signal.SIGKILL: " (the kernel's out-of-memory killer, or kill -9)",
        signal.SIGSEGV: " (a crash in native code)",
        signal.SIGABRT: " (a native library aborted)",
        signal.SIGBUS: " (a crash in native code)",
    }.get(number, "")
    return f"was killed by {name}{why}"


def parent_is_quiet() -> bool:
    """Whether this process's log takes only warnings from it (--quiet, or no log set up): workers send no more."""
    return logging.getLogger("batch").getEffectiveLevel() >= logging.WARNING
