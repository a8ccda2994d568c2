"""`whisperx-batch corrections apply DEST FILE.json`: a person's decisions (batch.run.corrections_file) written
into each file's transcript, every text output the run wrote for it, and its manifest.

A file's decisions are applied only to the very transcript they were made on: its manifest must still record
the input version and settings hash the corrections file names, and every segment named must still be there
with that text (batch.formats.edits); otherwise the file is refused with the reason and nothing of it changes.
Its outputs are made by the run's own `render`, from the corrected transcript, with the formats and subtitle
layout its manifest records. They are written as the run writes a file: the old manifest deleted (only if it is
still the one read), the outputs, then the manifest last; a crash midway leaves no manifest, so the file is not
taken as done and the next run redoes it (the corrections file still fits the redone transcript).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any, Literal

from batch.common.errors import ConfigError, describe
from batch.formats.edits import EditDoesNotFit, apply_edits
from batch.formats.subtitles import SubtitleOptions
from batch.formats.transcript import Transcript
from batch.run.corrections_file import Applied, CorrectionsFile, FileCorrections, MadeFrom, read_corrections
from batch.run.manifest import Manifest, absent_outputs, manifest_name, output_name, utc_now
from batch.run.outputs import delete_if_version, render
from batch.storage import ConditionalWritesUnsupported, Store, open_store, same_place

Outcome = Literal["applied", "already_applied", "refused", "failed"]


@dataclass(frozen=True)
class FileResult:
    """What became of one file's decisions: applied, applied before (the same decisions), refused (why), or
    failed (DEST could not be read or written: nothing of it is taken as done)."""

    file: str
    outcome: Outcome
    reason: str | None = None
    decisions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}


class Refused(Exception):
    """The file's decisions do not fit what DEST holds for it; nothing of it was written."""


def apply_corrections(
    dest_url: str, raw: bytes, name: str, endpoint_url: str | None = None, client: Any = None
) -> tuple[CorrectionsFile, list[FileResult]]:
    """Apply the corrections file `raw` (called `name`) to DEST, file by file (an S3 DEST through `client` when
    given). ConfigError (exit 2) for a file that is not a corrections file or a DEST that is not a location;
    EnvironmentProblem (exit 3) when DEST cannot be read. A corrections file made for another DEST refuses every
    file it names."""
    corrections = read_corrections(raw, name)
    try:
        dest = open_store(dest_url, endpoint_url=endpoint_url, client=client)
    except ValueError as exc:
        raise ConfigError("DEST", str(exc)) from None
    dest.check_readable("DEST")
    if not same_place(corrections.dest, dest_url):
        reason = f"the corrections were made for DEST {corrections.dest}, not {dest.location}"
        return corrections, [
            FileResult(entry.file, "refused", reason, len(entry.decisions)) for entry in corrections.files
        ]
    source = PurePath(name).name
    return corrections, [apply_file(dest, corrections, entry, source) for entry in corrections.files]


def apply_file(dest: Store, corrections: CorrectionsFile, entry: FileCorrections, source: str) -> FileResult:
    count = len(entry.decisions)
    try:
        outcome = _apply(dest, corrections, entry, source)
    except Refused as exc:
        return FileResult(entry.file, "refused", str(exc), count)
    except EditDoesNotFit as exc:
        return FileResult(entry.file, "refused", f"a decision does not fit its transcript: {exc}", count)
    except Exception as exc:  # DEST's fault, not the decisions': said, never a traceback
        return FileResult(entry.file, "failed", f"DEST: {describe(exc)['message']}", count)
    return FileResult(entry.file, outcome, None, count)


def _apply(dest: Store, corrections: CorrectionsFile, entry: FileCorrections, source: str) -> Outcome:
    manifest, seen = _current(dest, entry.file)
    _check_made_from(manifest, entry.version)
    record = dict(manifest.corrections or {})
    if any(applied.get("digest") == entry.digest() for applied in record.get("applied", [])):
        return "already_applied"
    formats = _formats_written(manifest, dest)
    transcript = _transcript(dest, manifest)
    dropped = list((manifest.quality or {}).get("dropped", []))
    corrected = apply_edits(transcript, [decision.edit() for decision in entry.decisions], dropped)
    options = subtitle_options(manifest.settings)
    key = manifest.input.key
    rendered = {output_name(key, fmt): render(corrected, fmt, key, options) for fmt in formats}
    manifest.corrections = corrections_record(record, corrections, entry, source)
    _write(dest, manifest, seen, rendered)
    return "applied"


def _current(dest: Store, key: str) -> tuple[Manifest, str]:
    """The file's manifest as DEST holds it now, and its version (for the conditional delete)."""
    found = dest.read_with_version(manifest_name(key))
    if found is None:
        raise Refused("DEST holds no such file (no manifest of it)")
    manifest = Manifest.decode(found[0])
    if manifest is None or manifest.input.key != key:
        raise Refused("its manifest cannot be read (the next run redoes the file)")
    if manifest.status != "succeeded":
        raise Refused("its manifest says it failed: there is no transcript to correct")
    return manifest, found[1]


def _check_made_from(manifest: Manifest, made: MadeFrom) -> None:
    if made.input_version != manifest.input.version:
        raise Refused(
            f"the corrections were made on input version {made.input_version}; DEST holds a transcript of version "
            f"{manifest.input.version} now (the file was redone)"
        )
    if made.fingerprint is not None and made.fingerprint != manifest.input.fingerprint:
        raise Refused(f"the corrections were made on input {made.fingerprint}; DEST holds {manifest.input.fingerprint}")
    if made.settings_hash != manifest.settings_hash:
        raise Refused(
            f"the corrections were made on a transcript of settings {made.settings_hash}; the file was redone "
            f"with settings {manifest.settings_hash}"
        )


def _formats_written(manifest: Manifest, dest: Store) -> list[str]:
    """The formats the run wrote for the file, from its settings, checked against the outputs it lists."""
    key = manifest.input.key
    formats = [str(fmt) for fmt in manifest.settings.get("formats", [])]
    if sorted(output_name(key, fmt) for fmt in formats) != sorted(manifest.outputs):
        raise Refused("its outputs are not those of its settings' formats")
    if "json" not in formats:
        raise Refused("no transcript JSON among its outputs (formats without json): nothing to correct from")
    missing = absent_outputs(manifest, dest)
    if missing:
        raise Refused(f"outputs missing from DEST ({', '.join(missing)}): the next run redoes the file")
    return formats


def _transcript(dest: Store, manifest: Manifest) -> Transcript:
    raw = dest.read_bytes(output_name(manifest.input.key, "json"))
    try:
        transcript = json.loads(raw) if raw is not None else None
    except ValueError:
        transcript = None
    if not isinstance(transcript, dict) or not isinstance(transcript.get("segments"), list):
        raise Refused("its transcript JSON cannot be read")
    return transcript  # type: ignore[return-value]


def subtitle_options(settings: dict[str, Any]) -> SubtitleOptions:
    """The subtitle layout the run wrote with, as its manifest's settings record it (the defaults otherwise:
    they are recorded only when srt or vtt is written)."""
    default = SubtitleOptions()
    return SubtitleOptions(
        int(settings.get("max_line_width", default.max_line_width)),
        int(settings.get("max_line_count", default.max_line_count)),
        float(settings.get("max_cue_duration", default.max_cue_duration)),
        bool(settings.get("highlight_words", default.highlight_words)),
    )


def corrections_record(
    record: dict[str, Any], corrections: CorrectionsFile, entry: FileCorrections, source: str
) -> dict[str, Any]:
    """The manifest's `corrections` with this file's decisions added (docs/outputs.md#corrections-in-the-manifest)."""
    applied = Applied(
        corrections_file=source,
        digest=entry.digest(),
        made_by=corrections.made_by,
        made_at=corrections.made_at,
        applied_at=utc_now(),
        decisions=entry.decisions,
    )
    updated = {**record, "applied": [*record.get("applied", []), applied.model_dump(mode="json", exclude_none=True)]}
    if entry.reviewed:
        updated |= {"reviewed": True, "reviewed_by": entry.reviewed_by, "reviewed_at": entry.reviewed_at}
    updated.setdefault("reviewed", False)
    return {name: value for name, value in updated.items() if value is not None}


def _write(dest: Store, manifest: Manifest, seen: str, rendered: dict[str, bytes]) -> None:
    """As the run writes a file (batch.run.outputs.write_file): the old manifest goes first, and only if it is
    still the one read; then the outputs; then the manifest, created only if no run wrote one meanwhile."""
    name = manifest_name(manifest.input.key)
    if not delete_if_version(dest, name, seen):
        raise Refused("its manifest changed while the corrections were applied (a run redid the file): apply again")
    for output, data in rendered.items():
        dest.write_bytes(output, data)
    data = manifest.encode()
    try:
        created = dest.create_exclusive(name, data)
    except ConditionalWritesUnsupported:
        dest.write_bytes(name, data)
        return
    if created is None:  # a run redid the file while its outputs were written: which outputs stand is unknown
        found = dest.read_with_version(name)
        if found is not None:
            delete_if_version(dest, name, found[1])
        raise Refused("a run wrote the file while the corrections were written: the next run redoes it; apply again")
