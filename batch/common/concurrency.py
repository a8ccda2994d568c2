"""Bounded background work that keeps the model busy: results come back in input order, a few items ahead."""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ordered_map(
    func: Callable[[In], Out], items: Iterable[In], workers: int, ahead: int
) -> Iterator[tuple[In, Future[Out]]]:
    """Yield (item, future of func(item)) in input order, with at most `ahead` items started beyond the one
    yielded (so memory stays bounded). `ahead=0` runs each call inline, when its item is reached.

    `items` is pulled lazily, on the caller's thread. Stopping early cancels what has not started.
    """
    if ahead <= 0:
        for item in items:
            future: Future[Out] = Future()
            try:
                future.set_result(func(item))
            except BaseException as exc:  # handed to the caller through the future, like a pool would
                future.set_exception(exc)
            yield item, future
        return
    source = iter(items)
    window: deque[tuple[In, Future[Out]]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prefetch") as pool:
        try:
            while True:
                while len(window) <= ahead:
                    item = next(source, _END)
                    if item is _END:
                        break
                    # Each call runs in a copy of the caller's context, so log lines keep the run id.
                    window.append((item, pool.submit(contextvars.copy_context().run, func, item)))
                if not window:
                    return
                yield window.popleft()
        finally:
            for _, pending in window:
                pending.cancel()
            with contextlib.suppress(Exception):
                pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def ordered_map_fed(
    func: Callable[[In], Out], items: Iterable[In], workers: int, ahead: int
) -> Iterator[tuple[In, Future[Out]]]:
    """As `ordered_map`, for `items` whose next one may be long in coming (a queue's long poll): they are pulled
    on a thread of their own, so an item whose call is done is yielded at once, not after the next one comes.
    At most `ahead` items wait beyond the one yielded (one more in the feeding thread's hands). Closing stops the
    feeding once its current pull returns; the items it pulled after that are not called."""
    if ahead <= 0:
        yield from ordered_map(func, items, workers, ahead)
        return
    window: queue.Queue[object] = queue.Queue(maxsize=ahead)
    closed = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prefetch")

    def offer(entry: object) -> None:
        """Into the window, unless the taker has gone (closed): then the thread ends instead of waiting for ever."""
        while not closed.is_set():
            try:
                window.put(entry, timeout=0.2)
                return
            except queue.Full:
                continue

    def feed() -> None:
        try:
            for item in items:
                if closed.is_set():
                    return
                offer((item, pool.submit(contextvars.copy_context().run, func, item)))
            offer(_END)
        except BaseException as exc:  # raised where the items are taken, as ordered_map does
            offer(exc)

    feeder = threading.Thread(target=contextvars.copy_context().run, args=(feed,), name="feed", daemon=True)
    feeder.start()
    try:
        while (entry := window.get()) is not _END:
            if isinstance(entry, BaseException):
                raise entry
            yield entry  # type: ignore[misc]
    finally:
        closed.set()
        while True:
            try:
                left = window.get_nowait()
            except queue.Empty:
                break
            if isinstance(left, tuple):
                left[1].cancel()
        pool.shutdown(wait=True, cancel_futures=True)
