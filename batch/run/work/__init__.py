"""Where a run's files come from: sources of work behind one small protocol, `WorkSource`, so that the runner
never asks which one it has.

- `listing.py`: SOURCE's listing (`Listing`), read ahead on a thread of its own (`ReadAhead`, heard by
  `ListingWatcher`s such as the progress census); a run ends when the listing does.
- `queue.py`: an SQS queue's messages (`QueueSource`, --queue): a message is deleted once DEST holds a manifest of
  each of its files, and comes back otherwise; the queue may pause (`more_to_come`) while files are in work.
- `claims.py`: claims on DEST (`Claims`) and `Claimed`, which wraps either of the two for plain parallel workers
  (--claim): only the files whose claim this worker won.
- `delivery.py`: what DEST's manifests say of a queue's objects (may a message go, is a version poison) and how
  long a message sent back waits.
- `skip.py`: the skip check they all run (`SkipCheck`): done already, why DEST cannot hold a manifest, the files
  left for the next run, and those done with other settings.

`work_source` builds the stack a run's configuration asks for. May import: batch.run's config, manifest and report,
and the rooms below batch.run; never the runner, the job, the writer or the worker pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from batch.storage import InputFile, Store

if TYPE_CHECKING:
    from batch.run.config import JobConfig
    from batch.run.report import RunReport
    from batch.run.work.claims import Claims
    from batch.run.work.listing import ListingWatcher
    from batch.run.work.skip import SkipCheck
    from batch.storage.sqs import SqsQueue


class WorkSource(Protocol):
    """The files a run must do, and what it must hear of them.

    `pending` yields the files to do, in order (those found done are told to `on_skipped` instead); the runner
    fetches each, and once the file's write has ended (its manifest written, or not: a fault not its own, a DEST
    that refused it, a run with other settings that wrote it first) tells `finished`, on the writer's thread. When
    `pending` ends the runner finishes every file it holds, then asks `more_to_come`: True, and it calls `pending`
    again (a queue that paused while files were in work). `close` hands back what is held and not finished (claims,
    queue messages), whatever ended the run; it may be called from another thread while `pending` runs (a run being
    abandoned).
    """

    # Whether the next file may be long in coming (a queue's long poll): the run then pulls files on a thread of its
    # own, so that a file already fetched is not held back meanwhile.
    waits: bool
    # The skip check this source's files went through: `started_at` (manifests finished since were written by runs
    # beside this one) and the files it found done with other settings.
    checks: SkipCheck

    def pending(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]: ...

    def look(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """The files `pending` offers, only looked at (a dry run, `Job.pending`): nothing is claimed or held. A
        queue cannot show a message without receiving it: its `look` is its `pending` (and a dry run of a queue is
        refused, batch.settings.options)."""
        ...

    def problem(self, key: str) -> Exception | None:
        """Why a file handed out cannot be done (DEST cannot hold its manifest; its claim could not be taken): it
        then fails alone with this error, before it is fetched. None for the others."""
        ...

    def finished(self, key: str) -> None: ...
    def more_to_come(self) -> bool: ...
    def close(self) -> None: ...

    def record(self, report: RunReport) -> None:
        """Put this source's own figures in the run report (kept up to date as it goes)."""
        ...


def work_source(
    config: JobConfig,
    source: Store,
    dest: Store,
    *,
    run_started_at: str,
    stopping: Callable[[], bool],
    grace_left: Callable[[], float],
    on_left: Callable[[str, Exception], None],
    on_claimed_elsewhere: Callable[[str], None],
    watchers: Sequence[ListingWatcher] = (),
    queue: SqsQueue | None = None,
    claims: Claims | None = None,
) -> WorkSource:
    """The run's source of work: SOURCE's listing, or the queue's messages (--queue, `queue` the SqsQueue; `source`
    then the objects they name), within claims when `claims` are given (--claim; a queue needs none, and the
    settings refuse both at once)."""
    work: WorkSource
    if config.queue is None or queue is None:
        from batch.run.work.listing import Listing

        work = Listing(config.selection, config.settings_hash, source, dest, watchers, on_left)
    else:
        from batch.run.work.queue import QueueSource

        work = QueueSource(
            queue,
            config.queue.idle_seconds,
            config.selection,
            config.settings_hash,
            source,  # the objects the queue's messages name (QueuedObjects)
            dest,
            stopping,
            on_left=on_left,
            grace_left=grace_left,
        )
    if claims is None:
        return work
    from batch.run.work.claims import Claimed

    return Claimed(work, claims, run_started_at, on_claimed_elsewhere)
