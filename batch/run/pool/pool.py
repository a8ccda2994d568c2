"""The parent's side of the workers: a Pipeline that hands each decoded file to whichever worker asks for one.

The runner lists, skips, claims, decodes and writes as it does for one pipeline; this class stands where the
pipeline stood. Workers pull: a worker's pipeline asks for a file when its queue needs one, so a fast GPU
takes more files than a slow one and no file goes to two workers. The runner's decoded files are pulled on a
thread of their own (`Feed`), so a slow fetch never keeps the pool from answering its workers, handing back
outcomes or passing on a stop.

Faults:
- A worker that dies (the kernel's OOM killer, a crash in native code, a CUDA error that poisons its context)
  does not end the run. The files it held go back to the queue once, each to a worker that holds nothing else
  (a fresh worker on the same device is started for that), so that a file that kills a second worker is known
  to be the one: it fails, with the reason, and takes down no more.
- A worker that cannot start (its GPU broken or busy) is reported and the others go on; with none left, the run
  stops (exit 3).
- A device whose workers die MAX_DEATHS_IN_A_ROW times without finishing a file in between is given up (a death
  that a retried file is blamed for does not count: the file is the cause, not the device).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from batch.common.errors import EnvironmentProblem, WorkerDied
from batch.common.logs import file_context
from batch.common.runtime import freed_memory_reused
from batch.engine.config import PipelineConfig
from batch.engine.pipeline import DecodedFile, FileOutcome, PipelineStats
from batch.run.pool.feed import Feed
from batch.run.pool.messages import (
    DONE,
    END,
    FATAL,
    FILE,
    FLUSHED,
    LOG,
    QUIT,
    READY,
    START_FAILED,
    STOP,
    WANT,
    ErrorInfo,
    StatsUpdate,
    Task,
)
from batch.run.pool.plan import WorkerSlot
from batch.run.pool.worker import DEFAULT_FACTORY, Greeting, WorkerSpec

log = logging.getLogger(__name__)

MAX_DEATHS_IN_A_ROW = 3
POLL_SECONDS = 0.5
QUIT_WAIT_SECONDS = 10.0  # for idle workers to exit after QUIT, before they are killed
EXIT_WAIT_SECONDS = 10.0  # for a killed worker to be gone (one stuck in a GPU driver may never be)


@dataclass(eq=False)
class _Worker:
    """One process of a slot."""

    process: subprocess.Popen[bytes]
    conn: Connection
    ready: bool = False
    wants: bool = False  # asked for a file, not answered yet
    alone: bool = False  # holds a file retried after a worker died: it gets nothing else until that is back
    gone: bool = False
    in_flight: dict[int, DecodedFile] = field(default_factory=dict)  # ticket -> file
    stats: PipelineStats | None = None


@dataclass(eq=False)
class _Slot:
    plan: WorkerSlot
    worker: _Worker | None = None
    past: list[PipelineStats] = field(default_factory=list)  # the figures of its workers that died
    ever_ready: bool = False
    files: int = 0
    restarts: int = 0
    deaths_in_a_row: int = 0
    start_error: ErrorInfo | None = None
    problem: str | None = None  # why it is out of the run
    batch_size: dict[str, int] = field(default_factory=dict)  # per stage: the size of its latest batch
    oom_retries: dict[str, int] = field(default_factory=dict)  # per stage

    @property
    def live(self) -> bool:
        return self.worker is not None and not self.worker.gone


class WorkerPool:
    """One pipeline per slot, each in a process of its own, behind the Pipeline interface."""

    def __init__(
        self,
        config: PipelineConfig,
        slots: Sequence[WorkerSlot],
        *,
        factory: str = DEFAULT_FACTORY,
        run_id: str | None = None,
    ):
        if not slots:
            raise ValueError("a pool needs at least one worker")
        self.config, self.factory, self.run_id = config, factory, run_id
        self._slots = [_Slot(plan) for plan in slots]
        self._started = False
        self._stopping = False
        self._fatal: ErrorInfo | None = None  # a BatchError a worker raised: the run stops with it
        self._tickets = itertools.count()
        self._suspects: deque[DecodedFile] = deque()  # files held by a worker that died: retried one at a time
        self._deaths: dict[int, tuple[DecodedFile, list[str]]] = {}  # id(file) -> (file, the deaths it was in)
        self._out: deque[FileOutcome] = deque()
        self._records: list[Any] = []
        self._pending: deque[DecodedFile] = deque()  # taken from the runner, not handed out yet
        self._feed: Feed | None = None
        self._should_stop: Callable[[], bool] = lambda: False

    # --- the Pipeline interface ----------------------------------------------------------------------------

    def load(self) -> None:
        """Start every worker (each loads its models); returns at once. Idempotent."""
        if self._started:
            return
        self._started = True
        atexit.register(self._kill_all)  # whatever way this process ends, no worker outlives it
        for slot in self._slots:
            self._start(slot)

    def stats(self) -> PipelineStats:
        merged = PipelineStats(batch_size=self.config.runtime.batch_size, gpu_records=list(self._records))
        every = [stats for slot in self._slots for stats in self._stats_of(slot)]
        loads = [stats.load_seconds for stats in every if stats.load_seconds is not None]
        merged.load_seconds = max(loads) if loads else None  # the workers load side by side
        firsts = [stats.first_batch_at for stats in every if stats.first_batch_at is not None]
        merged.first_batch_at = min(firsts) if firsts else None  # perf_counter: one clock for every process
        merged.busy_seconds = sum(stats.busy_seconds for stats in every)
        merged.asr_batches = sum(stats.asr_batches for stats in every)
        merged.asr_items = sum(stats.asr_items for stats in every)
        merged.alignment_models_loaded = sorted({name for stats in every for name in stats.alignment_models_loaded})
        merged.workers = [self._figures(slot) for slot in self._slots]
        return merged

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        self._should_stop = should_stop
        finished = False
        try:
            source = iter(files)
            first = next(source, None)  # the runner starts the workers (load) as the first file decodes
            if first is None:
                return
            self.load()
            self._pending.append(first)
            self._feed = Feed(source, room=1)  # the runner decodes ahead (--prefetch per worker): one in hand
            while True:
                if should_stop() and not self._stopping:
                    self._stop_all()
                self._receive()
                yield from self._outcomes()
                self._hand_out()
                yield from self._outcomes()
                if self._all_done():
                    finished = True
                    return
                self._refuse_to_go_on_without_workers()
        finally:
            try:
                if self._started:
                    self._shut_down(gracefully=finished)  # first: a fetch in hand must not hold the GPUs
            finally:
                if self._feed is not None:
                    self._feed.close()

    def _outcomes(self) -> Iterator[FileOutcome]:
        while self._out:
            yield self._out.popleft()
        if self._fatal is not None:
            for slot in self._live_slots():  # what the other workers finished meanwhile is written first
                assert slot.worker is not None
                self._drain(slot, slot.worker)
            while self._out:
                yield self._out.popleft()
            raise self._fatal.rebuilt()

    # --- starting and stopping workers -------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        """A fresh interpreter (`python -m batch.run.pool`), never a fork of this one (threads, CUDA), in a
        session of its own, with the slot's environment from its first instruction and one end of a socket pair
        to talk through."""
        plan = slot.plan
        spec = WorkerSpec(replace(self.config, runtime=plan.runtime(self.config.runtime)), self.factory, self.run_id)
        greeting = Greeting(list(sys.path), plan.name, freed_memory_reused(), _parent_is_quiet(), pickle.dumps(spec))
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
        except OSError as exc:  # no memory or no process left to start one (right after the OOM killer, say)
            (conn or ours).close()
            if process is not None:
                _end(process)
            slot.problem = f"could not start: {exc}"
            log.error("worker %s (%s) %s", plan.name, plan.detail, slot.problem)
            return
        slot.worker = _Worker(process, conn)
        log.info("worker %s: starting on %s (pid %s)", plan.name, plan.detail, process.pid)

    def _stop_all(self) -> None:
        """After a signal: every worker finishes what it has fully read, takes nothing new, and exits."""
        self._stopping = True
        for slot in self._live_slots():
            assert slot.worker is not None
            self._send(slot.worker, STOP)

    def _shut_down(self, gracefully: bool) -> None:
        """Ready workers that hold nothing quit; the rest (still loading, or after an error) are killed."""
        self._stopping = True  # from here a worker that dies is not replaced, and what it held is left
        live = [slot.worker for slot in self._live_slots() if slot.worker is not None]
        try:
            for slot in self._live_slots():  # what came meanwhile: a worker that could not start says why
                assert slot.worker is not None
                self._drain(slot, slot.worker)
            if gracefully:
                for worker in live:
                    if worker.ready and not worker.gone:
                        self._send(worker, QUIT)
                deadline = time.monotonic() + QUIT_WAIT_SECONDS
                for worker in live:
                    if worker.ready:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            worker.process.wait(max(0.0, deadline - time.monotonic()))
        finally:
            for worker in live:
                _end(worker.process)  # SIGKILL where still running: workers ignore SIGTERM (the parent speaks)
                worker.gone = True
                worker.conn.close()
            atexit.unregister(self._kill_all)

    def _kill_all(self) -> None:
        for slot in self._slots:
            if slot.worker is not None and slot.worker.process.poll() is None:
                _kill(slot.worker.process)

    # --- messages --------------------------------------------------------------------------------------------

    def _receive(self) -> None:
        """Wait up to POLL_SECONDS for a worker's message or exit, or a decoded file a worker is waiting for."""
        waiting: dict[Any, _Slot | None] = {}
        for slot in self._live_slots():
            assert slot.worker is not None
            waiting[slot.worker.conn] = slot  # a worker that dies closes its end: EOF
        if self._feed is not None and any(w.ready and w.wants for w in self._live_workers()):
            waiting[self._feed.readable] = None
        ready = wait(list(waiting), timeout=POLL_SECONDS) if waiting else []
        for slot in self._live_slots():  # an exit is noticed even if a process it started keeps the socket
            assert slot.worker is not None
            if slot.worker.conn in ready or slot.worker.process.poll() is not None:
                self._drain(slot, slot.worker)

    def _drain(self, slot: _Slot, worker: _Worker) -> None:
        closed = False
        try:
            while not worker.gone and worker.conn.poll():
                self._handle(slot, worker, worker.conn.recv())
        except (EOFError, OSError):
            closed = True
        if worker.gone or not (closed or worker.process.poll() is not None):
            return
        try:  # what it said before it went (why it could not start, its last outcomes)
            while worker.conn.poll(1.0):
                self._handle(slot, worker, worker.conn.recv())
        except (EOFError, OSError):
            pass
        self._lost(slot, worker)

    def _handle(self, slot: _Slot, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind, *payload = message
        if kind == WANT:
            worker.wants = True
        elif kind == DONE:
            done, update = payload
            file = worker.in_flight.pop(done.ticket)
            self._deaths.pop(id(file), None)
            if worker.alone and not worker.in_flight:
                worker.alone = False
            outcome = done.outcome(file)
            outcome.worker = f"{slot.plan.name}: {slot.plan.detail}"
            self._out.append(outcome)
            slot.files += 1
            slot.deaths_in_a_row = 0
            self._update(slot, worker, update)
        elif kind == LOG:
            self._log(slot, *payload)
        elif kind == FLUSHED:
            self._update(slot, worker, payload[0])
            if worker.in_flight and not self._stopping:  # a pipeline that broke its promise: redo them
                log.warning("worker %s: %d file(s) came back unfinished; redone", slot.plan.name, len(worker.in_flight))
                self._suspects.extend(worker.in_flight.values())
            worker.in_flight.clear()
            worker.alone = False
        elif kind == READY:
            worker.ready = slot.ever_ready = True
            log.info("worker %s: ready (models loaded in %.1f s)", slot.plan.name, payload[0] or 0.0)
        elif kind == START_FAILED:
            slot.start_error = payload[0]
        elif kind == FATAL:
            info: ErrorInfo = payload[0]
            if info.exit_code is not None:  # a BatchError: it stops the run, as it would in one process
                self._fatal = self._fatal or info
            else:
                self._lost(slot, worker, f"failed: {info.type_name}: {info.message}")

    def _log(self, slot: _Slot, level: int, name: str, message: str, key: str | None) -> None:
        """A worker's log record, written by this process's log as its own, marked with the worker's name."""
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(level):
            return
        text, fields = f"[{slot.plan.name}] {message}", {"worker": slot.plan.name}
        record = logger.makeRecord(name, level, "", 0, text, (), None, extra={"fields": fields})
        with file_context(key) if key else contextlib.nullcontext():
            logger.handle(record)

    def _update(self, slot: _Slot, worker: _Worker, update: StatsUpdate) -> None:
        worker.stats = update.stats
        self._records.extend(update.new_records)
        for record in update.new_records:
            slot.batch_size[record.stage] = record.batch_size_used
            slot.oom_retries[record.stage] = slot.oom_retries.get(record.stage, 0) + record.oom_retries

    # --- handing out files -------------------------------------------------------------------------------------

    def _hand_out(self) -> None:
        for worker in self._live_workers():
            if worker.ready and worker.wants:
                self._answer(worker)

    def _answer(self, worker: _Worker) -> None:
        if self._stopping or self._fatal is not None or worker.alone:
            self._end_session(worker)  # the suspect it holds is read alone, then it may take more
            return
        if self._suspects and not worker.in_flight:
            self._give(worker, self._suspects.popleft(), alone=True)
            return
        file = self._next_file()
        if file is not None:
            self._give(worker, file)
        elif worker.in_flight and self._input_ended():
            self._end_session(worker)  # nothing more will come: finish what it holds
        # else it waits: for the next decoded file, a retried one, or the end

    def _next_file(self) -> DecodedFile | None:
        """The next decoded file that is ready; one that failed to decode comes back at once, unsent."""
        while True:
            if self._pending:
                file = self._pending.popleft()
            elif self._feed is None or self._should_stop():
                return None
            else:
                taken = self._feed.take()
                if taken is None:
                    return None
                file = taken
            if file.error is None and file.audio is not None:
                return file
            self._out.append(FileOutcome(file, error=file.error))

    def _input_ended(self) -> bool:
        return not self._pending and (self._should_stop() or (self._feed is not None and self._feed.exhausted))

    def _give(self, worker: _Worker, file: DecodedFile, alone: bool = False) -> None:
        ticket = next(self._tickets)
        worker.in_flight[ticket] = file
        worker.wants, worker.alone = False, alone
        self._send(worker, FILE, Task(ticket, file.key, file.audio, dict(file.stopwatch.timings)))

    def _end_session(self, worker: _Worker) -> None:
        worker.wants = False
        self._send(worker, END)

    def _send(self, worker: _Worker, *message: Any) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):  # it has died: the next pass sees it
            worker.conn.send(message)

    # --- deaths --------------------------------------------------------------------------------------------------

    def _lost(self, slot: _Slot, worker: _Worker, reason: str | None = None) -> None:
        """A worker process is gone: its files go back (or fail, the second time), and its slot goes on."""
        if worker.gone:
            return
        worker.gone = True
        _end(worker.process, grace=5.0)
        worker.conn.close()
        reason = reason or _death(worker.process.returncode)
        if worker.stats is not None:
            slot.past.append(worker.stats)
            worker.stats = None
        if not worker.ready:
            why = slot.start_error.message if slot.start_error else reason
            slot.problem = f"{'a fresh worker ' if slot.ever_ready else ''}could not start: {why}"
            log.error("worker %s (%s): %s", slot.plan.name, slot.plan.detail, slot.problem)
            return
        held = list(worker.in_flight.values())
        worker.in_flight.clear()
        if self._stopping or self._fatal is not None or self._should_stop():  # the run ends: no retry, no new worker
            if held:
                log.warning("worker %s %s while stopping; %d file(s) left to rerun", slot.plan.name, reason, len(held))
            return
        for file in held:
            self._suspect(file, f"worker {slot.plan.name} {reason}")
        if not worker.alone:  # a death while it held one retried file alone is that file's doing
            slot.deaths_in_a_row += 1
        if slot.deaths_in_a_row >= MAX_DEATHS_IN_A_ROW:
            slot.problem = f"its workers died {slot.deaths_in_a_row} times in a row (last: {reason})"
            log.error("worker %s (%s): %s; no more workers start there", slot.plan.name, slot.plan.detail, slot.problem)
            return
        log.warning(
            "worker %s %s; %d file(s) it held go back to the queue; a fresh worker starts on %s",
            slot.plan.name,
            reason,
            len(held),
            slot.plan.detail,
        )
        slot.restarts += 1
        self._start(slot)

    def _suspect(self, file: DecodedFile, death: str) -> None:
        _, deaths = self._deaths.setdefault(id(file), (file, []))  # the file is kept: its id stays its own
        deaths.append(death)
        if len(deaths) < 2:
            self._suspects.append(file)
            return
        del self._deaths[id(file)]
        log.error("%s: failed: it was in two workers that died (%s)", file.key, "; ".join(deaths))
        self._out.append(
            FileOutcome(
                file,
                error=WorkerDied(
                    f"the file was being transcribed when a worker died, twice ({deaths[0]}; then, with this file "
                    f"alone, {deaths[1]}); it is failed so that it cannot take down more workers"
                ),
            )
        )

    # --- the end ---------------------------------------------------------------------------------------------

    def _all_done(self) -> bool:
        if self._out:
            return False
        held = any(worker.in_flight for worker in self._live_workers())
        if self._stopping:
            return not held
        return self._input_ended() and not self._suspects and not held

    def _refuse_to_go_on_without_workers(self) -> None:
        if any(slot.live for slot in self._slots):
            return
        problems = "; ".join(f"{slot.plan.name}: {slot.problem or 'stopped'}" for slot in self._slots)
        if any(slot.ever_ready for slot in self._slots):
            raise EnvironmentProblem(f"every worker has stopped: {problems}")
        errors = [slot.start_error for slot in self._slots]
        first = errors[0]
        if first is not None and first.exit_code is not None and all(error == first for error in errors):
            raise first.rebuilt()  # the same refusal everywhere: as one process would say it
        raise EnvironmentProblem(f"no worker could start: {problems}")

    # --- figures ----------------------------------------------------------------------------------------------

    def _live_slots(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.live]

    def _live_workers(self) -> list[_Worker]:
        return [slot.worker for slot in self._slots if slot.worker is not None and not slot.worker.gone]

    def _stats_of(self, slot: _Slot) -> list[PipelineStats]:
        current = slot.worker.stats if slot.worker is not None else None
        return [*slot.past, current] if current is not None else list(slot.past)

    def _figures(self, slot: _Slot) -> dict[str, Any]:
        """What the run report and the metrics say of one worker."""
        worker = slot.worker
        state = "exited" if worker is not None else "not started"  # not started: no file needed a model
        if slot.problem is not None:
            state = "failed"
        elif worker is not None and not worker.gone:
            state = "ready" if worker.ready else "starting"
        figures: dict[str, Any] = {
            "name": slot.plan.name,
            "device": slot.plan.device,
            "detail": slot.plan.detail,
            "threads": slot.plan.threads,
            "state": state,
            "started": slot.ever_ready,
            "files": slot.files,
            "restarts": slot.restarts,
            "busy_seconds": round(sum(stats.busy_seconds for stats in self._stats_of(slot)), 3),
            "batch_size": dict(slot.batch_size),
            "oom_retries": dict(slot.oom_retries),
        }
        if slot.problem is not None:
            figures["problem"] = slot.problem
        return figures


def _end(process: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """The process ended (killed after `grace` seconds) and reaped, without waiting forever for one that a GPU
    driver holds."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    if process.poll() is None:
        _kill(process)
    try:
        process.wait(EXIT_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("worker process %s does not exit after SIGKILL (held by a device driver?)", process.pid)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the worker's session (it leads one), so that a process it forked goes with it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
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


def _parent_is_quiet() -> bool:
    """Whether this process's log takes only warnings from it (--quiet, or no log set up): workers send no more."""
    return logging.getLogger("batch").getEffectiveLevel() >= logging.WARNING
