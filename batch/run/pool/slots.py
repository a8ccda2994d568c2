"""A slot of the pool (one planned worker and the processes that fill it in turn), and the figures the run
report and the metrics give of it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batch.common.errors import EnvironmentProblem
from batch.common.logs import file_context
from batch.engine.pipeline import PipelineStats
from batch.run.pool.messages import ErrorInfo, StatsUpdate
from batch.run.pool.plan import WorkerSlot
from batch.run.pool.processes import Worker


@dataclass(eq=False)
class Slot:
    plan: WorkerSlot
    worker: Worker | None = None
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

    def take(self, worker: Worker, update: StatsUpdate) -> None:
        worker.stats = update.stats
        for record in update.new_records:
            self.batch_size[record.stage] = record.batch_size_used
            self.oom_retries[record.stage] = self.oom_retries.get(record.stage, 0) + record.oom_retries

    def stats(self) -> list[PipelineStats]:
        current = self.worker.stats if self.worker is not None else None
        return [*self.past, current] if current is not None else list(self.past)

    def figures(self) -> dict[str, Any]:
        """What the run report and the metrics say of one worker."""
        worker = self.worker
        state = "exited" if worker is not None else "not started"  # not started: no file needed a model
        if self.problem is not None:
            state = "failed"
        elif worker is not None and not worker.gone:
            state = "ready" if worker.ready else "starting"
        figures: dict[str, Any] = {
            "name": self.plan.name,
            "device": self.plan.device,
            "detail": self.plan.detail,
            "threads": self.plan.threads,
            "state": state,
            "started": self.ever_ready,
            "files": self.files,
            "restarts": self.restarts,
            "busy_seconds": round(sum(stats.busy_seconds for stats in self.stats()), 3),
            "batch_size": dict(self.batch_size),
            "oom_retries": dict(self.oom_retries),
        }
        if self.problem is not None:
            figures["problem"] = self.problem
        return figures


def merged_stats(slots: list[Slot], batch_size: int, records: list[Any]) -> PipelineStats:
    """The pool's figures as one pipeline's: the workers load side by side, and their work adds up."""
    merged = PipelineStats(batch_size=batch_size, gpu_records=list(records))
    every = [stats for slot in slots for stats in slot.stats()]
    loads = [stats.load_seconds for stats in every if stats.load_seconds is not None]
    merged.load_seconds = max(loads) if loads else None
    firsts = [stats.first_batch_at for stats in every if stats.first_batch_at is not None]
    merged.first_batch_at = min(firsts) if firsts else None  # perf_counter: one clock for every process
    merged.busy_seconds = sum(stats.busy_seconds for stats in every)
    merged.asr_batches = sum(stats.asr_batches for stats in every)
    merged.asr_items = sum(stats.asr_items for stats in every)
    merged.language_detections = sum(stats.language_detections for stats in every)
    merged.alignment_models_loaded = sorted({name for stats in every for name in stats.alignment_models_loaded})
    merged.workers = [slot.figures() for slot in slots]
    return merged


def relay_log(slot: Slot, level: int, name: str, message: str, key: str | None) -> None:
    """A worker's log record, written by this process's log as its own, marked with the worker's name."""
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return
    text, fields = f"[{slot.plan.name}] {message}", {"worker": slot.plan.name}
    record = logger.makeRecord(name, level, "", 0, text, (), None, extra={"fields": fields})
    with file_context(key) if key else contextlib.nullcontext():
        logger.handle(record)


def refuse_to_go_on_without_workers(slots: Sequence[Slot]) -> None:
    """With no worker live in any slot, the run stops: the same refusal everywhere is raised as one process would
    raise it, else an EnvironmentProblem saying what became of each slot."""
    if any(slot.live for slot in slots):
        return
    problems = "; ".join(f"{slot.plan.name}: {slot.problem or 'stopped'}" for slot in slots)
    if any(slot.ever_ready for slot in slots):
        raise EnvironmentProblem(f"every worker has stopped: {problems}")
    errors = [slot.start_error for slot in slots]
    first = errors[0]
    if first is not None and first.exit_code is not None and all(error == first for error in errors):
        raise first.rebuilt()
    raise EnvironmentProblem(f"no worker could start: {problems}")
