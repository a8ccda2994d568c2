"""The queue as a source of work (--queue): the files of a run come from an SQS queue's messages instead of
SOURCE's listing.

One work item per S3 object a message names (an S3 event may hold several records); the message is deleted once
DEST holds a manifest (succeeded or failed) of the version it saw for every one of its files, or they were found
done already (the same skip rules as a folder run); a file whose write failed sends its message back. While a
file is in work a heartbeat thread keeps its message invisible to other consumers (every third of the queue's
visibility timeout); a consumer that dies stops the heartbeat, so the message comes back when its visibility
runs out, and the queue's redrive policy takes one that keeps coming back to the dead-letter queue. At the
run's end, whatever ended it, messages not finished are made visible again at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from batch.common.errors import BatchError, describe
from batch.run.config import SelectionConfig
from batch.run.report import QueueCounts, RunReport
from batch.run.work.delivery import gone_after_done, manifest_confirms, poison_manifest, release_backoff
from batch.run.work.skip import SkipCheck
from batch.storage import InputFile, Store
from batch.storage.names import is_selected
from batch.storage.sqs import QueuedObjects, QueueMessage, SqsQueue, UnreadableMessage

log = logging.getLogger(__name__)


@dataclass
class _Held:
    message: QueueMessage
    files: Counter[str] = field(default_factory=Counter)  # its files not finished yet, by key
    comes_back: bool = False  # a file of it ended with no manifest of the version it saw: not deleted, released


@dataclass(frozen=True)
class _Work:
    """One object a held message names."""

    message_id: str
    bucket: str
    key: str
    receive_count: int  # its message's


class QueueSource:
    """The files to do, one queue message at a time, as the run asks for them.

    A key is in work from the moment it is handed to the run until its write has ended (`finished`): never twice
    at once. A message that names a key in work (a retried PUT, an overwrite, S3 delivering an event twice) waits,
    held, until that file is written, then is looked at anew (HEAD, skip check): the same version is skipped, a
    newer one redone. A message is deleted only once DEST holds a manifest of the version it saw for each of its
    files; otherwise (a write that failed, no place for the manifest) it is made visible again, so that it comes
    back and, if it keeps failing, reaches the dead-letter queue. Each file handed out carries its message's
    receive count (`InputFile.receive_count`), for its manifest.
    """

    waits = True  # the next file may be a long poll away: the run must not hold finished files meanwhile

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
        on_left: Callable[[str, Exception], None] = lambda key, exc: None,
        grace_left: Callable[[], float] = lambda: 25.0,
    ):
        self.checks = SkipCheck(selection, settings_hash, source, dest, on_left)
        self.selection, self.settings_hash, self.dest = selection, settings_hash, dest
        self.queue, self.idle_seconds, self.objects = queue, idle_seconds, source
        self.stopping, self.clock, self.grace_left = stopping, clock, grace_left
        self.counts = QueueCounts()
        self._held: dict[str, _Held] = {}  # by message id
        self._in_work: dict[str, tuple[str, InputFile]] = {}  # key -> (message id, the version handed to the run)
        self._waiting: dict[str, list[_Work]] = {}  # key in work -> later messages' files of that key
        self._ready: list[_Work] = []  # files that waited, their key free again: looked at anew
        self._recorded: dict[str, str] = {}  # key -> the version this run wrote a manifest of (done or failed)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Held while `pending` takes a step (a poll, a HEAD, a skip's delete): `close` waits for the step in flight.
        self._stepping = threading.RLock()
        self._heartbeat: threading.Thread | None = None
        self._paused = False
        self._idle_for = 0.0  # seconds spent in polls that found nothing, in a row
        self._unreadable_in_a_row = 0  # skip checks that could not read DEST, one after another

    def pending(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """The queue's files as they come. Pauses (ends, with `more_to_come`) when a poll finds the queue empty
        while files are in work, or a message waits for a key in work: the pipeline holds files until a batch is
        full, so it must hear that no more are coming now, finish them and have their messages deleted; the run
        then asks again. Each step between two files holds `_stepping`, so that `close` (on another thread: the
        run pulls a queue's files on a thread of its own) waits for a request in flight instead of ending the run
        under it."""
        steps = self._steps(on_skipped)
        while True:
            with self._stepping:
                item = next(steps, None)
            if item is None:
                return
            yield item

    def _steps(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="queue-heartbeat", daemon=True)
            self._heartbeat.start()
        self._paused = False
        while not self.stopping() and not self._closed.is_set():
            with self._lock:
                ready, self._ready = self._ready, []
                in_work, waiting = bool(self._in_work), bool(self._waiting)
            if ready:
                for work in ready:
                    yield from self._take(work, on_skipped)
                continue
            if waiting:  # finish the files in work now, rather than hold more messages while one waits for them
                self._paused = True
                return
            received = self._poll(in_work)
            if received is None:  # empty
                if in_work:
                    self._paused = True
                    return
                if self.idle_seconds is not None and self._idle_for >= self.idle_seconds:
                    log.info("%s: empty for %.0f s, stopping (--queue-idle)", self.queue.location, self._idle_for)
                    return
                continue
            for message in received:
                yield from self._files_of(message, on_skipped)

    look = pending  # SQS shows a message only by receiving it (a dry run of a queue is refused)

    def _poll(self, in_work: bool) -> list[QueueMessage | tuple[str, str, int, UnreadableMessage]] | None:
        """One receive: at once while files are in work, else a long poll (no longer than --queue-idle has
        left). Idle is the time spent in polls that found nothing, in a row: never the time the run spent on
        files between two polls (docs/queue.md), so a queue that still holds messages is not idle however
        slowly the run takes them, nor one that filled while the run finished its files."""
        wait = 0
        if not in_work:
            left = LONG_POLL if self.idle_seconds is None else self.idle_seconds - self._idle_for
            wait = max(1, min(LONG_POLL, math.ceil(left)))  # --queue-idle 0 still polls once
        polled_at = self.clock()
        received = self.queue.receive(wait_seconds=wait)
        if not received:
            self._idle_for += self.clock() - polled_at
            return None
        self._idle_for = 0.0
        return received

    def more_to_come(self) -> bool:
        return self._paused and not self.stopping() and not self._closed.is_set()

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
        if self._held_again(message):
            return
        log.info(
            "queue message %s: %d objects (receive %d)", message.message_id, len(message.objects), message.receive_count
        )
        held = _Held(message)
        works = []
        for bucket, key in message.objects:
            if self._written_by_dest(bucket, key):
                log.info("s3://%s/%s lies in DEST: its outputs, clips and reports are not transcribed", bucket, key)
                continue
            if not is_selected(key, self.selection.include, self.selection.exclude):
                log.info(
                    "s3://%s/%s is not selected (a media file, --include, --exclude): not transcribed", bucket, key
                )
                continue
            held.files[key] += 1
            works.append(_Work(message.message_id, bucket, key, message.receive_count))
        with self._lock:
            self._held[message.message_id] = held
        for work in works:
            yield from self._take(work, on_skipped)
        if not works:
            self._end_if_finished(message.message_id)

    def _written_by_dest(self, bucket: str, key: str) -> bool:
        """An object under DEST (DEST under the notification's prefix): the review clips are media, and a run that
        took them would make clips of its clips all night. DEST at a bucket's root: its own folders only."""
        dest_bucket, dest_prefix = getattr(self.dest, "bucket", None), getattr(self.dest, "prefix", "")
        if bucket != dest_bucket:
            return False
        return key.startswith(dest_prefix) if dest_prefix else key.split("/", 1)[0] in DEST_FOLDERS

    def _held_again(self, message: QueueMessage) -> bool:
        """A message this run holds came back to it (its visibility ran out before the heartbeat extended it: a
        starved process, a refused extension). Its files are in work already: it is held on under its new receipt,
        the only one SQS heeds for a delete or an extension; the old receipt is void (counted `received_again`)."""
        with self._lock:
            held = self._held.get(message.message_id)
            if held is not None:
                held.message = message
        if held is None:
            return False
        self.counts.received_again += 1
        log.warning(
            "queue message %s came back while its files are in work (receive %d): held on under its new receipt",
            message.message_id,
            message.receive_count,
        )
        return True

    def _take(self, work: _Work, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """One object of a held message: handed to the run, or found done (skipped), or set to wait while its key
        is in work (for this message or another)."""
        with self._lock:
            if work.key in self._in_work:
                log.info("s3://%s/%s is in work already: its message waits until it is written", work.bucket, work.key)
                self._waiting.setdefault(work.key, []).append(work)
                return
        item = self.objects.item(work.bucket, work.key)
        if self._recorded.get(item.key) == item.version:  # a duplicate event: this run recorded this very version
            log.info("s3://%s/%s: this version has its manifest from this run already: skipped", work.bucket, work.key)
            on_skipped(item.key)
            self._file_ended(work.message_id, item.key, confirmed=True)
            return
        try:
            done = not self.selection.force and (
                self.checks.is_done(item) or gone_after_done(self.dest, item, self.settings_hash)
            )
        except BatchError:
            raise
        except Exception as exc:  # DEST could not say whether it is done, after retries: its message comes back
            self._unreadable_in_a_row += 1
            self._file_ended(work.message_id, item.key, confirmed=False)
            self.checks.leave(item, exc, self._unreadable_in_a_row)
            return
        self._unreadable_in_a_row = 0
        if done:
            on_skipped(item.key)
            self._file_ended(work.message_id, item.key, confirmed=True)
            return
        if not self.selection.force and poison_manifest(self.dest, item) is not None:
            log.warning("s3://%s/%s took down or hung what worked on it before: not tried again", work.bucket, work.key)
            self._file_ended(work.message_id, item.key, confirmed=False)  # back, until the dead letters take it
            return
        with self._lock:  # only this thread adds keys: none came in since the look above
            self._in_work[item.key] = (work.message_id, item)
        yield replace(item, receive_count=work.receive_count)

    def finished(self, key: str) -> None:
        """The file's write has ended, its manifest written or not. Its message goes once all its files are
        finished, deleted if DEST holds a manifest of the version it handed over for each, else made visible
        again; messages that waited for the key are looked at anew."""
        with self._lock:
            in_work = self._in_work.pop(key, None)
            self._ready += self._waiting.pop(key, [])
        if in_work is not None:
            message_id, item = in_work
            confirmed = manifest_confirms(self.dest, item, lambda version: self.objects.current_version(key) == version)
            if confirmed:
                self._recorded[key] = item.version
            self._file_ended(message_id, key, confirmed=confirmed)

    def _file_ended(self, message_id: str, key: str, confirmed: bool) -> None:
        with self._lock:
            held = self._held.get(message_id)
            if held is None:
                return
            held.files[key] -= 1
            if held.files[key] <= 0:
                del held.files[key]
            held.comes_back = held.comes_back or not confirmed
        self._end_if_finished(message_id)

    def _end_if_finished(self, message_id: str) -> None:
        with self._lock:
            held = self._held.get(message_id)
            if held is None or held.files:
                return
            del self._held[message_id]
        if held.comes_back:
            self._release(held.message)
        else:
            self._delete(held.message)

    def _delete(self, message: QueueMessage) -> None:
        try:
            self.queue.delete(message.receipt)
            self.counts.deleted += 1
        except Exception as exc:  # it comes back, and is found done then
            log.warning("could not delete queue message %s: %s", message.message_id, describe(exc)["message"])

    def _release(self, message: QueueMessage) -> None:
        """Back in the queue after a back-off: a file of it has no manifest, so it must come back (its receives
        count toward the dead-letter queue), not be held by the heartbeat for ever. Not at once: the same
        consumer would receive it again straight away, and a fault of a minute (DEST, a bucket policy being
        fixed) would drive every message it touches to the dead letters within seconds."""
        wait = release_backoff(message.receive_count, self.queue.visibility_timeout)
        log.warning(
            "queue message %s: a file of it has no manifest of its version; back in the queue in %d s (receive %d)",
            message.message_id,
            wait,
            message.receive_count,
        )
        try:
            self.queue.set_visibility([message.receipt], wait)
            self.counts.returned += 1
        except Exception as exc:  # it comes back when its visibility runs out
            reason = describe(exc)["message"]
            log.warning("could not set queue message %s to come back: %s", message.message_id, reason)

    def problem(self, key: str) -> Exception | None:
        return self.checks.blocked(key)

    def record(self, report: RunReport) -> None:
        report.other_settings = self.checks.other_settings
        report.queue = self.counts

    def close(self) -> None:
        """Messages not finished become visible again at once (a stop, an error); the heartbeat ends. First the
        queue's requests in flight end (a poll, a skipped file's delete, a heartbeat), within the grace period:
        the run report, written next, then counts them, and the process does not exit under them, leaving a
        message received or deleted by halves invisible until its timeout. Not past the grace period (a run being
        abandoned waits no longer), nor again in a later call (one abandoning the run while the first waits)."""
        first = not self._closed.is_set()
        self._closed.set()
        stepped = self._wait_for_step(self.grace_left() if first else 0.0)
        try:
            self._let_go()
        finally:
            if stepped:
                self._stepping.release()

    def _wait_for_step(self, seconds: float) -> bool:
        """Whether the step of `pending` in flight, if any, ended within `seconds` (then `_stepping` is held), and
        the heartbeat with it."""
        give_up_at = time.monotonic() + seconds
        stepped = self._stepping.acquire(blocking=False)
        if not stepped and seconds > 0:
            log.info("waiting up to %.0f s for the queue's request in flight", seconds)
            stepped = self._stepping.acquire(timeout=seconds)
        if not stepped:
            log.warning("a queue request still in flight at the run's end: its message comes back after its timeout")
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(max(0.0, give_up_at - time.monotonic()))
        return stepped

    def _let_go(self) -> None:
        with self._lock:
            left = [held.message.receipt for held in self._held.values()]
            self._held.clear()
            self._waiting.clear()
            self._ready.clear()
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


DEST_FOLDERS = ("_runs", "_claims", "_review")  # what a run writes into DEST besides each file's outputs
LONG_POLL = 10  # seconds: a stop is seen once the poll returns
