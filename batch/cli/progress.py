"""Progress of a run for the people and schedulers watching it: a bar on a terminal, a log line every so often
elsewhere (cron, Kubernetes), both by audio seconds where SOURCE can say how long its files are.

The totals come from a census of the run's own listing (SOURCE is listed once, ahead of the run, on a thread):
the files it selects (filters and shard), and, for local files, the duration their headers declare (no
decoding, on a thread of the census's own; an S3 object would cost a download, so there progress is by
files). Every file counted by the run, done, failed, skipped or taken by another worker, moves the figures on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batch.engine.audio import declared_seconds
from batch.run.tally import FileEvent
from batch.storage import InputFile, Store

log = logging.getLogger(__name__)


@dataclass
class Figures:
    """What is known so far: totals from the census, and what the run has got through."""

    files_total: int = 0
    listed: bool = False  # the census has seen the whole listing
    seconds_total: float = 0.0
    timed_files: int = 0  # files whose duration the census knows
    files_done: int = 0
    seconds_done: float = 0.0  # of files done, as the census timed them
    seconds_transcribed: float = 0.0  # of files the models read in this run: the speed
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def by_audio(self) -> bool:
        return self.listed and self.files_total > 0 and self.timed_files == self.files_total

    def share_done(self) -> float | None:
        if not self.listed or not self.files_total:
            return None
        if self.by_audio and self.seconds_total:
            return min(1.0, self.seconds_done / self.seconds_total)
        return self.files_done / self.files_total

    def eta_seconds(self, elapsed: float) -> float | None:
        """Time left at the speed so far (audio seconds per wall second when timed, else files)."""
        share = self.share_done()
        if share is None or elapsed <= 0 or self.seconds_transcribed <= 0:
            return None
        if self.by_audio:
            return (self.seconds_total - self.seconds_done) / (self.seconds_transcribed / elapsed)
        return elapsed / share * (1 - share) if share else None


class Census:
    """Counts (and, for local files, times) what the run lists, as it lists it (a `ListingWatcher`): the run's
    own listing, never a second one. Headers are read on a daemon thread of the census's own, so the listing is
    never held up."""

    def __init__(self, source: Store, figures: Figures):
        self.figures = figures
        self.local_path = getattr(source, "path", None)
        self.lock = threading.Lock()
        self._to_time: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._time_files, name="census", daemon=True)
        self._thread.start()

    def listed(self, item: InputFile) -> None:
        with self.lock:
            self.figures.files_total += 1
        if self.local_path is not None:
            self._to_time.put(item.key)

    def listing_done(self) -> None:
        self._to_time.put(None)

    def _time_files(self) -> None:
        while (key := self._to_time.get()) is not None:
            try:
                seconds = _duration(self.local_path(key))
            except Exception as exc:  # progress is a courtesy: a file it cannot time is counted untimed
                log.debug("progress census: %s: %s", key, exc)
                seconds = None
            if seconds is not None:
                with self.lock:
                    self.figures.durations[key] = seconds
                    self.figures.seconds_total += seconds
                    self.figures.timed_files += 1
        with self.lock:
            self.figures.listed = True


def _duration(path: Any) -> float | None:
    try:
        with open(path, "rb") as stream:
            return declared_seconds(stream)
    except OSError:
        return None


class Progress:
    """A tqdm bar over audio seconds (or files) on a terminal; elsewhere a log line every `interval` seconds."""

    def __init__(self, terminal: bool, interval: float, clock: Callable[[], float] = time.monotonic):
        self.terminal, self.interval, self.clock = terminal, interval, clock
        self.figures = Figures()
        self.census: Census | None = None
        self._bar: Any = None
        self._stack = contextlib.ExitStack()
        self._started = clock()
        self._stop = threading.Event()

    def census_of(self, source: Store) -> Census:
        """The census that gives this progress its totals, to be handed the run's listing (Job.watch_listing)."""
        self.census = Census(source, self.figures)
        return self.census

    def __enter__(self) -> Progress:
        self._started = self.clock()
        if self.terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())
            self._bar = self._stack.enter_context(
                tqdm(
                    total=100.0,
                    unit="%",
                    desc="transcribing",
                    dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                )
            )
        elif self.interval > 0:
            ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            ticker.start()
            self._stack.callback(self._stop.set)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def update(self, event: FileEvent) -> None:
        lock = self.census.lock if self.census is not None else contextlib.nullcontext()
        with lock:
            figures = self.figures
            figures.files_done += 1
            figures.seconds_done += figures.durations.get(event.key, event.audio_seconds)
            if event.status in ("succeeded", "failed"):
                figures.seconds_transcribed += event.audio_seconds
        if self._bar is not None:
            self._refresh_bar()

    def line(self) -> str:
        """`12/40 files (30%), 1.20/4.00 audio h, 2.1x realtime, ETA 0:35:10`, as far as it is known."""
        figures, elapsed = self.figures, self.clock() - self._started
        total = str(figures.files_total) if figures.listed else f"{figures.files_total}+"
        parts = [f"{figures.files_done}/{total} files"]
        share = figures.share_done()
        if share is not None:
            parts[0] += f" ({share:.0%})"
        if figures.by_audio:
            parts.append(f"{figures.seconds_done / 3600:.2f}/{figures.seconds_total / 3600:.2f} audio h")
        if figures.seconds_transcribed and elapsed > 0:
            parts.append(f"{figures.seconds_transcribed / elapsed:.1f}x realtime")
        eta = figures.eta_seconds(elapsed)
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return ", ".join(parts)

    def _refresh_bar(self) -> None:
        share = self.figures.share_done()
        if share is not None:
            self._bar.n = round(share * 100, 1)
        self._bar.set_postfix_str(self.line(), refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            figures = self.figures
            fields = {
                "event": "progress",
                "files_done": figures.files_done,
                "files_total": figures.files_total if figures.listed else None,
                "audio_seconds_done": round(figures.seconds_done, 3),
                "audio_seconds_total": round(figures.seconds_total, 3) if figures.by_audio else None,
                "share_done": figures.share_done(),
            }
            log.info("progress: %s", self.line(), extra={"fields": fields})


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def for_terminal(quiet: bool, log_format: str) -> bool:
    return not (quiet or log_format == "json") and sys.stderr.isatty()
