"""The pool's feed: the runner's decoded files pulled on a thread, taken only when ready."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import wait

import numpy as np
import pytest

from batch.engine.pipeline import DecodedFile, Stopwatch
from batch.run.pool.feed import Feed


def decoded(key: str) -> DecodedFile:
    return DecodedFile(key, np.zeros(16000, dtype=np.float32), Stopwatch())


def take_next(feed: Feed, timeout: float = 10.0) -> DecodedFile | None:
    """Wait, as the pool does, until a file is ready or the feed has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait([feed.readable], timeout=0.5)
        file = feed.take()
        if file is not None or feed.exhausted:
            return file
    raise AssertionError("the feed gave nothing in time")


def test_files_come_in_order_then_the_end() -> None:
    feed = Feed(iter([decoded("a"), decoded("b"), decoded("c")]), room=1)
    try:
        assert [take_next(feed).key for _ in range(3)] == ["a", "b", "c"]  # type: ignore[union-attr]
        assert take_next(feed) is None and feed.exhausted
    finally:
        feed.close()


def test_a_file_still_decoding_is_not_waited_for() -> None:
    release = threading.Event()

    def slow() -> Iterator[DecodedFile]:
        release.wait(10)
        yield decoded("late")

    feed = Feed(slow(), room=2)
    try:
        taken: list[DecodedFile | None] = []
        returned = threading.Event()
        threading.Thread(target=lambda: (taken.append(feed.take()), returned.set()), daemon=True).start()
        assert returned.wait(10)  # take() came back while the file was still decoding: it did not wait for it
        assert taken == [None] and not feed.exhausted
        assert wait([feed.readable], timeout=0.2) == []  # nothing ready: the pool sleeps, it does not spin
        release.set()
        assert take_next(feed).key == "late"  # type: ignore[union-attr]
    finally:
        feed.close()


def test_what_the_runner_raises_is_raised_by_take() -> None:
    def broken() -> Iterator[DecodedFile]:
        yield decoded("a")
        raise RuntimeError("the listing broke")

    feed = Feed(broken(), room=4)
    try:
        assert take_next(feed).key == "a"  # type: ignore[union-attr]
        with pytest.raises(RuntimeError, match="the listing broke"):
            take_next(feed)
    finally:
        feed.close()


def test_close_stops_pulling_and_frees_the_source_for_its_owner() -> None:
    pulled: list[int] = []

    def endless() -> Iterator[DecodedFile]:
        for number in range(10_000):
            pulled.append(number)
            yield decoded(str(number))

    source = endless()
    feed = Feed(source, room=2)
    take_next(feed)
    feed.close()
    assert len(pulled) < 10  # a full queue held the thread back, and close let it go
    source.close()  # the runner closes its generator after the pool: no "generator already executing"
