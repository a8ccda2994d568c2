"""`whisperx-batch status DEST`: what the manifests in DEST say, summed up for a person or a machine.

Only finished work is counted: a file is succeeded or failed when its manifest says so. The run reports
folder and hidden files (temporary files of a write in progress) are never read as manifests. DEST is a local
folder or an s3:// prefix.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from batch.common.concurrency import ordered_map
from batch.common.errors import EXIT_FILES_FAILED, EXIT_OK, redact
from batch.run.manifest import Manifest, absent_outputs, manifest_name, to_review
from batch.run.report import RunReport, report_names
from batch.run.report_pages import listed, manifest_names, open_dest
from batch.storage import Store

# Manifests and reports are read this many at once (on S3 each read is a request), this many ahead of the count.
READ_WORKERS = 16
READ_AHEAD = 64

Result = TypeVar("Result")

# The counts of a run report that the summary line always shows; any other non-zero count follows them.
_MAIN_COUNTS = ("succeeded", "skipped", "failed")


@dataclass(frozen=True)
class Failure:
    key: str
    type: str
    message: str
    finished_at: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Inconsistent:
    """A manifest that reads but that a run would not take as done: the run redoes its file."""

    manifest: str
    reason: str


@dataclass(frozen=True)
class ToReview:
    """A file the hallucination guard marked for a person to look at (its manifest's quality.review)."""

    key: str
    reasons: list[str]
    dropped: int = 0  # segments dropped from its transcript (kept in the manifest)
    confidence: float | None = None


@dataclass
class DestStatus:
    """Counts, audio hours and failures of one DEST, plus its latest run report."""

    dest: str
    succeeded: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    inconsistent: list[Inconsistent] = field(default_factory=list)
    review: list[ToReview] = field(default_factory=list)
    segments_dropped: int = 0
    last_run: dict[str, Any] | None = None
    runs: int = 0

    @property
    def files(self) -> int:
        return self.succeeded + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "files": self.files,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "audio_seconds": round(self.audio_seconds, 3),
            "audio_hours": round(self.audio_seconds / 3600, 4),
            "failures_by_type": dict(Counter(failure.type for failure in self.failures).most_common()),
            "failures": [asdict(failure) for failure in self.failures],
            "unreadable_manifests": self.unreadable,
            "inconsistent_manifests": [asdict(item) for item in self.inconsistent],
            "segments_dropped": self.segments_dropped,
            "files_to_review": len(self.review),
            "runs": self.runs,
            "last_run": self.last_run,
        }

    def review_dict(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "files_to_review": len(self.review),
            "review": [asdict(item) for item in self.review],
        }


def collect_status(dest: str | os.PathLike[str] | None, s3_endpoint_url: str | None = None) -> DestStatus:
    """Read every manifest under DEST (a folder or an s3:// prefix). EnvironmentProblem when DEST cannot be
    read (exit 3), ConfigError when no DEST is given (exit 2)."""
    store = open_dest(os.fspath(dest) if dest else None, s3_endpoint_url)
    status = DestStatus(dest=store.location)
    for name, inspected in _each(partial(_inspect, store), listed(store, manifest_names)):
        _count(status, name, *inspected)
    stored = _each(partial(_read, store), listed(store, report_names))
    reports = [report for report in (RunReport.decode(raw) for _, raw in stored) if report is not None]
    reports.sort(key=lambda report: (report.started_at, report.run_id))
    status.runs = len(reports)
    status.last_run = _summarize_run(reports[-1]) if reports else None
    return status


def _each(read: Callable[[str], Result], names: list[str]) -> Iterator[tuple[str, Result]]:
    """(name, read(name)) for each name, in the order given; READ_WORKERS at once (each is a request on S3)."""
    for name, future in ordered_map(read, names, workers=READ_WORKERS, ahead=READ_AHEAD):
        yield name, future.result()


def _read(store: Store, name: str) -> bytes | None:
    try:
        return store.read_bytes(name)
    except OSError:  # a file this user cannot read: listed as unreadable
        return None


def _inspect(store: Store, name: str) -> tuple[Manifest | None, str | None]:
    """The manifest at `name` (None: unreadable or not a manifest), and why a run would not take it as done."""
    manifest = Manifest.decode(_read(store, name))
    if manifest is None:
        return None, None
    if manifest_name(manifest.input.key) != name:
        return manifest, f"written for another file ({manifest.input.key})"
    if manifest.status == "succeeded":
        missing = absent_outputs(manifest, store)
        if not manifest.outputs or missing:
            return manifest, "succeeded, but its outputs are missing: " + (", ".join(missing) or "none listed")
    return manifest, None


def _count(status: DestStatus, name: str, manifest: Manifest | None, problem: str | None) -> None:
    if manifest is None:
        status.unreadable.append(name)
        return
    if problem is not None:
        status.inconsistent.append(Inconsistent(name, problem))
        return
    if manifest.status == "succeeded":
        status.succeeded += 1
        status.audio_seconds += manifest.audio_seconds or 0.0
        quality = manifest.quality or {}
        status.segments_dropped += len(quality.get("dropped", []))
        if to_review(manifest):  # the guard asked for a person, and no one marked it reviewed since
            item = ToReview(manifest.input.key, list(quality.get("reasons", [])), len(quality.get("dropped", [])))
            status.review.append(replace(item, confidence=quality.get("confidence")))
        return
    status.failed += 1
    error = manifest.error
    status.failures.append(
        Failure(
            key=manifest.input.key,
            type=error.type if error else "unknown",
            message=redact(error.message) if error else "",
            finished_at=manifest.finished_at,
            run_id=manifest.run_id,
        )
    )


def _summarize_run(report: RunReport) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "counts": report.counts,
        "audio_hours": report.audio_hours,
        "wall_seconds": report.wall_seconds,
        "exit_code": report.exit_code,
        "error": {"type": report.error.type, "message": redact(report.error.message)} if report.error else None,
    }


def status_exit_code(status: DestStatus) -> int:
    """As for `run`: 1 when some files failed, and also when some manifests are damaged (unreadable or
    inconsistent) or the latest run did not end cleanly (stopped by an error or a signal), so a scheduler that
    alerts on it hears of a job that dies every night."""
    last_exit = status.last_run["exit_code"] if status.last_run else EXIT_OK
    damaged = status.unreadable or status.inconsistent
    return EXIT_FILES_FAILED if status.failed or damaged or last_exit not in (EXIT_OK, EXIT_FILES_FAILED) else EXIT_OK


def to_json(status: DestStatus, review: bool = False) -> str:
    return json.dumps(status.review_dict() if review else status.to_dict(), ensure_ascii=False, indent=2)


def format_review(status: DestStatus) -> str:
    """`status --review`: each file a person should look at, with the reasons (docs/outputs.md#quality)."""
    lines = [f"{status.dest}: {len(status.review)} of {status.succeeded} files to review"]
    for item in status.review:
        dropped = f"; {item.dropped} segments dropped" if item.dropped else ""
        lines.append(f"  {item.key}: {', '.join(item.reasons).replace('_', ' ')}{dropped}")
    return "\n".join(lines)


def format_status(status: DestStatus) -> str:
    """The few lines a person reads: counts and hours, the latest run, then each failure with its reason."""
    lines = [
        f"{status.dest}: {status.files} files: {status.succeeded} succeeded, {status.failed} failed; "
        f"{status.audio_seconds / 3600:.3f} audio hours transcribed"
    ]
    if status.last_run:
        lines.append(_format_run(status.last_run, status.runs))
    if status.unreadable:
        lines.append(
            f"unreadable manifests, redone by the next run ({len(status.unreadable)}): " + ", ".join(status.unreadable)
        )
    if status.inconsistent:
        lines.append(f"inconsistent manifests, redone by the next run ({len(status.inconsistent)}):")
        lines += [f"  {item.manifest}: {item.reason}" for item in status.inconsistent]
    if status.review or status.segments_dropped:
        lines.append(
            f"hallucinations: {status.segments_dropped} segments dropped; {len(status.review)} files to review "
            "(status --review lists them)"
        )
    if status.failures:
        lines.append(f"failed ({status.failed}):")
        lines += [f"  {f.key}: {f.type}: {f.message}" for f in status.failures]
    return "\n".join(lines)


def _format_run(run: dict[str, Any], runs: int) -> str:
    counts = run.get("counts") or {}
    shown = [*_MAIN_COUNTS, *[name for name, count in counts.items() if count and name not in _MAIN_COUNTS]]
    counted = ", ".join(f"{counts.get(name, 0)} {name.replace('_', ' ')}" for name in shown)
    outcome = f"exit {run['exit_code']}" if run.get("exit_code") is not None else "stopped"
    if run.get("error"):
        outcome += f": {run['error']['message']}"
    return f"last run {run.get('run_id')} ({runs} in all), finished {run.get('finished_at')}: {counted}; {outcome}"
