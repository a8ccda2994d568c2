"""ordered_map_fed: items pulled on a thread of their own, each call's result handed back in order; the feeding
thread ends once the taker has gone, whatever the window holds."""

from __future__ import annotations

import threading
import time

from batch.common.concurrency import ordered_map_fed


def feed_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "feed"]


def test_results_come_in_order_of_the_items() -> None:
    results = [(item, future.result()) for item, future in ordered_map_fed(lambda n: n * n, range(6), 2, 2)]
    assert results == [(n, n * n) for n in range(6)]


def test_the_feeding_thread_ends_when_the_taker_stops_with_the_window_full() -> None:
    """The taker leaves after one item while the feeder, ahead of it, has filled the window and holds one more:
    the feeder must not wait for ever to hand it over (a thread left behind at every queue pause)."""
    before = set(feed_threads())
    pulled = threading.Event()

    def items():  # type: ignore[no-untyped-def]
        for n in range(100):
            if n == 3:
                pulled.set()  # the window (2) is full and the feeder holds the fourth
            yield n

    fed = ordered_map_fed(lambda n: n, items(), workers=1, ahead=2)
    next(fed)
    assert pulled.wait(10)
    fed.close()
    deadline = time.monotonic() + 10
    while set(feed_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(feed_threads()) - before


def test_an_error_pulling_the_items_is_raised_where_they_are_taken() -> None:
    def items():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("the queue cannot be read")

    fed = ordered_map_fed(lambda n: n, items(), workers=1, ahead=1)
    assert next(fed)[0] == 1
    try:
        next(fed)
    except ValueError as exc:
        assert "cannot be read" in str(exc)
    else:
        raise AssertionError("the error was not raised")
