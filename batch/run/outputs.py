"""Writing a file's outputs, then its manifest last, on a thread of their own so the models go on meanwhile."""

from __future__ import annotations

import contextvars
import errno
import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from batch.common.errors import DestPathBlocked, describe, is_file_problem
from batch.engine.pipeline import Stopwatch
from batch.formats.subtitles import SubtitleOptions, subtitles
from batch.formats.transcript import Transcript, rttm
from batch.formats.turns import speaker_turns
from batch.run.manifest import (
    ErrorRecord,
    Manifest,
    done_alongside,
    done_beside,
    history_carried,
    manifest_name,
    output_name,
    read_manifest,
    utc_now,
)
from batch.storage import ConditionalWritesUnsupported, Store

log = logging.getLogger(__name__)


class NotRecorded(Exception):
    """The file met a fault that is not its own (batch.common.errors.is_file_problem): nothing is written for it, so
    that a later run does it (a queue message comes back); `cause` says what happened."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class LeftToOtherSettings(Exception):
    """A run with other settings, running beside this one, finished the file first (manifest.done_beside): its
    outputs and manifest are left as they are, and this run's are not written."""

    def __init__(self, manifest: Manifest):
        super().__init__(f"done by run {manifest.run_id} with other settings ({manifest.settings_hash})")
        self.manifest = manifest


class DoneAlongside(Exception):
    """A run beside this one, with the same settings, finished this very version of the file first
    (manifest.done_alongside): its outputs and manifest are left as they are, and this run's are not written."""

    def __init__(self, manifest: Manifest):
        super().__init__(f"done meanwhile by run {manifest.run_id}, the same version with the same settings")
        self.manifest = manifest


class Superseded(DoneAlongside):
    """A run beside this one recorded a newer version of the file, the one SOURCE holds now, after this run read an
    older one: this run's outcome is stale, and the newer record and its outputs are left as they are."""

    def __init__(self, manifest: Manifest):
        Exception.__init__(
            self, f"superseded: run {manifest.run_id} did the version SOURCE holds now ({manifest.input.version})"
        )
        self.manifest = manifest


@dataclass
class Written:
    """A file's manifest as written, or why it could not be written."""

    key: str
    manifest: Manifest | None
    error: BaseException | None = None


def render(transcript: Transcript, fmt: str, file_id: str = "audio", options: SubtitleOptions | None = None) -> bytes:
    """One output format as UTF-8 bytes: json, turns, rttm, srt/vtt (batch.formats.subtitles), txt/tsv (whisperx's)."""
    if fmt == "json":
        return json.dumps(transcript, ensure_ascii=False, indent=2).encode()
    if fmt == "turns":
        return json.dumps(speaker_turns(transcript), ensure_ascii=False, indent=2).encode()
    if fmt == "rttm":
        return rttm(transcript, file_id).encode("utf-8", "backslashreplace")
    if fmt in ("srt", "vtt"):
        return subtitles(transcript, fmt, options or SubtitleOptions()).encode()
    from whisperx.utils import get_writer

    buffer = io.StringIO()
    result = {"segments": transcript["segments"], "language": transcript["language"] or ""}
    get_writer(fmt, "").write_result(result, file=buffer, options={})  # txt and tsv read no options
    return buffer.getvalue().encode()


def write_outputs(
    dest: Store, key: str, transcript: Transcript, formats: tuple[str, ...], options: SubtitleOptions
) -> list[str]:
    names = []
    for fmt in formats:
        name = output_name(key, fmt)
        dest.write_bytes(name, render(transcript, fmt, key, options))
        names.append(name)
    return names


def write_file(
    dest: Store,
    manifest: Manifest,
    stopwatch: Stopwatch,
    transcript: Transcript | None,
    formats: tuple[str, ...],
    error: Exception | None,
    options: SubtitleOptions | None = None,
    run_started_at: str | None = None,
    holds_now: Callable[[str], bool] | None = None,
) -> Manifest:
    """Write one file's outputs, then its manifest, which says succeeded only when everything is in place.

    A failed manifest is written only for a fault of the file's own: any other fault, and any error writing the
    outputs or the manifest (DEST's, never the file's), raises instead and leaves no manifest, so that the file is
    done later. With `run_started_at` (not --force), a success with other settings that a run beside this one
    wrote since then is left as it is (LeftToOtherSettings), and so is a success of this same version with the
    same settings (DoneAlongside): the file is not written twice; and so is a success of another version that
    SOURCE holds now, by `holds_now(version)` (Superseded: this run read the file before it was replaced)."""
    key = manifest.input.key
    if isinstance(error, DestPathBlocked):
        raise error  # there is no place for its manifest: the run report holds the reason
    if error is not None and not is_file_problem(error):
        raise NotRecorded(error)
    seen, replaced = None, None
    if run_started_at is not None:
        seen, replaced = _check_not_done_beside(dest, manifest, error, run_started_at, holds_now)
    else:  # --force: the manifest about to go, read for the corrections it holds
        replaced = _readable(dest, key)
    # A person's corrections were made on the transcript being replaced: kept as history, the file reviewed again.
    manifest.corrections_history = history_carried(replaced)
    if transcript is not None:
        # The old manifest goes before the outputs it describes change: a crash midway never leaves a stale
        # "succeeded" beside outputs of another version or settings.
        _delete_old_manifest(dest, manifest, seen, run_started_at)
        with stopwatch.stage("write"):
            manifest.outputs = write_outputs(dest, key, transcript, formats, options or SubtitleOptions())
    manifest.status = "failed" if error is not None else "succeeded"
    manifest.error = ErrorRecord.of(error) if error is not None else None
    manifest.timings, manifest.finished_at = stopwatch.timings, utc_now()
    if transcript is None and error is not None and keeps_succeeded_manifest(dest, key, error):
        return manifest
    try:
        if run_started_at is not None and error is None:
            _create_manifest(dest, manifest, run_started_at)
        else:
            dest.write_bytes(manifest_name(key), manifest.encode())
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # readable, not writable: a temporary's path went past PATH_MAX
            raise DestPathBlocked(manifest_name(key), exc) from None
        if not _landed(dest, manifest):
            raise
    except (DoneAlongside, LeftToOtherSettings):
        raise
    except Exception:
        if not _landed(dest, manifest):
            raise
    return manifest


def _landed(dest: Store, mine: Manifest) -> bool:
    """Whether DEST holds this very manifest after all: a write that landed though every answer to it was lost."""
    try:
        return _is_this_write(read_manifest(dest, mine.input.key), mine)
    except Exception:  # DEST unreadable too: the write's own error stands
        return False


def _is_this_write(existing: Manifest | None, mine: Manifest) -> bool:
    return (
        existing is not None
        and existing.run_id == mine.run_id
        and existing.finished_at == mine.finished_at
        and existing.status == mine.status
        and existing.input.version == mine.input.version
    )


_NOTHING_SEEN = ""


def _check_not_done_beside(
    dest: Store,
    mine: Manifest,
    error: Exception | None,
    run_started_at: str,
    holds_now: Callable[[str], bool] | None = None,
) -> tuple[str, Manifest | None]:
    """Raise when a run beside this one has done the file (LeftToOtherSettings, DoneAlongside, Superseded); else
    the version of the manifest DEST holds now (_NOTHING_SEEN: none), which this write may replace, and it."""
    found = dest.read_with_version(manifest_name(mine.input.key))
    existing = Manifest.decode(found[0]) if found is not None else None
    seen = found[1] if found is not None else _NOTHING_SEEN
    if existing is None:
        return seen, None
    if done_beside(existing, mine.settings_hash, run_started_at):
        raise LeftToOtherSettings(existing)
    if error is not None:  # a failure of the file's own: keeps_succeeded_manifest decides
        return seen, existing
    if done_alongside(existing, mine, run_started_at):
        raise DoneAlongside(existing)
    if holds_now is not None and _newer_beside(existing, mine, run_started_at) and holds_now(existing.input.version):
        raise Superseded(existing)
    return seen, existing


def _readable(dest: Store, key: str) -> Manifest | None:
    try:
        return read_manifest(dest, key)
    except Exception:  # DEST unreadable: the write itself finds out; only a history is at stake here
        return None


def _newer_beside(existing: Manifest, mine: Manifest, run_started_at: str) -> bool:
    """A success of another version of the file, with these settings, by a run beside this one: the newer of the
    two is the one SOURCE holds now."""
    return (
        existing.status == "succeeded"
        and existing.settings_hash == mine.settings_hash
        and existing.run_id != mine.run_id
        and existing.finished_at >= run_started_at
        and existing.input.version != mine.input.version
    )


def _delete_old_manifest(dest: Store, mine: Manifest, seen: str | None, run_started_at: str | None) -> None:
    """Delete the manifest the check above saw, and only it: one that a run beside this one wrote since then is
    looked at again (it may have done the file meanwhile). Without the check (--force), whatever is there."""
    name = manifest_name(mine.input.key)
    if seen is None or run_started_at is None:
        dest.delete(name)
    elif seen != _NOTHING_SEEN and not delete_if_version(dest, name, seen):
        _check_not_done_beside(dest, mine, None, run_started_at)
        dest.delete(name)


def delete_if_version(dest: Store, name: str, version: str) -> bool:
    try:
        return dest.delete_if_version(name, version)
    except ConditionalWritesUnsupported:
        dest.delete(name)
        return True


def _create_manifest(dest: Store, mine: Manifest, run_started_at: str) -> None:
    """Write a success's manifest only if no other is there: two runs that did the same version at once (one
    queue event given to two consumers) both write identical outputs, and exactly one of them records the
    success; the other raises DoneAlongside. A manifest of anything else found there is replaced, as this run's
    outputs are the ones in place now."""
    name = manifest_name(mine.input.key)
    data = mine.encode()
    try:
        if dest.create_exclusive(name, data) is not None:
            return
    except ConditionalWritesUnsupported:
        dest.write_bytes(name, data)
        return
    existing = read_manifest(dest, mine.input.key)
    if _is_this_write(existing, mine):  # it landed, its answer was lost, and botocore's retry found it there
        return
    if done_alongside(existing, mine, run_started_at):
        raise DoneAlongside(existing)
    dest.write_bytes(name, data)


def keeps_succeeded_manifest(dest: Store, key: str, error: Exception) -> bool:
    """Whether DEST holds a "succeeded" manifest of the file that a failed try which wrote no outputs (the object
    gone, a corrupt new version) must leave whole: it and its outputs still agree, and it holds what nothing else
    does (the guard's dropped texts). Only an outcome with outputs of its own replaces it."""
    kept = read_manifest(dest, key)
    if kept is None or kept.status != "succeeded":
        return False
    log.warning(
        "this try failed (%s) and wrote nothing; the file's succeeded manifest (input version %s, %s) is kept",
        describe(error)["message"],
        kept.input.version,
        kept.finished_at,
    )
    return True


class OutputWriter:
    """Writes files one at a time on a background thread; `done()` hands back what was written, in order."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._pending: list[tuple[str, Future[Manifest]]] = []

    def submit(self, key: str, write: Callable[[], Manifest]) -> None:
        """Start writing a file once the previous one is written: one write in flight, so the count of files
        done (and the broken-run check) is never more than one file behind the models."""
        if self._pending:
            self._pending[-1][1].exception()  # waits; the outcome is read by done()
        self._pending.append((key, self._pool.submit(contextvars.copy_context().run, write)))

    def done(self, wait: bool = False) -> list[Written]:
        """The files whose writing has ended (all of them when `wait`), in the order they were submitted."""
        written = []
        while self._pending and (wait or self._pending[0][1].done()):
            key, future = self._pending.pop(0)
            try:
                written.append(Written(key, future.result()))
            except Exception as exc:
                written.append(Written(key, None, exc))
        return written

    def close(self) -> list[Written]:
        """Wait for every file handed over (a file the models finished is never dropped); idempotent."""
        written = self.done(wait=True)
        self._pool.shutdown(wait=True)
        return written
