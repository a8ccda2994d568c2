"""Bounded background work that keeps the model busy: results come back in input order, a few items ahead."""

from __future__ import annotations

import contextlib
import contextvars
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
