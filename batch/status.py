"""`whisperx-batch status DEST`: what the manifests in DEST say, summed up for a person or a machine.

Only finished work is counted: a file is succeeded or failed when its manifest says so. The run reports
folder and hidden files (temporary files of a write in progress) are never read as manifests. DEST is a local
folder or an s3:// prefix.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batch.errors import EXIT_FILES_FAILED, EXIT_OK, ConfigError, EnvironmentProblem, redact
from batch.manifest import MANIFEST_SUFFIX, RUNS_FOLDER

# The counts of a run report that the summary line always shows; any other non-zero count follows them.
_MAIN_COUNTS = ("succeeded", "skipped", "failed")


@dataclass(frozen=True)
class Failure:
    key: str
    type: str
    message: str
    finished_at: str | None = None
    run_id: str | None = None


@dataclass
class DestStatus:
    """Counts, audio hours and failures of one DEST, plus its latest run report."""

    dest: str
    succeeded: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
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
            "runs": self.runs,
            "last_run": self.last_run,
        }


class LocalManifests:
    """DEST as a local folder: names relative to it, in POSIX form."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.label = str(self.root)
        if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
            raise EnvironmentProblem(f"DEST is not a readable folder: {self.root}")

    def manifest_names(self) -> list[str]:
        """Every KEY.manifest.json: not in the top-level runs folder, not hidden, not in hidden folders."""
        found = []
        for folder, subfolders, names in os.walk(self.root):
            top = Path(folder) == self.root
            subfolders[:] = [n for n in subfolders if not n.startswith(".") and not (top and n == RUNS_FOLDER)]
            relative = Path(folder).relative_to(self.root)
            found += [(relative / n).as_posix() for n in names if n.endswith(MANIFEST_SUFFIX) and not n.startswith(".")]
        return sorted(found)

    def report_names(self) -> list[str]:
        folder = self.root / RUNS_FOLDER
        names = folder.glob("*.json") if folder.is_dir() else []
        return [f"{RUNS_FOLDER}/{path.name}" for path in names if not path.name.startswith(".")]

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except OSError:
            return None


class S3Manifests:
    """DEST as s3://bucket/prefix, listed page by page; hidden keys are skipped as in folders."""

    def __init__(self, url: str, endpoint_url: str | None):
        from batch.s3 import S3Dest, S3Source, make_client

        client = make_client(endpoint_url)
        self.label = url
        self._listing = S3Source(url, client)
        self._objects = S3Dest(url, client)

    def manifest_names(self) -> list[str]:
        return self._names(include=(f"*{MANIFEST_SUFFIX}",), exclude=(f"{RUNS_FOLDER}/*",))

    def report_names(self) -> list[str]:
        return [name for name in self._names(include=(f"{RUNS_FOLDER}/*.json",)) if name.count("/") == 1]

    def read(self, name: str) -> bytes | None:
        return self._objects.read_bytes(name)

    def _names(self, include: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
        from batch.s3 import describe_s3_error

        try:
            return [item.key for item in self._listing.list(include, exclude)]
        except Exception as exc:  # botocore's errors: credentials, bucket, network
            raise EnvironmentProblem(f"DEST {self.label} cannot be listed: {describe_s3_error(exc)}") from None


def collect_status(dest: str | os.PathLike[str] | None, s3_endpoint_url: str | None = None) -> DestStatus:
    """Read every manifest under DEST (a folder or an s3:// prefix). EnvironmentProblem when DEST cannot be
    read (exit 3), ConfigError when no DEST is given (exit 2)."""
    if not dest:
        raise ConfigError("out", "missing: give DEST, or `out` in the config file or WHISPERX_BATCH_OUT")
    location = os.fspath(dest)
    store = S3Manifests(location, s3_endpoint_url) if location.startswith("s3://") else LocalManifests(location)
    status = DestStatus(dest=store.label)
    for name in store.manifest_names():
        _count(status, name, _parse(store.read(name)))
    reports = [report for report in map(_parse, map(store.read, store.report_names())) if report]
    reports = sorted(
        (report for report in reports if report.get("run_id")),
        key=lambda report: (str(report.get("started_at") or ""), str(report["run_id"])),
    )
    status.runs = len(reports)
    status.last_run = _summarize_run(reports[-1]) if reports else None
    return status


def _count(status: DestStatus, name: str, manifest: dict[str, Any] | None) -> None:
    state = manifest.get("status") if manifest else None
    if manifest is None or state not in ("succeeded", "failed"):
        status.unreadable.append(name)
        return
    if state == "succeeded":
        status.succeeded += 1
        status.audio_seconds += float(manifest.get("audio_seconds") or 0.0)
        return
    status.failed += 1
    error = manifest.get("error") or {}
    key = (manifest.get("input") or {}).get("key") or name.removesuffix(MANIFEST_SUFFIX)
    status.failures.append(
        Failure(
            key=str(key),
            type=str(error.get("type") or "unknown"),
            message=redact(str(error.get("message") or "")),
            finished_at=manifest.get("finished_at"),
            run_id=manifest.get("run_id"),
        )
    )


def _summarize_run(report: dict[str, Any]) -> dict[str, Any]:
    error = report.get("error")
    return {
        "run_id": report.get("run_id"),
        "started_at": report.get("started_at"),
        "finished_at": report.get("finished_at"),
        "counts": report.get("counts"),
        "audio_hours": report.get("audio_hours"),
        "wall_seconds": report.get("wall_seconds"),
        "exit_code": report.get("exit_code"),
        "error": {"type": error.get("type"), "message": redact(str(error.get("message")))} if error else None,
    }


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    try:
        document = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def status_exit_code(status: DestStatus) -> int:
    """As for `run`: 1 when some files failed, so a scheduler can alert on it."""
    return EXIT_FILES_FAILED if status.failed else EXIT_OK


def to_json(status: DestStatus) -> str:
    return json.dumps(status.to_dict(), ensure_ascii=False, indent=2)


def format_status(status: DestStatus) -> str:
    """The few lines a person reads: counts and hours, the latest run, then each failure with its reason."""
    lines = [
        f"{status.dest}: {status.files} files: {status.succeeded} succeeded, {status.failed} failed; "
        f"{status.audio_seconds / 3600:.3f} audio hours transcribed"
    ]
    if status.last_run:
        lines.append(_format_run(status.last_run, status.runs))
    if status.unreadable:
        lines.append(f"unreadable manifests ({len(status.unreadable)}): " + ", ".join(status.unreadable))
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
