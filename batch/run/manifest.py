"""Per-file manifests: the record of what was done, and the only mark that a file is done.

A manifest is written last, atomically. A file counts as done only when its manifest says `succeeded`, for
the same input (fingerprint) and the same settings hash, and its outputs exist. A manifest that cannot be
read, or is not of this shape, reads as None: not done, so the file is redone and its manifest rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from batch.common.errors import describe, is_file_problem
from batch.storage import InputFile, Store
from batch.storage.names import output_base

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
RUNS_FOLDER = "_runs"
FORMAT_SUFFIXES = {"turns": "turns.json"}


def manifest_name(key: str) -> str:
    return output_base(key) + MANIFEST_SUFFIX


def output_name(key: str, fmt: str) -> str:
    return f"{output_base(key)}.{FORMAT_SUFFIXES.get(fmt, fmt)}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Record(BaseModel):
    """A JSON document of this project: extra keys from a newer version are kept, never an error."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def encode(self) -> bytes:
        return encode(self.model_dump(mode="json", exclude_none=True))


class ErrorRecord(BaseModel):
    type: str
    message: str
    # True: the file's own problem (undecodable, no alignment model, out of memory alone, a worker died on it
    # twice...); False: unexpected, perhaps the machine's. None in manifests written before the field.
    file_problem: bool | None = None

    @classmethod
    def of(cls, exc: BaseException) -> ErrorRecord:
        return cls(**describe(exc), file_problem=is_file_problem(exc))


class InputRecord(BaseModel):
    key: str
    size: int
    version: str
    fingerprint: str | None = None
    location: str | None = None  # where it was read: s3://bucket/key (the bucket a queue message named), a path


class Manifest(Record):
    manifest_version: int = MANIFEST_VERSION
    status: Literal["succeeded", "failed"]
    error: ErrorRecord | None = None
    input: InputRecord
    settings_hash: str
    settings: dict[str, Any]
    language: str | None = None
    languages: dict[str, float] | None = None  # seconds of transcript per language it is written in
    audio_seconds: float | None = None
    timings: dict[str, float]
    batch_size: int
    model: str
    device: str
    compute_type: str
    threads: int
    versions: dict[str, str]
    run_id: str
    started_at: str
    finished_at: str
    outputs: list[str] = []
    alignment: dict[str, Any] | None = None
    speakers: list[str] | None = None
    receive_count: int | None = None  # queue mode: the receives of its message, this one included
    gpu: dict[str, dict[str, Any]] | None = None
    worker: str | None = None  # with --gpus or --workers: the worker process that transcribed the file
    quality: dict[str, Any] | None = None  # the hallucination guard's summary (batch.engine.quality.summary)
    # A person's decisions applied to this transcript (batch.run.corrections), and those applied to the transcripts
    # this file had before it was redone: read leniently here, so that a damaged record never redoes a file.
    corrections: dict[str, Any] | None = None
    corrections_history: list[dict[str, Any]] | None = None

    @classmethod
    def decode(cls, raw: bytes | None) -> Manifest | None:
        """The manifest in `raw`, or None when there is none or it is not a manifest of this shape."""
        if raw is None:
            return None
        try:  # json, not pydantic's parser: a key that is not UTF-8 is kept as lone surrogates
            return cls.model_validate(json.loads(raw))
        except (ValidationError, ValueError):
            return None


def to_review(manifest: Manifest) -> bool:
    """Whether a person should look at the file: the guard asked for it (quality.review) and no one has marked
    the file reviewed since (corrections.reviewed, by `corrections apply`)."""
    asked = bool((manifest.quality or {}).get("review"))
    return asked and not (manifest.corrections or {}).get("reviewed")


def history_carried(old: Manifest | None) -> list[dict[str, Any]] | None:
    """The corrections history a new manifest of the file takes over from the one it replaces: the old one's
    history, and its own corrections, with the transcript they were made on (it is gone now)."""
    if old is None:
        return None
    history = list(old.corrections_history or [])
    if old.corrections:
        made_on = {"run_id": old.run_id, "finished_at": old.finished_at, "input_version": old.input.version}
        history.append({**made_on, "settings_hash": old.settings_hash, "corrections": old.corrections})
    return history or None


def read_manifest(dest: Store, key: str) -> Manifest | None:
    return Manifest.decode(dest.read_bytes(manifest_name(key)))


def is_done(
    manifest: Manifest | None,
    item: InputFile,
    settings_hash: str,
    fingerprint: Callable[[InputFile], str],
    dest: Store,
) -> bool:
    """Whether `item` was already transcribed with these settings, so a rerun can skip it.

    The input is the same when size and version (mtime, ETag) match; when only the version moved
    (a copy, a touch), the content fingerprint decides.
    """
    if manifest is None or manifest.status != "succeeded" or manifest.settings_hash != settings_hash:
        return False
    recorded = manifest.input
    if recorded.key != item.key or recorded.size != item.size:
        return False
    if recorded.version != item.version and recorded.fingerprint != fingerprint(item):
        return False
    return bool(manifest.outputs) and not absent_outputs(manifest, dest)


def done_beside(manifest: Manifest | None, settings_hash: str, run_started_at: str) -> bool:
    """Whether `manifest` is a success with other settings that a run running beside this one wrote (it finished
    after this run started): this run leaves it as it is, so that two runs with different settings on one DEST
    do not redo each other's files back and forth. A sequential rerun with a changed setting still redoes it."""
    return (
        manifest is not None
        and manifest.status == "succeeded"
        and manifest.settings_hash != settings_hash
        and manifest.finished_at >= run_started_at
    )


def done_alongside(existing: Manifest | None, mine: Manifest, run_started_at: str) -> bool:
    """Whether `existing` is a success of the very input `mine` records, with the same settings, that another run
    wrote after this one started (two consumers of one queue given one event twice, two runs on one folder):
    this run's outcome is the same work done twice, so the other run's outputs are left as they are."""
    return (
        existing is not None
        and existing.status == "succeeded"
        and existing.settings_hash == mine.settings_hash
        and existing.run_id != mine.run_id
        and existing.finished_at >= run_started_at
        and existing.input.key == mine.input.key
        and existing.input.size == mine.input.size
        and existing.input.version == mine.input.version
    )


def absent_outputs(manifest: Manifest, dest: Store) -> list[str]:
    """The outputs the manifest lists that DEST no longer holds."""
    return [name for name in manifest.outputs if not dest.exists(name)]


def encode(document: dict[str, Any]) -> bytes:
    # backslashreplace: a file name that is not valid UTF-8 (kept by Python as lone surrogates) is written as
    # a JSON \udcXX escape, so the JSON stays valid and the key reads back exactly.
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8", "backslashreplace")
