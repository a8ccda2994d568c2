"""The run report: what one run did, written to DEST/_runs/RUN_ID.json and summed up for people.

Realtime is one figure everywhere: audio seconds per wall second (`realtime_factor` 4.0 reads "4x realtime").
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, computed_field

from batch.common.errors import EXIT_ENVIRONMENT, EXIT_FILES_FAILED, EXIT_OK
from batch.run.manifest import RUNS_FOLDER, ErrorRecord, Record, encode

if TYPE_CHECKING:
    from batch.engine.gpu.oom import StageMemoryRecord
    from batch.engine.pipeline import PipelineStats
    from batch.storage import Store

REPORT_VERSION = 1


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def report_name(run_id: str) -> str:
    return f"{RUNS_FOLDER}/{run_id}.json"


def report_names(store: Store) -> list[str]:
    """The run reports in DEST (RUNS_FOLDER/RUN_ID.json, not in folders below it), oldest first: a run id starts
    with the UTC time its run started."""
    return sorted(name for name in store.list_names(RUNS_FOLDER, ".json") if name.count("/") == 1)


def prune_reports(store: Store, keep: int) -> list[str]:
    """Delete all but the newest `keep` run reports (0 keeps every one), each with its page beside it; the reports
    deleted, oldest first."""
    if keep <= 0:
        return []
    names = report_names(store)
    old = names[: max(0, len(names) - keep)]
    for name in old:
        store.delete(name.removesuffix(".json") + ".html")  # its page (report_pages.page_name), gone first
        store.delete(name)
    return old


class FailedFile(BaseModel):
    key: str
    error: ErrorRecord


class UntimedWords(BaseModel):
    key: str
    reason: str | None = None


class AsrFigures(BaseModel):
    """How full the ASR batches were: `batch_fill` is the mean number of speech chunks per batch; `detected`: the
    chunks whose language Whisper detected (batch.engine.asr.languages; 0 where that could change nothing)."""

    batches: int = 0
    items: int = 0
    batch_size: int = 0
    batch_fill: float | None = None
    detected: int = 0

    @classmethod
    def of(cls, stats: PipelineStats) -> AsrFigures:
        return cls(
            batches=stats.asr_batches,
            items=stats.asr_items,
            batch_size=stats.batch_size,
            batch_fill=stats.batch_fill,
            detected=stats.language_detections,
        )


class WorkerRecord(BaseModel):
    """One worker process of a run with --gpus or --workers (a slot: a fresh process replaces one that dies)."""

    name: str
    device: str
    detail: str
    threads: int
    state: str  # not started | starting | ready | exited | failed
    started: bool = True  # its models loaded at least once (it took part in the run)
    files: int = 0  # outcomes it handed back
    restarts: int = 0
    busy_seconds: float = 0.0
    batch_size: dict[str, int] = {}  # per stage: its latest batch's size (lower after an out-of-memory)
    oom_retries: dict[str, int] = {}  # per stage
    problem: str | None = None  # why it left the run


class QueueCounts(BaseModel):
    """Queue mode: the messages this run received, deleted (their files done), and made visible again."""

    received: int = 0
    deleted: int = 0
    returned: int = 0  # not finished when the run ended: visible again at once
    test_events: int = 0  # s3:TestEvent, deleted unprocessed
    unreadable: int = 0  # naming no S3 object: left for the redrive policy
    received_again: int = 0  # a message held by this run that came back to it: one receive, its old receipt void


class QualityCounts(BaseModel):
    """The hallucination guard over the run: segments dropped from the transcripts, and the files to review."""

    segments_dropped: int = 0
    segments_cut: int = 0  # loops cut to their first occurrence
    files_to_review: int = 0
    review: list[str] = []  # their keys (`whisperx-batch status --review` lists them with reasons)

    def add(self, key: str, quality: Mapping[str, Any]) -> None:
        self.segments_dropped += len(quality.get("dropped", []))
        self.segments_cut += len(quality.get("cut", []))
        if quality.get("review"):
            self.files_to_review += 1
            self.review.append(key)


class OtherSettings(BaseModel):
    """Files DEST held as done with other settings than this run's (a settings hash of its own)."""

    changed: list[str] = []  # done before this run started: a changed setting, so this run redoes them
    left: list[str] = []  # done by a run with other settings while this one ran: left as they are (counted skipped)

    def said(self) -> str | None:
        """The warning a person should read, or None."""
        if not self.changed and not self.left:
            return None
        return (
            f"DEST held {len(self.changed) + len(self.left)} files done with other settings: {len(self.changed)} "
            f"redone with this run's, {len(self.left)} left to a run with other settings running beside this "
            "one; if two jobs with different settings share this DEST, they redo each other's files at every "
            "run: give each its own --out"
        )


class RunReport(Record):
    report_version: int = REPORT_VERSION
    run_id: str
    started_at: str
    finished_at: str | None = None
    settings: dict[str, Any] = {}
    settings_hash: str | None = None
    device: str | None = None
    gpu_device: str | None = None  # the GPU a one-process run ran on (name, memory, UUID); workers say their own
    compute_type: str | None = None
    threads: int | None = None
    batch_size: int | None = None
    versions: dict[str, str] = {}
    shard: str | None = None
    succeeded: list[str] = []
    skipped: list[str] = []
    claimed_elsewhere: list[str] = []  # with --claim: files other workers took
    failed: list[FailedFile] = []
    # Not taken, not failed: DEST could not say whether they are done (their manifest could not be read, after
    # retries); the next run takes them. The run still goes to its end, with exit 3 so that it is retried.
    left_for_next_run: list[FailedFile] = []
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    model_load_seconds: float | None = None
    startup_seconds: float | None = None  # from the run's start to its first ASR batch (listing, decode, loading)
    model_seconds: float = 0.0  # time the models worked; the rest of the run they waited for input or output
    stage_seconds: dict[str, float] = {}  # per stage (decode, vad, asr, align, diarize, write...), summed over files
    asr: AsrFigures | None = None
    words_untimed: list[UntimedWords] = []
    alignment_models_loaded: list[str] = []
    gpu: dict[str, Any] = {}
    workers: list[WorkerRecord] = []  # with --gpus or --workers
    error: ErrorRecord | None = None  # what stopped the run before its end
    stopped_by_signal: int | None = None
    exit_code: int | None = None  # set when the run ends, whatever ended it
    queue: QueueCounts | None = None  # queue mode (--queue)
    quality: QualityCounts | None = None  # the hallucination guard (absent with --hallucinations off)
    other_settings: OtherSettings = OtherSettings()  # files DEST held as done with other settings

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counts(self) -> dict[str, int]:
        return {
            "succeeded": len(self.succeeded),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "claimed_elsewhere": len(self.claimed_elsewhere),
        }

    @computed_field  # type: ignore[prop-decorator]
    @property
    def stage_busy_share(self) -> dict[str, float]:
        """Each stage's seconds over the run's wall seconds: which stage the run spends its time in. Stages that
        run side by side (decoding ahead, on a GPU the VAD and finishing beside the ASR) can add up to more than 1."""
        if not self.wall_seconds:
            return {}
        return {stage: round(seconds / self.wall_seconds, 4) for stage, seconds in self.stage_seconds.items()}

    def add_stage_seconds(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + seconds, 4)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def audio_hours(self) -> float:
        return round(self.audio_seconds / 3600, 4)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def realtime_factor(self) -> float | None:
        """Audio seconds transcribed per wall second."""
        return round(self.audio_seconds / self.wall_seconds, 3) if self.audio_seconds and self.wall_seconds else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model_busy_share(self) -> float | None:
        """The share of the wall time after start-up (model loading) that the models were working; with several
        workers, their mean."""
        started = sum(1 for w in self.workers if w.started)
        working_time = (self.wall_seconds - (self.model_load_seconds or 0.0)) * max(1, started)
        if not self.model_seconds or working_time <= 0:
            return None
        return round(min(1.0, self.model_seconds / working_time), 4)

    def encode(self) -> bytes:
        """The report as JSON; figures not known (no model loaded, no exit yet) are written as null."""
        return encode(self.model_dump(mode="json"))

    def outcome_code(self) -> int:
        """The exit code of a run that went to its end: files left for the next run make it 3 (retry it)."""
        if self.left_for_next_run:
            return EXIT_ENVIRONMENT
        return EXIT_FILES_FAILED if self.failed else EXIT_OK

    def summary(self) -> str:
        """Counts, hours and speed, then each failed file; what stopped the run is `error`, said on its own."""
        speed = f", {self.realtime_factor:.1f}x realtime" if self.realtime_factor else ""
        lines = [
            f"whisperx-batch run {self.run_id}: {len(self.succeeded)} succeeded, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed; {self.audio_hours:.3f} audio hours in {self.wall_seconds:.1f} s{speed}"
        ]
        lines += [f"  failed {f.key}: {f.error.type}: {f.error.message}" for f in self.failed]
        lines += [f"  left for the next run {f.key}: {f.error.message}" for f in self.left_for_next_run]
        lines += [f"  words not timed in {w.key}: {w.reason}" for w in self.words_untimed]
        if self.claimed_elsewhere:
            lines.append(f"  {len(self.claimed_elsewhere)} files were claimed by other workers")
        if (other_settings := self.other_settings.said()) is not None:
            lines.append(f"  {other_settings}")
        if self.quality is not None and (self.quality.segments_dropped or self.quality.files_to_review):
            q = self.quality
            lines.append(
                f"  hallucinations: {q.segments_dropped} segments dropped; {q.files_to_review} files to review "
                "(whisperx-batch status --review)"
            )
        if self.queue is not None:
            q = self.queue
            lines.append(
                f"  queue: {q.received} messages received, {q.deleted} deleted, {q.returned} made visible again"
            )
        if self.workers:
            lines.append("  workers: " + ", ".join(f"{w.name} {w.files} files" for w in self.workers))
        lines += [f"  worker {w.name} ({w.detail}): {w.problem}" for w in self.workers if w.problem]
        return "\n".join(lines)

    @classmethod
    def decode(cls, raw: bytes | None) -> RunReport | None:
        import json

        from pydantic import ValidationError

        if raw is None:
            return None
        try:
            document = json.loads(raw)
            if isinstance(document, dict):  # computed figures are derived again, never read
                for name in ("counts", "audio_hours", "realtime_factor", "model_busy_share"):
                    document.pop(name, None)
            return cls.model_validate(document)
        except (ValidationError, ValueError):
            return None


@dataclass
class StageTotals:
    """One stage's memory records (batch.engine.gpu.oom) summed over a run, for the report's `gpu`."""

    runs: int = 0
    oom_retries: int = 0
    batch_size_used_min: int | None = None
    batch_size_used_max: int | None = None
    free_bytes_min: int | None = None
    failed: int = 0

    def add(self, record: StageMemoryRecord) -> None:
        self.runs += 1
        self.oom_retries += record.oom_retries
        self.batch_size_used_min = _least(self.batch_size_used_min, record.batch_size_used)
        self.batch_size_used_max = max(self.batch_size_used_max or 0, record.batch_size_used)
        self.free_bytes_min = _least(self.free_bytes_min, record.free_bytes)
        self.failed += record.failed


def _least(current: int | None, new: int | None) -> int | None:
    if new is None:
        return current
    return new if current is None else min(current, new)


def sum_records(records: Iterable[StageMemoryRecord]) -> dict[str, dict[str, Any]]:
    """Per stage: runs, out-of-memory retries, smallest and largest batch size used, least free memory seen,
    and how many runs failed for want of memory."""
    totals: dict[str, StageTotals] = {}
    for record in records:
        totals.setdefault(record.stage, StageTotals()).add(record)
    return {stage: asdict(total) for stage, total in totals.items()}
