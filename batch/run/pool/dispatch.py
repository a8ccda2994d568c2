"""Who gets which file: decoded files in the order they come, and a file held by a worker that died retried
alone, so that a file that kills a second worker is known to be the cause and fails (`WorkerDied`)."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator

from batch.common.errors import WorkerDied
from batch.engine.pipeline import Deadline, DecodedFile, FileOutcome
from batch.run.pool.feed import Feed
from batch.run.pool.messages import FILE, Task
from batch.run.pool.processes import Phase, Worker

log = logging.getLogger(__name__)


class Dispatch:
    def __init__(self) -> None:
        self._tickets = itertools.count()
        self._pending: deque[DecodedFile] = deque()  # taken from the runner, not handed out yet
        self._feed: Feed | None = None
        self._suspects: deque[DecodedFile] = deque()  # files to retry, one at a time, each alone
        self._deaths: dict[int, tuple[DecodedFile, list[str]]] = {}  # id(file) -> (file, the deaths it was in)
        self._retries: set[int] = set()  # tickets of files handed out alone, as retries
        self.should_stop: Callable[[], bool] = lambda: False

    def begin(self, first: DecodedFile, rest: Iterator[DecodedFile]) -> None:
        self._pending.append(first)
        self._feed = Feed(rest, room=1)  # the runner decodes ahead (--prefetch per worker): one in hand

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()

    @property
    def feed_readable(self) -> object | None:
        """What `multiprocessing.connection.wait` may wait on for the next decoded file."""
        return self._feed.readable if self._feed is not None else None

    def next_file(self, unusable: Callable[[FileOutcome], None]) -> DecodedFile | None:
        """The next decoded file that is ready; one that failed to decode goes to `unusable` at once, unsent."""
        while True:
            if self._pending:
                file = self._pending.popleft()
            elif self._feed is None or self.should_stop():
                return None
            else:
                taken = self._feed.take()
                if taken is None:
                    return None
                file = taken
            if file.error is None and file.audio is not None:
                return file
            unusable(FileOutcome(file, error=file.error))

    def input_ended(self) -> bool:
        return not self._pending and (self.should_stop() or (self._feed is not None and self._feed.exhausted))

    def next_retry(self) -> DecodedFile | None:
        return self._suspects.popleft() if self._suspects else None

    @property
    def retries_waiting(self) -> bool:
        return bool(self._suspects)

    def give(self, worker: Worker, file: DecodedFile, alone: bool = False) -> None:
        ticket = next(self._tickets)
        worker.in_flight[ticket] = file
        worker.phase = Phase.WORKING
        if alone:
            self._retries.add(ticket)
        worker.send(FILE, Task(ticket, file.key, file.audio, dict(file.stopwatch.timings), file.deadline))

    def holds_retry(self, worker: Worker) -> bool:
        """Whether the worker holds a retried file: it gets nothing else until that is back."""
        return any(ticket in self._retries for ticket in worker.in_flight)

    def finished(self, worker: Worker, ticket: int) -> DecodedFile:
        file = worker.in_flight.pop(ticket)
        self._retries.discard(ticket)
        self._deaths.pop(id(file), None)
        return file

    def requeue(self, files: list[DecodedFile]) -> None:
        """Files a worker held when it was stopped for another file's sake: handed out again first, as if new
        (their deadlines too: the time in a hung worker is not theirs)."""
        self._pending.extendleft(reversed(_restarted(files)))

    def retry_alone(self, files: list[DecodedFile]) -> None:
        """Files that were in a worker that hung: each handed out alone, with a fresh deadline."""
        self._suspects.extend(_restarted(files))

    def redo(self, worker: Worker) -> None:
        """Files a worker's pipeline gave back unfinished (it broke its promise): each retried alone."""
        self._suspects.extend(worker.in_flight.values())
        self.drop(worker)

    def drop(self, worker: Worker) -> list[DecodedFile]:
        held = list(worker.in_flight.values())
        self._retries.difference_update(worker.in_flight)
        worker.in_flight.clear()
        return held

    def suspect(self, file: DecodedFile, death: str) -> FileOutcome | None:
        """A file held by a worker that died: retried alone the first time; the second time it fails."""
        _, deaths = self._deaths.setdefault(id(file), (file, []))  # the file is kept: its id stays its own
        deaths.append(death)
        if len(deaths) < 2:
            self._suspects.append(file)
            return None
        del self._deaths[id(file)]
        log.error("%s: failed: it was in two workers that died (%s)", file.key, "; ".join(deaths))
        return FileOutcome(
            file,
            error=WorkerDied(
                f"the file was being transcribed when a worker died, twice ({deaths[0]}; then, with this file "
                f"alone, {deaths[1]}); it is failed so that it cannot take down more workers"
            ),
        )


def _restarted(files: list[DecodedFile]) -> list[DecodedFile]:
    for file in files:
        if file.deadline is not None:
            file.deadline = Deadline.after(file.deadline.seconds)
    return files
