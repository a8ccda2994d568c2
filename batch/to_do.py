"""Which files of SOURCE still need work: listed, selected (filters, shard), and not already done.

A file is done when its manifest says it succeeded with these settings, on this version of the input,
and its outputs are all in DEST (see batch.manifest.is_done).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from batch.concurrency import ordered_map
from batch.errors import ConfigError
from batch.manifest import is_done, read_manifest
from batch.sections import SelectionConfig
from batch.storage import InputFile, ListingCounts, Store

log = logging.getLogger(__name__)

# Skip checks on S3 are requests: run this many at once, this many listing entries ahead.
SKIP_CHECK_WORKERS = 16
SKIP_CHECK_AHEAD = 64


class ToDo:
    """The files a run must do, found by reading DEST's manifests beside SOURCE's listing."""

    def __init__(self, selection: SelectionConfig, settings_hash: str, source: Store, dest: Store):
        self.selection, self.settings_hash, self.source, self.dest = selection, settings_hash, source, dest
        self.blocked: dict[str, OSError] = {}  # files whose manifest path DEST cannot hold

    def pending(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """Files that need work, streamed in listing order; `on_skipped` hears of each file already done.

        The skip checks (a manifest read, and output checks when it says succeeded) run in parallel, a
        bounded number ahead, since on S3 each is a request.
        """
        selection = self.selection
        counts = ListingCounts()
        listing = self.source.list(selection.include, selection.exclude, counts)
        if selection.shard is not None:
            listing = (item for item in listing if selection.shard.owns(item.key))
        for item, done in ordered_map(self._is_done, listing, workers=SKIP_CHECK_WORKERS, ahead=SKIP_CHECK_AHEAD):
            if done.result():
                on_skipped(item.key)
            else:
                yield item
        log.info("%s: %d files listed, %d selected", self.source.location, counts.listed, counts.selected)
        if counts.selected == 0 and not selection.allow_empty:
            raise nothing_selected(self.source.location, counts, selection)

    def _is_done(self, item: InputFile) -> bool:
        try:
            manifest = read_manifest(self.dest, item.key)
        except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            # Something in the way of this one file's manifest (a directory at its path): the file fails
            # alone, without wasting the models on it, and the run goes on.
            self.blocked[item.key] = exc
            return False
        if self.selection.force:
            return False
        return is_done(manifest, item, self.settings_hash, self.source.fingerprint, self.dest)

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


def nothing_selected(location: str, counts: ListingCounts, selection: SelectionConfig) -> ConfigError:
    """The error of a SOURCE where nothing was selected: an unmounted volume, or a filter that takes nothing."""
    advice = "give --allow-empty (allow_empty = true) where an empty SOURCE is expected, as in a drop folder"
    if counts.listed == 0:
        return ConfigError("source", f"{location} holds no files (is it mounted?); {advice}")
    filters = [f"--include {' '.join(selection.include)}"] if selection.include else ["the media extensions"]
    filters += [f"--exclude {' '.join(selection.exclude)}"] if selection.exclude else []
    key = "include" if selection.include else "exclude" if selection.exclude else "source"
    return ConfigError(key, f"{location}: {counts.listed} files listed, 0 selected by {' and '.join(filters)}; "
                            f"globs match the path under SOURCE, ignoring case; {advice}")  # fmt: skip
