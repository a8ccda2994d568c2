"""The listing as a source of work: SOURCE's files, selected (filters, shard), and not already done (the skip
check, batch.run.work.skip).

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
from batch.common.errors import BatchError, ConfigError, EnvironmentProblem
from batch.run.config import SelectionConfig
from batch.run.report import RunReport
from batch.run.work.skip import SkipCheck
from batch.storage import InputFile, ListingCounts, Store

log = logging.getLogger(__name__)

# Skip checks on S3 are requests: run this many at once, this many listing entries ahead.
SKIP_CHECK_WORKERS = 16
SKIP_CHECK_AHEAD = 64


class ListingWatcher(Protocol):
    """Hears of SOURCE's listing as the run reads it, on the listing's thread: it must not block."""

    def listed(self, item: InputFile) -> None: ...
    def listing_done(self) -> None: ...


class Listing:
    """The files a run must do, from SOURCE's listing: selected (filters, shard) and not done already (the skip
    check, beside the listing). A listing ends: there is never more to come, and nothing to hand back."""

    waits = False  # the next file is a listing entry away, never a long wait

    def __init__(
        self,
        selection: SelectionConfig,
        settings_hash: str,
        source: Store,
        dest: Store,
        watchers: Sequence[ListingWatcher] = (),
        on_left: Callable[[str, Exception], None] = lambda key, exc: None,
    ):
        self.selection, self.source = selection, source
        self.checks = SkipCheck(selection, settings_hash, source, dest, on_left)
        self.watchers = watchers
        self._listed = False

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
            checks = ordered_map(self.checks.is_done, listing, workers=SKIP_CHECK_WORKERS, ahead=SKIP_CHECK_AHEAD)
            for item, done in checks:  # an error of the listing itself is raised here, and ends the run
                try:
                    already_done = done.result()
                except BatchError:
                    raise
                except Exception as exc:  # DEST (or SOURCE's fingerprint) could not be read, after retries
                    unreadable_in_a_row += 1
                    self.checks.leave(item, exc, unreadable_in_a_row)
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
        for folder, reason in counts.unreadable:
            problem = EnvironmentProblem(
                f"SOURCE folder {folder} could not be read ({reason}); its files were not listed"
            )
            self.checks.on_left(f"{folder}/", problem)
        if counts.selected == 0 and not counts.unreadable and not self.selection.allow_empty:
            raise nothing_selected(self.source.location, counts, self.selection)

    look = pending  # a listing takes nothing: to look is to list

    def problem(self, key: str) -> Exception | None:
        return self.checks.blocked(key)

    def finished(self, key: str) -> None:
        """Nothing to do: a later run does a file that got no manifest."""

    def more_to_come(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing held."""

    def record(self, report: RunReport) -> None:
        report.other_settings = self.checks.other_settings


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
