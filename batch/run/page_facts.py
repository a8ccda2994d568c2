"""What the report page shows of one file: a few facts taken from its manifest (or its failure), kept small so a
run of many files keeps them all in memory and a page of 10,000 files stays a few MB."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batch.common.errors import redact
from batch.run.manifest import ErrorRecord, Manifest

GIB = 1024**3


@dataclass(frozen=True)
class StageMemory:
    """One stage of one file on a GPU: the batch size that ran and the free memory before it (manifest `gpu`)."""

    batch_size: int
    free_gib: float | None = None
    total_gib: float | None = None


@dataclass(frozen=True)
class FileFacts:
    key: str
    status: str  # succeeded | failed | skipped | claimed_elsewhere | left_for_next_run
    audio_seconds: float | None = None
    wall_seconds: float | None = None
    language: str | None = None
    speakers: int | None = None
    review: tuple[str, ...] = ()  # the guard's reasons, when it marked the file for review
    failure_type: str | None = None
    failure: str | None = None  # the reason, secrets redacted
    finished_at: str | None = None
    gpu: dict[str, StageMemory] = field(default_factory=dict)

    @property
    def realtime_factor(self) -> float | None:
        if not self.audio_seconds or not self.wall_seconds:
            return None
        return self.audio_seconds / self.wall_seconds

    def row(self) -> list[Any]:
        """The file's row of the page's table (an array, not an object: 10,000 of them stay small)."""
        rtf = self.realtime_factor
        return [
            self.key,
            self.status,
            None if self.audio_seconds is None else round(self.audio_seconds, 1),
            None if rtf is None else round(rtf, 2),
            self.language,
            self.speakers,
            ", ".join(reason.replace("_", " ") for reason in self.review),
            self.failure,
        ]


ROW_COLUMNS = ("file", "status", "duration (s)", "realtime (x)", "language", "speakers", "review", "failure")


def facts_of(manifest: Manifest) -> FileFacts:
    """The facts of a file from its manifest (succeeded or failed)."""
    quality = manifest.quality or {}
    error = manifest.error
    return FileFacts(
        key=manifest.input.key,
        status=manifest.status,
        audio_seconds=manifest.audio_seconds,
        wall_seconds=sum(manifest.timings.values()) or None,
        language=manifest.language,
        speakers=None if manifest.speakers is None else len(manifest.speakers),
        review=tuple(quality.get("reasons", [])) if quality.get("review") else (),
        failure_type=error.type if error else ("unknown" if manifest.status == "failed" else None),
        failure=_reason(error) if error else None,
        finished_at=manifest.finished_at,
        gpu=_stage_memory(manifest.gpu or {}) if on_gpu(manifest.device) else {},
    )


def on_gpu(device: str | None) -> bool:
    """Whether a file ran on a GPU: on the CPU its manifest still has the batch planner's records (`gpu`)."""
    return bool(device) and str(device).startswith("cuda")


def failure_facts(key: str, error: ErrorRecord) -> FileFacts:
    """A file that failed without a manifest of its own (DEST refused it, a fault not the file's)."""
    return FileFacts(key=key, status="failed", failure_type=error.type, failure=_reason(error))


def _reason(error: ErrorRecord) -> str:
    return f"{error.type}: {redact(error.message)}"


def _stage_memory(gpu: dict[str, dict[str, Any]]) -> dict[str, StageMemory]:
    stages = {}
    for stage, record in gpu.items():
        if not isinstance(record, dict) or not isinstance(record.get("batch_size_used"), int):
            continue
        stages[stage] = StageMemory(
            record["batch_size_used"], _gib(record.get("free_bytes")), _gib(record.get("total_bytes"))
        )
    return stages


def _gib(value: Any) -> float | None:
    return round(value / GIB, 2) if isinstance(value, int | float) else None
