"""The corrections file (docs/outputs.md#corrections-file): a person's decisions on the files to review, as the
review page exports them, and the record of them a manifest keeps once applied.

Read strictly: an unknown key (a misspelt `new_text`), a missing one, an action not known, or another
`corrections_version` refuses the whole file before anything is applied.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from batch.common.errors import ConfigError
from batch.formats.edits import Edit, Span

CORRECTIONS_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _iso_time(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    return value


class SegmentRef(Strict):
    """The segment a decision was made on, as the review page showed it: its times and its text."""

    start: float
    end: float
    text: str

    @model_validator(mode="after")
    def _ordered(self) -> SegmentRef:
        if self.end < self.start:
            raise ValueError(f"segment ends ({self.end}) before it starts ({self.start})")
        return self


class Decision(Strict):
    segment: SegmentRef
    action: Literal["keep", "remove", "edit"]
    new_text: str | None = None
    who: str
    when: str

    _when = field_validator("when")(_iso_time)

    @model_validator(mode="after")
    def _text_for_edits(self) -> Decision:
        if (self.action == "edit") != (self.new_text is not None):
            raise ValueError("new_text is given with action edit, and only with it")
        if self.action == "edit" and not (self.new_text or "").strip():
            raise ValueError("an edit to no text: use action remove")
        return self

    def edit(self) -> Edit:
        return Edit(self.action, Span(self.segment.start, self.segment.end, self.segment.text), self.new_text)


class MadeFrom(Strict):
    """The transcript the decisions were made on, as its manifest records it."""

    input_version: str  # the manifest's input.version
    fingerprint: str | None = None  # its input.fingerprint; checked when given
    settings_hash: str


class FileCorrections(Strict):
    file: str  # the input's key, as its manifest's input.key names it
    version: MadeFrom
    decisions: list[Decision] = []
    reviewed: bool = False  # a person has looked at the whole file: it leaves the review list
    reviewed_by: str | None = None
    reviewed_at: str | None = None

    _reviewed_at = field_validator("reviewed_at")(lambda value: value if value is None else _iso_time(value))

    def digest(self) -> str:
        """What makes these decisions these: applying the same ones again is known and done once."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode("utf-8", "backslashreplace")).hexdigest()


class CorrectionsFile(Strict):
    corrections_version: int
    dest: str  # the DEST the review page was made for: a folder or s3:// prefix
    made_by: str
    made_at: str
    files: list[FileCorrections]

    _made_at = field_validator("made_at")(_iso_time)

    @field_validator("corrections_version")
    @classmethod
    def _known(cls, value: int) -> int:
        if value != CORRECTIONS_VERSION:
            raise ValueError(f"version {value}: this whisperx-batch reads version {CORRECTIONS_VERSION}")
        return value

    @field_validator("files")
    @classmethod
    def _once_each(cls, files: list[FileCorrections]) -> list[FileCorrections]:
        seen: set[str] = set()
        for entry in files:
            if entry.file in seen:
                raise ValueError(f"{entry.file!r} is named twice")
            seen.add(entry.file)
        return files


def read_corrections(raw: bytes, name: str) -> CorrectionsFile:
    """The corrections file in `raw`, or a ConfigError (exit 2) saying why it is not one; nothing is applied."""
    try:
        return CorrectionsFile.model_validate(json.loads(raw))
    except UnicodeDecodeError as exc:
        raise ConfigError("corrections file", f"{name} is not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("corrections file", f"{name} is not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(_said(error) for error in exc.errors()[:5])
        raise ConfigError("corrections file", f"{name} is not a corrections file: {problems}") from None


def _said(error: dict[str, object]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))  # type: ignore[union-attr]
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


class Applied(BaseModel):
    """One corrections file's decisions on a file, as its manifest's `corrections.applied` keeps them."""

    corrections_file: str  # its name, as given to `corrections apply`
    digest: str  # FileCorrections.digest
    made_by: str
    made_at: str
    applied_at: str
    decisions: list[Decision]
