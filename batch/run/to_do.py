"""Which files of SOURCE still need work: listed, selected (filters, shard), and not already done.

A file is done when its manifest says it succeeded with these settings, on this version of the input,
and its outputs are all in DEST (see batch.run.manifest.is_done).

SOURCE is listed once per run, on a thread of its own that reads ahead of the run (up to LISTED_AHEAD files) while
the run takes the files at its own pace: watchers (the progress census) hear of every file selected as soon as it
is listed, so totals are known early without a second listing (on S3, a second round of requests).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from batch.common.concurrency import ordered_map
from batch.common.errors import (
    BatchError,
    ConfigError,
    DestPathBlocked,
    EnvironmentProblem,
    describe,
    is_path_blocked,
)
from batch.common.logs import file_context
from batch.run.config import SelectionConfig
from batch.run.manifest import Manifest, done_beside, is_done, manifest_name, read_manifest, utc_now
from batch.run.report import OtherSettings
from batch.storage import InputFile, ListingCounts, Store

log = logging.getLogger(__name__)

# Skip checks on S3 are requests: run this many at once, this many listing entries ahead.
SKIP_CHECK_WORKERS = 16
SKIP_CHECK_AHEAD = 64
# Skip checks that fail in a row (after the store's own retries) before DEST is taken for broken: one file's
# unreadable manifest is left for the next run, every file's stops the run.
UNREADABLE_IN_A_ROW_STOP = 3


class ListingWatcher(Protocol):
    """Hears of SOURCE's listing as the run reads it, on the listing's thread: it must not block."""

    def listed(self, item: InputFile) -> None: ...
    def listing_done(self) -> None: ...


class ToDo:
    """The files a run must do, found by reading DEST's manifests beside SOURCE's listing."""

    def __init__(
        self,
        selection: SelectionConfig,
        settings_hash: str,
        source: Store,
        dest: Store,
        watchers: Sequence[ListingWatcher] = (),
        on_left: Callable[[str, Exception], None] = lambda key, exc: None,
    ):
        self.selection, self.settings_hash, self.source, self.dest = selection, settings_hash, source, dest
        self.watchers = watchers
        self.on_left = on_left  # hears of each file left for the next run (its skip check could not be made)
        self.started_at = utc_now()  # manifests finished since were written by runs beside this one
        self.other_settings = OtherSettings()  # files DEST held as done with other settings (the run report's)
        self._listed = False
        self._blocked: dict[str, OSError] = {}  # files whose manifest path DEST cannot hold

    def pending(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """Files that need work, streamed in listing order; `on_skipped` hears of each file already done.

        The skip checks (a manifest read, and output checks when it says succeeded) run in parallel, a
        bounded number ahead, since on S3 each is a request.
        """
        # Watchers count the run's files: they hear the first listing only (a dry run's `pending()`, then `run()`).
        listing = ReadAhead(self.source, self.selection, () if self._listed else self.watchers)
        self._listed = True
        unreadable_in_a_row = 0
        try:
            checks = ordered_map(self._is_done, listing, workers=SKIP_CHECK_WORKERS, ahead=SKIP_CHECK_AHEAD)
            for item, done in checks:  # an error of the listing itself is raised here, and ends the run
                try:
                    already_done = done.result()
                except BatchError:
                    raise
                except Exception as exc:  # DEST (or SOURCE's fingerprint) could not be read, after retries
                    unreadable_in_a_row += 1
                    self._leave(item, exc, unreadable_in_a_row)
                    continue
                unreadable_in_a_row = 0
                if already_done:
                    on_skipped(item.key)
                else:
                    yield item
        finally:
            listing.close()
        counts = listing.counts
        log.info("%s: %d files listed, %d selected", self.source.location, counts.listed, counts.selected)
        if counts.selected == 0 and not self.selection.allow_empty:
            raise nothing_selected(self.source.location, counts, self.selection)

    def _leave(self, item: InputFile, exc: Exception, in_a_row: int) -> None:
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

    def _is_done(self, item: InputFile) -> bool:
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

    # Where files come from a queue (batch.run.queue), what each one's message needs to hear; here, nothing.

    def receive_count(self, key: str) -> int | None:
        return None

    def finished(self, key: str) -> None:
        """The file's write has ended: its manifest written, or not (a fault not its own, DEST refused it, or a run
        beside this one with other settings wrote it first). A later run does a file with no manifest; where it came
        from a queue, its message comes back rather than being deleted."""

    def more_to_come(self) -> bool:
        """After `pending` ended: whether it paused rather than ended (a queue that went quiet while files were
        in work, so that they are finished now), and the run should ask `pending` again. A listing ends."""
        return False

    def close(self) -> None:
        """The run is over, whatever ended it."""


def nothing_selected(location: str, counts: ListingCounts, selection: SelectionConfig) -> ConfigError:
    """The error of a SOURCE where nothing was selected: an unmounted volume, or a filter that takes nothing."""
    advice = "give --allow-empty (allow_empty = true) where an empty SOURCE is expected, as in a drop folder"
    if counts.listed == 0:
        return ConfigError("source", f"{location} holds no files (is it mounted?); {advice}")
    filters = [f"--include {' '.join(selection.include)}"] if selection.include else ["the media extensions"]
    filters += [f"--exclude {' '.join(selection.exclude)}"] if selection.exclude else []
    key = "include" if selection.include else "exclude" if selection.exclude else "source"
    return ConfigError(
        key,
        f"{location}: {counts.listed} files listed, 0 selected by {' and '.join(filters)}; "
        f"globs match the path under SOURCE, ignoring case; {advice}",
    )


_END = object()

# Files listed ahead of the run at most (a few hundred bytes each): the census's totals come from the listing as
# far as it has gone, and the memory a listing of millions of objects holds stays bounded.
LISTED_AHEAD = 100_000


class ReadAhead:
    """SOURCE's selected files (filters, shard), listed on a daemon thread up to LISTED_AHEAD files ahead of the
    run, and taken in listing order by iterating. Watchers hear of each file as it is listed. A listing error is
    raised where the files are taken. `close` stops the listing (a run that stops early)."""

    def __init__(
        self,
        source: Store,
        selection: SelectionConfig,
        watchers: Sequence[ListingWatcher] = (),
        ahead: int = LISTED_AHEAD,
    ):
        self.source, self.selection, self.watchers = source, selection, watchers
        self.counts = ListingCounts()
        self._items: queue.Queue[object] = queue.Queue(maxsize=ahead)
        self._closed = threading.Event()
        # The caller's context (the run id in every log line) goes with the thread, as ordered_map's workers do.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._list,), name="listing", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[InputFile]:
        while (got := self._items.get()) is not _END:
            if isinstance(got, BaseException):
                raise got
            yield got  # type: ignore[misc]

    def close(self) -> None:
        self._closed.set()

    def _list(self) -> None:
        shard = self.selection.shard
        try:
            for item in self.source.list(self.selection.include, self.selection.exclude, self.counts):
                if shard is None or shard.owns(item.key):
                    self._tell_watchers(lambda watcher, item=item: watcher.listed(item))
                    if not self._put(item):
                        return
            self._tell_watchers(lambda watcher: watcher.listing_done())
            self._put(_END)
        except BaseException as exc:  # handed to the run, which stops with it as it did when listing itself
            self._put(exc)

    def _put(self, entry: object) -> bool:
        """Hand an entry to the run, waiting while it is LISTED_AHEAD behind; False once the run has stopped."""
        while not self._closed.is_set():
            try:
                self._items.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _tell_watchers(self, tell: Callable[[ListingWatcher], None]) -> None:
        for watcher in self.watchers:
            try:
                tell(watcher)
            except Exception as exc:  # a watcher is a courtesy (progress): it never stops the run
                log.debug("listing watcher failed: %s", exc)
