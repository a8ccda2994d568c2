"""The parent's side of the workers: a Pipeline that hands each decoded file to whichever worker asks for one.

The runner lists, skips, claims, decodes and writes as it does for one pipeline; this class stands where the
pipeline stood. Workers pull: a worker's pipeline asks for a file when its queue needs one, so a fast GPU
takes more files than a slow one and no file goes to two workers. The runner's decoded files are pulled on a
thread of their own (`Feed`), so a slow fetch never keeps the pool from answering its workers, handing back
outcomes or passing on a stop.

Faults:
- A worker that dies (the kernel's OOM killer, a crash in native code, a sticky CUDA error that poisons its context:
  `CudaContextLost`, after which it says why and exits) does not end the run. The files it held go back to the queue
  once, each to a worker that holds nothing else (a fresh worker on the same device is started for that), so that a
  file that kills a second worker is known to be the one: it fails, with the reason, and takes down no more
  (`dispatch.py`).
- A worker that cannot start (its GPU broken or busy) is reported and the others go on; with none left, the run
  stops (exit 3).
- A worker that holds a file past its deadline (--file-timeout, and a grace for its own check) hangs: it is
  killed, the files past the deadline are retried alone, and one that hangs a worker again, alone, fails
  (FileTimeout); the other files it held are handed out again, as new.
- A device whose workers die MAX_DEATHS_IN_A_ROW times without finishing a file in between is given up (a death
  that a retried file is blamed for does not count: the file is the cause, not the device).

The processes (`processes.py`), who gets which file (`dispatch.py`), the figures (`slots.py`) and what travels
between parent and worker (`messages.py`) each have a module of their own; this one runs the conversation.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any

from batch.engine.config import PipelineConfig
from batch.engine.pipeline import DecodedFile, FileOutcome, PipelineStats
from batch.run.pool.dispatch import Dispatch
from batch.run.pool.messages import DONE, END, FATAL, FLUSHED, LOG, QUIT, READY, START_FAILED, STOP, WANT, ErrorInfo
from batch.run.pool.plan import WorkerSlot
from batch.run.pool.processes import Phase, Worker, death_reason, end_process, kill_process, start_worker
from batch.run.pool.slots import Slot, merged_stats, refuse_to_go_on_without_workers, relay_log
from batch.run.pool.worker import DEFAULT_FACTORY

log = logging.getLogger(__name__)

MAX_DEATHS_IN_A_ROW = 3
# Past a file's deadline (--file-timeout), how long its worker has to fail it itself (its pipeline checks as each
# stage ends) before it is taken to hang in a stage and killed: a tenth of the deadline, at most this.
HANG_GRACE_SECONDS = 30.0
POLL_SECONDS = 0.5
QUIT_WAIT_SECONDS = 10.0  # for idle workers to exit after QUIT, before they are killed


class _Life(enum.Enum):
    NEW = "new"  # no worker started yet
    RUNNING = "running"
    STOPPING = "stopping"  # after a signal, an error or close(): no worker is replaced, nothing new handed out


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
        self._slots = [Slot(plan) for plan in slots]
        self._life = _Life.NEW
        self._fatal: ErrorInfo | None = None  # a BatchError a worker raised: the run stops with it
        self._dispatch = Dispatch()
        self._out: deque[FileOutcome] = deque()
        self._records: list[Any] = []

    # --- the Pipeline interface ----------------------------------------------------------------------------

    def load(self) -> None:
        """Start every worker (each loads its models); returns at once. Idempotent."""
        if self._life is not _Life.NEW:
            return
        self._life = _Life.RUNNING
        atexit.register(self._kill_all)  # whatever way this process ends, no worker outlives it
        for slot in self._slots:
            self._start(slot)

    def stats(self) -> PipelineStats:
        return merged_stats(self._slots, self.config.runtime.batch_size, self._records)

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        self._dispatch.should_stop = should_stop
        finished = False
        try:
            source = iter(files)
            first = next(source, None)  # the runner starts the workers (load) as the first file decodes
            if first is None:
                return
            self.load()
            self._dispatch.begin(first, source)
            while True:
                if should_stop() and self._life is _Life.RUNNING:
                    self._stop_all()
                self._receive()
                self._stop_hung_workers()
                yield from self._outcomes()
                self._hand_out()
                yield from self._outcomes()
                if self._all_done():
                    finished = True
                    return
                refuse_to_go_on_without_workers(self._slots)
        finally:
            try:
                if self._life is _Life.STOPPING or (self._life is _Life.RUNNING and not finished):
                    self._shut_down(gracefully=finished)  # first: a fetch in hand must not hold the GPUs
                # else the session ended with every file back: the workers stay, models loaded, for the next one
            finally:
                self._dispatch.close()

    def close(self) -> None:
        """The run is over: the workers quit. Until then they outlive each session (`process`), so that a
        queue's next files, after a pause, find them ready. Idempotent."""
        if self._life is _Life.RUNNING:
            self._shut_down(gracefully=True)

    def _outcomes(self) -> Iterator[FileOutcome]:
        while self._out:
            yield self._out.popleft()
        if self._fatal is not None:
            for slot in self._live_slots():  # what the other workers finished meanwhile is written first
                self._drain(slot)
            while self._out:
                yield self._out.popleft()
            raise self._fatal.rebuilt()

    # --- starting and stopping workers -------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        try:
            slot.worker = start_worker(slot.plan, self.config, self.factory, self.run_id)
        except OSError as exc:  # no memory or no process left to start one (right after the OOM killer, say)
            slot.problem = f"could not start: {exc}"
            log.error("worker %s (%s) %s", slot.plan.name, slot.plan.detail, slot.problem)
            return
        log.info("worker %s: starting on %s (pid %s)", slot.plan.name, slot.plan.detail, slot.worker.process.pid)

    def _stop_all(self) -> None:
        """After a signal: every worker finishes what it has fully read, takes nothing new, and exits."""
        self._life = _Life.STOPPING
        for worker in self._live_workers():
            worker.send(STOP)

    def _shut_down(self, gracefully: bool) -> None:
        """Ready workers that hold nothing quit; the rest (still loading, or after an error) are killed."""
        self._life = _Life.STOPPING  # from here a worker that dies is not replaced, and what it held is left
        live = self._live_workers()
        try:
            for slot in self._live_slots():  # what came meanwhile: a worker that could not start says why
                self._drain(slot)
            if gracefully:
                for worker in live:
                    if worker.ready:
                        worker.send(QUIT)
                deadline = time.monotonic() + QUIT_WAIT_SECONDS
                for worker in live:
                    if worker.ready:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            worker.process.wait(max(0.0, deadline - time.monotonic()))
        finally:
            for worker in live:
                end_process(worker.process)  # SIGKILL where still running: workers ignore SIGTERM (the parent speaks)
                worker.phase = Phase.GONE
                worker.conn.close()
            atexit.unregister(self._kill_all)

    def _kill_all(self) -> None:
        for slot in self._slots:
            if slot.worker is not None and slot.worker.process.poll() is None:
                kill_process(slot.worker.process)

    # --- messages --------------------------------------------------------------------------------------------

    def _receive(self) -> None:
        """Wait up to POLL_SECONDS for a worker's message or exit, or a decoded file a worker is waiting for."""
        waiting: list[Any] = [worker.conn for worker in self._live_workers()]  # a worker that dies closes its end
        feed = self._dispatch.feed_readable
        if feed is not None and any(worker.phase is Phase.ASKING for worker in self._live_workers()):
            waiting.append(feed)
        ready = wait(waiting, timeout=POLL_SECONDS) if waiting else []
        for slot in self._live_slots():  # an exit is noticed even if a process it started keeps the socket
            assert slot.worker is not None
            if slot.worker.conn in ready or slot.worker.process.poll() is not None:
                self._drain(slot)

    def _drain(self, slot: Slot) -> None:
        worker = slot.worker
        assert worker is not None
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

    def _handle(self, slot: Slot, worker: Worker, message: tuple[Any, ...]) -> None:
        kind, *payload = message
        if kind == WANT:
            worker.phase = Phase.ASKING
        elif kind == DONE:
            done, update = payload
            outcome = done.outcome(self._dispatch.finished(worker, done.ticket))
            outcome.worker = f"{slot.plan.name}: {slot.plan.detail}"
            self._out.append(outcome)
            slot.files += 1
            slot.deaths_in_a_row = 0
            self._update(slot, worker, update)
        elif kind == LOG:
            relay_log(slot, *payload)
        elif kind == FLUSHED:
            self._update(slot, worker, payload[0])
            if worker.in_flight and self._life is _Life.RUNNING:  # a pipeline that broke its promise: redo them
                log.warning("worker %s: %d file(s) came back unfinished; redone", slot.plan.name, len(worker.in_flight))
                self._dispatch.redo(worker)
            self._dispatch.drop(worker)
        elif kind == READY:
            if worker.phase is Phase.LOADING:
                worker.phase = Phase.WORKING
            slot.ever_ready = True
            log.info("worker %s: ready (models loaded in %.1f s)", slot.plan.name, payload[0] or 0.0)
        elif kind == START_FAILED:
            slot.start_error = payload[0]
        elif kind == FATAL:
            info: ErrorInfo = payload[0]
            if info.context_lost:  # its process can run nothing more on its GPU, a fresh one can: not the run's end
                self._lost(slot, worker, f"exited: {info.headline}")
            elif info.exit_code is not None:  # a BatchError: it stops the run, as it would in one process
                self._fatal = self._fatal or info
            else:
                self._lost(slot, worker, f"failed: {info.type_name}: {info.message}")

    def _update(self, slot: Slot, worker: Worker, update: Any) -> None:
        slot.take(worker, update)
        self._records.extend(update.new_records)

    # --- handing out files -------------------------------------------------------------------------------------

    def _hand_out(self) -> None:
        for worker in self._live_workers():
            if worker.phase is Phase.ASKING:
                self._answer(worker)

    def _answer(self, worker: Worker) -> None:
        dispatch = self._dispatch
        if self._life is not _Life.RUNNING or self._fatal is not None or dispatch.holds_retry(worker):
            self._end_session(worker)  # the retried file it holds is read alone, then it may take more
            return
        retry = dispatch.next_retry() if not worker.in_flight else None
        if retry is not None:
            dispatch.give(worker, retry, alone=True)
            return
        file = dispatch.next_file(self._out.append)
        if file is not None:
            dispatch.give(worker, file)
        elif worker.in_flight and dispatch.input_ended():
            self._end_session(worker)  # nothing more will come: finish what it holds
        # else it waits: for the next decoded file, a retried one, or the end

    def _end_session(self, worker: Worker) -> None:
        worker.phase = Phase.WORKING
        worker.send(END)

    # --- deaths --------------------------------------------------------------------------------------------------

    def _lost(self, slot: Slot, worker: Worker, reason: str | None = None, blame: bool = True) -> None:
        """A worker process is gone: its files go back (or fail, the second time), and its slot goes on.
        `blame`: the death counts toward giving the device up (not when the pool killed it for a file's sake)."""
        if worker.gone:
            return
        was_ready, alone = worker.ready, self._dispatch.holds_retry(worker)
        worker.phase = Phase.GONE
        end_process(worker.process, grace=5.0)
        worker.conn.close()
        reason = reason or death_reason(worker.process.returncode)
        if worker.stats is not None:
            slot.past.append(worker.stats)
            worker.stats = None
        if not was_ready:
            why = slot.start_error.message if slot.start_error else reason
            slot.problem = f"{'a fresh worker ' if slot.ever_ready else ''}could not start: {why}"
            log.error("worker %s (%s): %s", slot.plan.name, slot.plan.detail, slot.problem)
            return
        held = self._dispatch.drop(worker)
        if self._life is not _Life.RUNNING or self._fatal is not None or self._dispatch.should_stop():
            if held:  # the run ends: no retry, no new worker
                log.warning("worker %s %s while stopping; %d file(s) left to rerun", slot.plan.name, reason, len(held))
            return
        for file in held:
            failed = self._dispatch.suspect(file, f"worker {slot.plan.name} {reason}")
            if failed is not None:
                self._out.append(failed)
        if blame and not alone:  # a death while it held one retried file alone is that file's doing
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

    # --- deadlines -------------------------------------------------------------------------------------------

    def _stop_hung_workers(self) -> None:
        """A worker that holds a file well past its deadline hangs in a stage that does not return: it is killed
        and a fresh worker starts in its place (the device is not blamed: a file is the cause)."""
        if self._life is not _Life.RUNNING:
            return
        now = time.monotonic()
        for slot in self._live_slots():
            worker = slot.worker
            assert worker is not None
            hung = [
                ticket
                for ticket, file in worker.in_flight.items()
                if file.deadline is not None
                and now > file.deadline.at + min(HANG_GRACE_SECONDS, file.deadline.seconds / 10)
            ]
            if hung:
                self._stop_hung(slot, worker, hung)

    def _stop_hung(self, slot: Slot, worker: Worker, hung: list[int]) -> None:
        """The files past their deadline are tried again, each alone in a worker (several share a batch: which
        one hangs is not known yet); one that hangs a worker when alone fails. The rest go back as they were."""
        if self._dispatch.holds_retry(worker):
            stage = f"in worker {slot.plan.name}, which was killed (a stage that did not return, twice)"
            for ticket in hung:
                file = self._dispatch.finished(worker, ticket)
                assert file.deadline is not None
                log.error("%s: %s", file.key, file.deadline.missed(stage))
                self._out.append(FileOutcome(file, error=file.deadline.missed(stage)))
        else:
            overdue = [worker.in_flight[ticket] for ticket in hung]
            held = self._dispatch.drop(worker)
            log.warning(
                "worker %s holds %s past the deadline: it hangs; killed, and each of them is tried again alone",
                slot.plan.name,
                ", ".join(file.key for file in overdue),
            )
            self._dispatch.retry_alone(overdue)
            self._dispatch.requeue([file for file in held if all(file is not late for late in overdue)])
        kill_process(worker.process)
        self._lost(slot, worker, "was killed: a file it held was past its deadline", blame=False)

    # --- the end ---------------------------------------------------------------------------------------------

    def _all_done(self) -> bool:
        if self._out:
            return False
        held = any(worker.in_flight for worker in self._live_workers())
        if self._life is _Life.STOPPING:
            return not held
        return self._dispatch.input_ended() and not self._dispatch.retries_waiting and not held

    def _live_slots(self) -> list[Slot]:
        return [slot for slot in self._slots if slot.live]

    def _live_workers(self) -> list[Worker]:
        return [slot.worker for slot in self._slots if slot.worker is not None and not slot.worker.gone]
