"""The skip check every source of work runs: whether DEST holds a file as done, why it cannot hold its manifest,
and what to do with a file whose check could not be made.

A file is done when its manifest says it succeeded with these settings, on this version of the input, and its
outputs are all in DEST (see batch.run.manifest.is_done); or when a run with other settings, beside this one,
did it since this run began (left as it is: no ping-pong between two runs on one DEST).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from batch.common.errors import DestPathBlocked, EnvironmentProblem, describe, is_path_blocked
from batch.common.logs import file_context
from batch.run.config import SelectionConfig
from batch.run.manifest import Manifest, done_beside, is_done, manifest_name, read_manifest, utc_now
from batch.run.report import OtherSettings
from batch.storage import InputFile, Store

log = logging.getLogger(__name__)

# Skip checks that fail in a row (after the store's own retries) before DEST is taken for broken: one file's
# unreadable manifest is left for the next run, every file's stops the run.
UNREADABLE_IN_A_ROW_STOP = 3


class SkipCheck:
    """Reads DEST's manifest of each file a source offers, and remembers what the run must hear of later: the files
    whose manifest path DEST cannot hold, and those done with other settings (the run report's)."""

    def __init__(
        self,
        selection: SelectionConfig,
        settings_hash: str,
        source: Store,
        dest: Store,
        on_left: Callable[[str, Exception], None] = lambda key, exc: None,
    ):
        self.selection, self.settings_hash, self.source, self.dest = selection, settings_hash, source, dest
        self.on_left = on_left  # hears of each file left for the next run (its skip check could not be made)
        self.started_at = utc_now()  # manifests finished since were written by runs beside this one
        self.other_settings = OtherSettings()  # files DEST held as done with other settings (the run report's)
        self._blocked: dict[str, OSError] = {}  # files whose manifest path DEST cannot hold

    def is_done(self, item: InputFile) -> bool:
        """Whether DEST holds the file as done (an OSError of DEST's is raised: see `leave`)."""
        try:
            manifest = read_manifest(self.dest, item.key)
        except OSError as exc:
            if not is_path_blocked(exc):
                raise
            # Something in the way of this one file's manifest (a directory at its path, a path longer than
            # DEST takes): the file fails alone, without wasting the models on it, and the run goes on.
            self._blocked[item.key] = exc
            return False
        if self.selection.force:
            return False
        if is_done(manifest, item, self.settings_hash, self.source.fingerprint, self.dest):
            return True
        return self._done_with_other_settings(item, manifest)

    def _done_with_other_settings(self, item: InputFile, manifest: Manifest | None) -> bool:
        """A file DEST holds as done with other settings: redone when that was before this run (a changed setting),
        left as it is when a run with other settings did it while this one runs (no ping-pong); said either way."""
        if manifest is None or manifest.status != "succeeded" or manifest.settings_hash == self.settings_hash:
            return False
        if done_beside(manifest, self.settings_hash, self.started_at):
            self.other_settings.left.append(item.key)
            log.warning(
                "%s: left as it is: done by run %s with other settings (%s) while this run was running "
                "(two runs with different settings on one DEST?)",
                item.key,
                manifest.run_id,
                manifest.settings_hash,
            )
            return True
        self.other_settings.changed.append(item.key)
        log.info(
            "%s: redone: done by run %s with other settings (%s)", item.key, manifest.run_id, manifest.settings_hash
        )
        return False

    def leave(self, item: InputFile, exc: Exception, in_a_row: int) -> None:
        """A file whose skip check could not be made: neither done nor failed, it is left for the next run, unless
        so many in a row fail that DEST itself is the problem (the run then stops, exit 3)."""
        reason = describe(exc)["message"]
        if in_a_row >= UNREADABLE_IN_A_ROW_STOP:
            raise EnvironmentProblem(
                f"the manifests of the last {in_a_row} files could not be read in DEST {self.dest.location} "
                f"({reason}); stopping: files not done are taken by the next run"
            )
        with file_context(item.key):
            log.warning("whether it is done could not be read: %s; left for the next run", reason)
        self.on_left(item.key, exc)

    def blocked(self, key: str) -> DestPathBlocked | None:
        """Why DEST cannot hold this file's manifest (it then fails alone, with this error), or None."""
        reason = self._blocked.get(key)
        return DestPathBlocked(manifest_name(key), reason) if reason is not None else None

    def still_to_do(self, item: InputFile, run_started_at: str) -> bool:
        """After winning a claim: not done by another worker during this run, nor done before (unless --force)."""
        manifest = read_manifest(self.dest, item.key)
        if manifest is None:
            return True
        if manifest.finished_at >= run_started_at:
            return False
        return self.selection.force or not is_done(
            manifest, item, self.settings_hash, self.source.fingerprint, self.dest
        )
