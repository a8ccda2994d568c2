"""What travels between the pool and its workers: plain values, never exception objects or clocks.

parent -> worker: FILE(Task) | END (no more for now: finish what you hold) | STOP (finish only what is fully
                  read, as after a signal) | QUIT
worker -> parent: READY(load seconds) | START_FAILED(ErrorInfo) | WANT | DONE(Done, StatsUpdate)
                  | FLUSHED(StatsUpdate) | FATAL(ErrorInfo: a BatchError stops the run; a lost CUDA context, after
                  which the worker exits, and a defect are that worker's death)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch.common.errors import BatchError, ForeignBatchError, ForeignError, describe, is_file_problem
from batch.engine.gpu.oom import is_context_lost
from batch.engine.pipeline import Deadline, DecodedFile, FileOutcome, PipelineStats, Stopwatch

FILE, END, STOP, QUIT = "file", "end", "stop", "quit"
READY, START_FAILED, WANT, DONE, FLUSHED, FATAL = "ready", "start_failed", "want", "done", "flushed", "fatal"
LOG = "log"


@dataclass(frozen=True)
class ErrorInfo:
    type_name: str
    message: str
    exit_code: int | None = None  # set for a BatchError: the run stops with it
    file_problem: bool = False  # a FileFailure: it fails its file alone, however many in a row
    context_lost: bool = False  # a sticky CUDA error (CudaContextLost): not the run's end, but its process's

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        record = describe(exc)  # secrets already taken out
        exit_code = exc.exit_code if isinstance(exc, BatchError) else None
        return cls(record["type"], record["message"], exit_code, is_file_problem(exc), is_context_lost(exc))

    @property
    def headline(self) -> str:
        return (self.message.splitlines() or [self.type_name])[0]

    def rebuilt(self) -> Exception:
        if self.exit_code is not None:
            return ForeignBatchError(self.type_name, self.message, self.exit_code)
        return ForeignError(self.type_name, self.message, self.file_problem)


@dataclass
class Task:
    """A decoded file handed to a worker; `ticket` names this hand-over (two channels of a file share a key)."""

    ticket: int
    key: str
    audio: np.ndarray
    timings: dict[str, float]
    deadline: Deadline | None = None

    def decoded(self) -> DecodedFile:
        stopwatch = Stopwatch()
        stopwatch.timings = dict(self.timings)
        return DecodedFile(self.key, self.audio, stopwatch, deadline=self.deadline)


@dataclass
class Done:
    """A file's outcome, as the worker's pipeline made it, without the audio."""

    ticket: int
    fields: dict[str, Any]  # FileOutcome's fields but file and error
    error: ErrorInfo | None
    added_timings: dict[str, float]  # what the worker's stages added to the file's timings

    @classmethod
    def of(cls, ticket: int, outcome: FileOutcome, timings_before: dict[str, float]) -> Done:
        fields = {
            item.name: getattr(outcome, item.name)
            for item in dataclasses.fields(FileOutcome)
            if item.name not in ("file", "error")
        }
        after = outcome.file.stopwatch.timings
        added = {stage: seconds - timings_before.get(stage, 0.0) for stage, seconds in after.items()}
        error = ErrorInfo.of(outcome.error) if outcome.error is not None else None
        return cls(ticket, fields, error, {stage: seconds for stage, seconds in added.items() if seconds > 0})

    def outcome(self, file: DecodedFile) -> FileOutcome:
        for stage, seconds in self.added_timings.items():
            file.stopwatch.add(stage, seconds)
        error = self.error.rebuilt() if self.error is not None else None
        return FileOutcome(file, error=error, **self.fields)


@dataclass
class StatsUpdate:
    """The worker's pipeline figures so far, and the GPU memory records added since its last update."""

    stats: PipelineStats
    new_records: list[Any] = field(default_factory=list)
