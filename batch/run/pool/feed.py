"""The runner's decoded files, pulled on a thread of their own for the pool.

The runner fetches and decodes ahead, but the next file can still take a while (a large object from S3, a
long video). Pulled on the pool's own thread, that wait would hold up everything else the pool does: answering
other workers, handing finished files to the writer, passing a stop on within the grace period. Here it waits
on a thread, and the pool takes only what is ready; `readable` is a socket that has data while a file waits,
for the pool's `multiprocessing.connection.wait`.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from batch.engine.pipeline import DecodedFile

PUT_WAIT_SECONDS = 0.2  # how often a full queue checks whether the pool has closed


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


class Feed:
    def __init__(self, source: Iterator[DecodedFile], room: int):
        self._source = source
        self._ready: queue.Queue[object] = queue.Queue(maxsize=max(1, room))
        self.readable, self._writable = socket.socketpair()
        self.readable.setblocking(False)
        self._closed = threading.Event()
        self.exhausted = False  # the runner has no more files (seen by the pool once it took the end)
        context = contextvars.copy_context()  # the run's log context (run id) on the thread's lines too
        self._thread = threading.Thread(target=context.run, args=(self._pull,), name="pool-feed", daemon=True)
        self._thread.start()

    def take(self) -> DecodedFile | None:
        """The next decoded file if one is ready, else None (see `exhausted`). Raises what the runner raised."""
        try:
            item = self._ready.get_nowait()
        except queue.Empty:
            # A byte whose file was taken before the byte came would keep `readable` ready for nothing (the
            # pool would spin): with nothing queued, the bytes there are such ones. A file queued meanwhile is
            # taken now, whether its byte went with them or is still to come (and goes the same way).
            with contextlib.suppress(BlockingIOError):
                while self.readable.recv(4096):
                    pass
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return None
        with contextlib.suppress(BlockingIOError):
            self.readable.recv(1)
        if item is _END:
            self.exhausted = True
            return None
        if isinstance(item, _Failed):
            self.exhausted = True
            raise item.error
        assert isinstance(item, DecodedFile)
        return item

    def close(self) -> None:
        """Stop pulling and wait for the thread (it may finish the fetch in hand, never starts another), so the
        runner can close its source after this."""
        self._closed.set()
        self._thread.join()
        self.readable.close()
        self._writable.close()

    def _pull(self) -> None:
        try:
            for file in self._source:
                if not self._put(file) or self._closed.is_set():
                    return
        except BaseException as exc:
            self._put(_Failed(exc))
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._ready.put(item, timeout=PUT_WAIT_SECONDS)
            except queue.Full:
                continue
            with contextlib.suppress(OSError):
                self._writable.send(b".")
            return True
        return False
