"""The batches running under the GPU budget (`batch.engine.gpu.sizing.BatchSizer`), and what they hold in it.

Each batch (and each model load that asks) is a `Grant`: the bytes it was estimated to need, and the device's idle
memory (NVML's free plus PyTorch's cached) when it was granted. A running batch's memory shows in the device's
reading as it allocates, so the budget subtracts only the part of the grants not yet shown (`GrantBook.unseen`):
never twice what a batch already holds.

A thread whose batch ran out of memory at size 1 beside another stage's may ask for a turn alone: new grants of the
other threads then wait, and it waits until theirs have ended. A model load held in the budget waits, once its hold
is counted, for the other threads' batches that were running already (planned without it), not for those granted
after (which leave it room). A thread that holds a grant never waits for a turn, nor for its own grants; a batch
waits for nothing while it runs, and a load only for grants made before its own; so the waits cannot deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reading:
    """The device's memory as the budget reads it: NVML's free and total, and PyTorch's cached but unused memory."""

    free: int
    total: int
    cached: int

    @property
    def idle(self) -> int:
        """Memory no live tensor or CTranslate2 buffer holds: free on the device or cached by PyTorch."""
        return self.free + self.cached


@dataclass(eq=False)  # each grant is itself: the book removes this one, not an equal one of another thread
class Grant:
    """A batch that runs under the budget (or a model load: `size` 0): its stage, size, the bytes it was granted,
    the budget's reading when granted, and whether another batch ran at some moment beside it (then the memory
    it saw grow, or run out, was not its own alone)."""

    stage: str
    size: int
    bytes: int
    free_bytes: int | None = None  # what the budget counted as available for it (None without a probe)
    total_bytes: int | None = None
    idle_at_start: int | None = None  # Reading.idle when granted; None without a reading
    alone: bool = False  # granted a turn alone: no other thread's batch ran or started beside it
    shared: bool = False  # set, under the budget's lock, once another batch ran beside this one
    thread: int = field(default_factory=threading.get_ident)

    @property
    def ran_alone(self) -> bool:
        return not self.shared


class GrantBook:
    """The running grants, under the budget's lock (`room`: a Condition on it). Not thread-safe on its own: every
    method but `take_turn` expects the caller to hold `room`."""

    def __init__(self, room: threading.Condition):
        self.room = room
        self.running: list[Grant] = []  # in the order granted
        self._turn: int | None = None  # the thread that asked for a turn alone

    def beside_others(self) -> bool:
        """Whether a batch granted now would start beside another's."""
        return bool(self.running)

    def unseen(self, reading: Reading) -> int:
        """The bytes the running grants may still take that the reading does not show yet.

        Since grant i was granted, the device's idle memory fell by what the grants running since then took (it and
        those granted after it). Their grants less that fall is what they may still take; the largest such figure
        over i is the one counted, so that memory freed meanwhile (a batch that ended) never hides a grant. A grant
        made without a reading counts whole."""
        whole = sum(grant.bytes for grant in self.running if grant.idle_at_start is None)
        read = [grant for grant in self.running if grant.idle_at_start is not None]
        pending = 0
        for index, grant in enumerate(read):
            assert grant.idle_at_start is not None
            taken = max(0, grant.idle_at_start - reading.idle)
            pending = max(pending, sum(later.bytes for later in read[index:]) - taken)
        return whole + pending

    def wait_for_turn(self, alone: bool) -> bool:
        """Block until this thread may be granted: while another thread has a turn alone; with `alone`, also until
        the other threads' grants have ended (and, meanwhile, new ones wait). True when it has its turn alone then.
        A thread holding a grant never waits (nor gets a turn alone)."""
        me = threading.get_ident()
        if any(grant.thread == me for grant in self.running):
            return False
        while self._turn not in (None, me):
            self.room.wait()
        if not alone:
            return False
        self._turn = me
        try:
            while any(grant.thread != me for grant in self.running):
                self.room.wait()
        except BaseException:
            self.end_turn()
            raise
        return True

    def others(self) -> list[Grant]:
        """The running grants of the other threads."""
        me = threading.get_ident()
        return [grant for grant in self.running if grant.thread != me]

    def wait_until_ended(self, grants: list[Grant]) -> None:
        """Block until `grants` have all ended (new grants meanwhile are not waited for)."""
        while any(grant in self.running for grant in grants):
            self.room.wait()

    def add(self, grant: Grant) -> None:
        grant.shared = bool(self.running)
        for other in self.running:
            other.shared = True
        self.running.append(grant)

    def remove(self, grant: Grant) -> None:
        self.running.remove(grant)
        if grant.alone:
            self._turn = None
        self.room.notify_all()

    def end_turn(self) -> None:
        """Give up this thread's turn alone (its grant was not made after all)."""
        if self._turn == threading.get_ident():
            self._turn = None
        self.room.notify_all()

    def __iter__(self) -> Iterator[Grant]:
        return iter(self.running)
