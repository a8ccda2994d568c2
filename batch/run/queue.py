"""Queue mode: the files of a run come from an SQS queue's messages instead of SOURCE's listing.

One work item per S3 object a message names (an S3 event may hold several records); the message is deleted once
every one of its files has a manifest (succeeded or failed) or was found done already (the same skip rules as a
folder run). While a file is in work a heartbeat thread keeps its message invisible to other consumers (every
third of the queue's visibility timeout); a consumer that dies stops the heartbeat, so the message comes back
when its visibility runs out, and the queue's redrive policy takes one that keeps coming back to the dead-letter
queue. At the run's end, whatever ended it, messages not finished are made visible again at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from batch.common.errors import describe
from batch.run.config import SelectionConfig
from batch.run.report import QueueCounts
from batch.run.to_do import ToDo
from batch.storage import InputFile, Store
from batch.storage.names import is_selected
from batch.storage.sqs import QueuedObjects, QueueMessage, SqsQueue, UnreadableMessage

log = logging.getLogger(__name__)


@dataclass
class _Held:
    message: QueueMessage
    keys: set[str] = field(default_factory=set)  # its files not finished yet


class QueueToDo(ToDo):
    """The files to do, one queue message at a time, as the run asks for them."""

    def __init__(
        self,
        queue: SqsQueue,
        idle_seconds: float | None,
        selection: SelectionConfig,
        settings_hash: str,
        source: QueuedObjects,
        dest: Store,
        stopping: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(selection, settings_hash, source, dest)
        self.queue, self.idle_seconds, self.objects = queue, idle_seconds, source
        self.stopping, self.clock = stopping, clock
        self.counts = QueueCounts()
        self._held: dict[str, _Held] = {}  # by message id
        self._receive_counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._beating = False
        self._paused = False
        self._empty_since: float | None = None  # when the polls that found nothing in a row began

    def pending(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """The queue's files as they come. Pauses (ends, with `more_to_come`) when a poll finds the queue empty
        while files are in work: the pipeline holds files until a batch is full, so it must hear that no more
        are coming now, finish them and have their messages deleted; the run then asks again."""
        if not self._beating:
            self._beating = True
            threading.Thread(target=self._beat, name="queue-heartbeat", daemon=True).start()
        self._paused = False
        # Idle is counted over polls that found nothing in a row, never over the time the run spent on files
        # between two polls: a queue that still holds messages is not idle, however slowly the run takes them.
        while not self.stopping() and not self._closed.is_set():
            wait: float = LONG_POLL
            if self.idle_seconds is not None:
                waited = 0.0 if self._empty_since is None else self.clock() - self._empty_since
                wait = min(LONG_POLL, self.idle_seconds - waited)
                if wait <= 0:
                    log.info("%s: empty for %.0f s, stopping (--queue-idle)", self.queue.location, self.idle_seconds)
                    return
            in_work = self._in_work()
            polled_at = self.clock()
            received = self.queue.receive(wait_seconds=0 if in_work else max(1, int(wait + 0.999)))
            if not received:
                self._empty_since = polled_at if self._empty_since is None else self._empty_since
                if in_work:
                    self._paused = True
                    return
                continue
            self._empty_since = None
            for message in received:
                yield from self._files_of(message, on_skipped)

    def more_to_come(self) -> bool:
        return self._paused and not self.stopping() and not self._closed.is_set()

    def _in_work(self) -> bool:
        with self._lock:
            return bool(self._held)

    def _files_of(
        self, message: QueueMessage | tuple[str, str, int, UnreadableMessage], on_skipped: Callable[[str], None]
    ) -> Iterator[InputFile]:
        self.counts.received += 1
        if self._closed.is_set():  # the run ended while this poll waited: for another consumer, now
            receipt = message.receipt if isinstance(message, QueueMessage) else message[1]
            self.queue.set_visibility([receipt], 0)
            self.counts.returned += 1
            return
        if not isinstance(message, QueueMessage):
            message_id, _, receive_count, problem = message
            self.counts.unreadable += 1
            log.error("queue message %s (receive %d) left for the dead letters: %s", message_id, receive_count, problem)
            return
        if message.test_event:
            self.counts.test_events += 1
            self._delete(message)
            return
        log.info(
            "queue message %s: %d objects (receive %d)", message.message_id, len(message.objects), message.receive_count
        )
        held = _Held(message)
        with self._lock:
            self._held[message.message_id] = held
        items = []
        for bucket, key in message.objects:
            if not is_selected(key, self.selection.include, self.selection.exclude):
                log.info(
                    "s3://%s/%s is not selected (a media file, --include, --exclude): not transcribed", bucket, key
                )
                continue
            item = self.objects.item(bucket, key)
            held.keys.add(key)
            self._receive_counts[key] = message.receive_count
            items.append(item)
        for item in items:
            done = not self.selection.force and self._is_done(item)
            if done:
                on_skipped(item.key)
                self.written(item.key)
            else:
                yield item
        if not items:
            self._delete_if_finished(message.message_id)

    def receive_count(self, key: str) -> int | None:
        return self._receive_counts.get(key)

    def written(self, key: str) -> None:
        """The file's manifest is written (or it was done already): its message goes once all its files are."""
        with self._lock:
            waiting = [message_id for message_id, held in self._held.items() if key in held.keys]
            for message_id in waiting:
                self._held[message_id].keys.discard(key)
        for message_id in waiting:
            self._delete_if_finished(message_id)

    def _delete_if_finished(self, message_id: str) -> None:
        with self._lock:
            held = self._held.get(message_id)
            if held is None or held.keys:
                return
            del self._held[message_id]
        self._delete(held.message)

    def _delete(self, message: QueueMessage) -> None:
        try:
            self.queue.delete(message.receipt)
            self.counts.deleted += 1
        except Exception as exc:  # it comes back, and is found done then
            log.warning("could not delete queue message %s: %s", message.message_id, describe(exc)["message"])

    def close(self) -> None:
        """Messages not finished become visible again at once (a stop, an error); the heartbeat ends."""
        self._closed.set()
        with self._lock:
            left = [held.message.receipt for held in self._held.values()]
            self._held.clear()
        if not left:
            return
        try:
            self.queue.set_visibility(left, 0)
            self.counts.returned += len(left)
            log.info("%d queue messages not finished made visible again", len(left))
        except Exception as exc:  # they come back when their visibility runs out
            log.warning("could not make %d queue messages visible again: %s", len(left), describe(exc)["message"])

    def _beat(self) -> None:
        every = max(1.0, self.queue.visibility_timeout / 3)
        while not self._closed.wait(every):
            with self._lock:
                receipts = [held.message.receipt for held in self._held.values()]
            if not receipts:
                continue
            try:
                refused = self.queue.set_visibility(receipts, self.queue.visibility_timeout)
                if refused:
                    log.warning("the visibility of %d queue messages could not be extended", len(refused))
            except Exception as exc:  # the next beat tries again; past the timeout another consumer may take it
                log.warning("could not extend the queue messages' visibility: %s", describe(exc)["message"])


LONG_POLL = 10  # seconds: a stop is seen once the poll returns
