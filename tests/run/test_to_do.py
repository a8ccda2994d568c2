"""SOURCE listed once per run, on a thread ahead of the run: every selected file in order, watchers told as it is
listed (only the first listing), a bounded number of files held ahead, a listing error raised where the run
takes its files, and the listing stopped when the run stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.common.errors import EnvironmentProblem
from batch.run.config import SelectionConfig
from batch.run.job import Job
from batch.run.work.listing import ReadAhead
from batch.settings.options import load_settings
from batch.settings.shard import Shard
from batch.storage import InputFile, open_store
from batch.storage.local import LocalStore
from tests.conftest import tone
from tests.fakes import FakePipeline

NAMES = [f"call{i:02d}.wav" for i in range(12)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for name in NAMES:
        tone(root / name, seconds=0.2)
    return root


class Census:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.done = 0

    def listed(self, item: InputFile) -> None:
        self.keys.append(item.key)

    def listing_done(self) -> None:
        self.done += 1


def test_every_selected_file_in_order_and_watchers_hear_each(folder: Path) -> None:
    census = Census()
    selection = SelectionConfig(exclude=("call0*",), shard=Shard(0, 2))
    taken = [item.key for item in ReadAhead(open_store(str(folder)), selection, [census])]
    expected = [name for name in NAMES if not name.startswith("call0") and Shard(0, 2).owns(name)]
    assert taken == census.keys == expected and census.done == 1


class CensusUntil(Census):
    """A census that says when it has heard of `count` files."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count, self.reached = count, threading.Event()

    def listed(self, item: InputFile) -> None:
        super().listed(item)
        if len(self.keys) >= self.count:
            self.reached.set()


def test_the_listing_waits_while_the_run_is_its_bound_behind(folder: Path) -> None:
    census = CensusUntil(1 + 2 + 1)  # taken, queued, and one waiting to be put
    listing = ReadAhead(open_store(str(folder)), SelectionConfig(), [census], ahead=2)
    items = iter(listing)
    first = next(items)
    assert census.reached.wait(10)
    # The queue is full, so the listing can go no further until the run takes a file: it stops at its bound.
    assert listing._items.full() and len(census.keys) == 1 + 2 + 1 and first.key == NAMES[0]
    assert [first.key] + [item.key for item in items] == NAMES and census.done == 1


def test_a_listing_error_is_raised_where_the_run_takes_its_files(folder: Path, monkeypatch) -> None:
    real = LocalStore.list

    def breaks_after_three(self, *args, **kwargs) -> Iterator[InputFile]:  # type: ignore[no-untyped-def]
        for count, item in enumerate(real(self, *args, **kwargs)):
            if count == 3:
                raise EnvironmentProblem("SOURCE: the volume went away")
            yield item

    monkeypatch.setattr(LocalStore, "list", breaks_after_three)
    taken = []
    with pytest.raises(EnvironmentProblem, match="went away"):
        for item in ReadAhead(open_store(str(folder)), SelectionConfig()):
            taken.append(item.key)
    assert taken == NAMES[:3]

    report = Job(
        load_settings({"source": str(folder), "out": str(folder.parent / "out"), "device": "cpu"}),
        environ={},
        pipeline=FakePipeline(),
    ).run()
    assert report.exit_code == 3 and report.error is not None and "went away" in report.error.message
    assert set(report.succeeded) <= set(NAMES[:3])  # what was taken before the error, never a file after it


def test_a_stopped_run_stops_the_listing(folder: Path, monkeypatch) -> None:
    real, listed, closed = LocalStore.list, [], threading.Event()

    def held_until_closed(self, *args, **kwargs) -> Iterator[InputFile]:  # type: ignore[no-untyped-def]
        for item in real(self, *args, **kwargs):
            listed.append(item.key)
            if len(listed) > 2:
                closed.wait(10)  # a listing still going when the run stops
            yield item

    monkeypatch.setattr(LocalStore, "list", held_until_closed)
    listing = ReadAhead(open_store(str(folder)), SelectionConfig(), ahead=1)
    next(iter(listing))
    listing.close()
    closed.set()
    listing._thread.join(timeout=5)
    assert not listing._thread.is_alive() and len(listed) < len(NAMES)


def test_watchers_hear_only_the_first_listing_of_a_job(folder: Path, tmp_path: Path) -> None:
    """A dry run's pending() then run(): the census counts the run's files once."""
    census = Census()
    job = Job(
        load_settings({"source": str(folder), "out": str(tmp_path), "device": "cpu"}),
        environ={},
        pipeline=FakePipeline(),
    )
    job.watch_listing(census)
    assert len(list(job.pending())) == len(NAMES)
    job.run()
    assert census.keys == NAMES and census.done == 1


def test_the_listing_thread_keeps_the_callers_log_context(folder: Path) -> None:
    from batch.common.logs import run_id_var

    seen: list[str | None] = []

    class Spy(Census):
        def listed(self, item: InputFile) -> None:
            seen.append(run_id_var.get(None))

    def in_a_run() -> None:
        run_id_var.set("run-42")
        list(ReadAhead(open_store(str(folder)), SelectionConfig(), [Spy()]))

    thread = threading.Thread(target=in_a_run)
    thread.start()
    thread.join()
    assert seen == ["run-42"] * len(NAMES)


class Remover(Census):
    """A watcher that removes the file listed after the one it hears of: a file gone between the reading of
    its folder and its stat, as when another process moves files out of a drop folder."""

    def __init__(self, root: Path, after: str, removed: str) -> None:
        super().__init__()
        self.root, self.after, self.removed = root, after, removed

    def listed(self, item: InputFile) -> None:
        super().listed(item)
        if item.key == self.after:
            (self.root / self.removed).unlink()


def test_a_file_removed_while_the_listing_reads_its_folder_is_skipped_and_the_listing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 34 #12."""
    source = tmp_path / "in"
    for name in NAMES[:4]:
        tone(source / name, seconds=0.2)
    remover = Remover(source, after=NAMES[0], removed=NAMES[1])
    job = Job(
        load_settings({"source": str(source), "out": str(tmp_path / "out"), "device": "cpu"}),
        environ={},
        pipeline=FakePipeline(),
    )
    job.watch_listing(remover)
    with caplog.at_level("WARNING"):
        report = job.run()
    assert report.exit_code == 0 and report.error is None
    assert report.succeeded == [NAMES[0], *NAMES[2:4]] and not report.failed
    assert remover.keys == report.succeeded and remover.done == 1
    assert f"{NAMES[1]}: gone from SOURCE while it was listed; skipped" in caplog.text
