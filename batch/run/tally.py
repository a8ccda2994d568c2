"""Counting written files into the run report, and telling a broken machine from a folder of broken files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from batch.common.errors import DEST_UNUSABLE_ERRNOS, DestPathBlocked, EnvironmentProblem
from batch.common.logs import file_context
from batch.run.manifest import ErrorRecord
from batch.run.outputs import DoneAlongside, LeftToOtherSettings, NotRecorded, Written
from batch.run.page_facts import FileFacts, facts_of, failure_facts
from batch.run.report import FailedFile, QualityCounts, RunReport

log = logging.getLogger(__name__)

# This many files in a row failing with the same unexpected error type stops the run (exit 3). Failures that
# are their file's own (ErrorRecord.file_problem) never do: a folder of broken files is possible.
BROKEN_AFTER_FAILURES = 3


@dataclass(frozen=True)
class FileEvent:
    """One file counted in the report: what progress bars and log lines are made of."""

    key: str
    status: str  # succeeded | failed | skipped | claimed_elsewhere | left_for_next_run
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    error_type: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage (decode, vad, asr, ...)
    segments_dropped: int = 0  # by the hallucination guard
    review: bool = False  # the guard marked the file for review

    def fields(self) -> dict[str, object]:
        """The event as a JSON log line's fields, for a log system to count and alert on."""
        realtime = round(self.audio_seconds / self.wall_seconds, 3) if self.wall_seconds else None
        return {
            "event": "file",
            "status": self.status,
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "realtime_factor": realtime,
            "error_type": self.error_type,
        }


class Tally:
    """Counts each written file once, in the order written; raises EnvironmentProblem when the same unexpected
    error has failed several files in a row (the run stops, exit 3, so the scheduler retries elsewhere)."""

    def __init__(self, report: RunReport, on_file: Callable[[FileEvent], None]):
        self.report, self.on_file = report, on_file
        self.in_a_row = 0
        self.last_failure: str | None = None
        self.last_message = ""
        self.last_was_file_problem = False
        self.dest_unusable: str | None = None  # DEST full or read-only: no later file could be written either
        self.files: list[FileFacts] = []  # each file succeeded or failed, for the run's report page

    def count(self, written: list[Written], check: bool = True) -> None:
        for item in written:
            with file_context(item.key):
                self._count_one(item)
        if check:
            self.check_for_broken_environment()

    def _count_one(self, item: Written) -> None:
        manifest = item.manifest
        if manifest is not None and manifest.status == "succeeded":
            self.in_a_row, self.last_failure = 0, None
            self.report.succeeded.append(item.key)
            self.files.append(facts_of(manifest))
            audio_seconds, wall = manifest.audio_seconds or 0.0, sum(manifest.timings.values())
            self.report.audio_seconds += audio_seconds
            quality = manifest.quality or {}
            event = FileEvent(
                item.key,
                "succeeded",
                audio_seconds,
                wall,
                timings=dict(manifest.timings),
                segments_dropped=len(quality.get("dropped", [])),
                review=bool(quality.get("review")),
            )
            self.report.add_stage_seconds(manifest.timings)
            if manifest.quality is not None:
                self.report.quality = self.report.quality or QualityCounts()
                self.report.quality.add(item.key, manifest.quality)
            log.info(
                "succeeded: %.1f s of audio in %.1f s (%s)",
                audio_seconds,
                wall,
                manifest.language or "no speech",
                extra={"fields": event.fields()},
            )
            self.on_file(event)
            return
        if isinstance(item.error, LeftToOtherSettings):
            self._left_to_other_settings(item.key, item.error)
            return
        if isinstance(item.error, DoneAlongside):
            self.report.skipped.append(item.key)
            log.info("left as it is: %s", item.error)
            self.on_file(FileEvent(item.key, "skipped"))
            return
        if manifest is None:
            error = unrecorded_error(item.error)
        else:
            assert manifest.error is not None
            error = manifest.error
        self.in_a_row = self.in_a_row + 1 if error.type == self.last_failure else 1
        self.last_failure, self.last_message = error.type, error.message
        self.last_was_file_problem = bool(error.file_problem)
        if isinstance(item.error, OSError) and item.error.errno in DEST_UNUSABLE_ERRNOS:
            self.dest_unusable = item.error.strerror or error.message
        self.report.failed.append(FailedFile(key=item.key, error=error))
        self.files.append(facts_of(manifest) if manifest is not None else failure_facts(item.key, error))
        timings = dict(manifest.timings) if manifest else {}
        audio_seconds = (manifest.audio_seconds or 0.0) if manifest else 0.0
        event = FileEvent(item.key, "failed", audio_seconds, sum(timings.values()), error.type, timings)
        self.report.add_stage_seconds(timings)
        log.warning("failed: %s: %s", error.type, error.message, extra={"fields": event.fields()})
        self.on_file(event)

    def _left_to_other_settings(self, key: str, left: LeftToOtherSettings) -> None:
        """A run with other settings finished the file while this one did it: counted skipped, and said."""
        self.report.skipped.append(key)
        self.report.other_settings.left.append(key)
        log.warning(
            "left as it is: %s while this run was running (two runs with different settings on one DEST?)", left
        )
        self.on_file(FileEvent(key, "skipped"))

    def check_for_broken_environment(self) -> None:
        """The same unexpected error on several files in a row is the machine's, not the files'; a DEST that
        is full or read-only stops the run at the first file it refuses."""
        if self.dest_unusable is not None:
            raise EnvironmentProblem(
                f"DEST cannot take the outputs: {self.dest_unusable}; files not written are redone by the next run"
            )
        if self.in_a_row < BROKEN_AFTER_FAILURES or self.last_was_file_problem:
            return
        raise EnvironmentProblem(
            f"the last {self.in_a_row} files failed with {self.last_failure} ({self.last_message}); "
            "stopping: the fault looks like the machine's (device, DEST), not the files'"
        )

    def check_at_end(self) -> None:
        """A run that went to its end with nothing succeeded and every failure a fault not of its file (fewer
        files than the in-a-row rule needs) is the environment's too: exit 3, not 1."""
        failed = self.report.failed
        if self.report.succeeded or not failed or any(f.error.file_problem for f in failed):
            return
        raise EnvironmentProblem(
            f"every file failed, none for a reason of its own (the last: {self.last_failure}: {self.last_message}); "
            "the fault looks like the machine's or the stores' (access, network, disk, a model), not the files'"
        )


def unrecorded_error(error: BaseException | None) -> ErrorRecord:
    """The report's record of a file that got no manifest: a fault not its own (NotRecorded), a path blocked in
    DEST, or DEST refusing its outputs or manifest (never the file's own fault)."""
    if isinstance(error, NotRecorded):
        record = ErrorRecord.of(error.cause)
        record.message = f"not the file's fault, so no manifest (a later run does it): {record.message}"
        return record
    record = ErrorRecord.of(error or RuntimeError("unknown"))
    if not isinstance(error, DestPathBlocked):
        record.message = f"DEST did not take its outputs or manifest (a later run does the file): {record.message}"
        record.file_problem = False
    return record
