"""GPU memory: batch sizes fitted to the memory really free (read through NVML).

One `BatchSizer` lives for the whole run, and it is the process's one GPU memory budget: the VAD's thread, the
ASR and the finishing thread (alignment, diarization) all size their batches through it. Each batch is planned
and granted in one step (`granted`): the largest batch size, at most the configured one (the ceiling), whose
estimated need fits in the memory available less a reserve; the need is then held in the budget until the batch
ends. Available, for a stage, is
- the device's free memory (NVML: every process on the card);
- plus what PyTorch holds cached but unused (NVML counts it used): PyTorch's stages reuse it; CTranslate2's
  (needs.CTRANSLATE2_STAGES) cannot (their allocator is CTranslate2's own), so when those blocks stand between
  such a stage's batch and its plan, its grant hands them back to the driver first, and counts only what is
  then free on the device;
- less what the running batches were granted and the reading does not show yet (`GrantBook.unseen`).
The need per batch item starts from a table (batch.engine.gpu.needs) and is corrected by what this card shows:
NVML's used memory sampled around each batch that ran alone.

Running a stage under out-of-memory back-off, and the memory records of what ran: see `batch.engine.gpu.oom`.

With no GPU or no NVML, the configured batch size is used (said once, when the probe is sought: see
`batch.engine.gpu.nvml.probe_for_device`), and the out-of-memory back-off still works.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from batch.engine.gpu.grants import Grant, GrantBook, Reading
from batch.engine.gpu.needs import (
    CTRANSLATE2_STAGES,
    DEFAULT_RESERVE_BYTES,
    MEASUREMENT_TRUST_FACTOR,
    MEASUREMENT_WEIGHT,
    OWN_CEILINGS,
    seed_item_bytes,
)
from batch.engine.gpu.nvml import MemoryProbe

__all__ = ["BatchPlan", "BatchSizer", "Grant"]


# --- The controller -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """A stage's batch size and the memory it was chosen on: what the budget counted as available for the stage
    and the device's total (None without a probe)."""

    size: int
    free_bytes: int | None
    total_bytes: int | None


@dataclass
class _Limit:
    """The size out-of-memory errors lowered a stage to (None: the ceiling), and when it may grow back."""

    size: int | None = None
    changed_at: float = 0.0  # when the size last moved
    successes: int = 0  # clean runs since
    grown_back: bool = False  # the size last moved up, so an out-of-memory now means growing back was early
    wait: float = 0.0


@dataclass
class _StageState:
    seed_bytes: int
    item_bytes: float
    ceiling: int
    alone: _Limit  # from out-of-memory errors of batches that ran alone: holds every batch of the stage
    beside: _Limit  # from those beside another stage's batch: holds the batches that start beside one

    def limits(self, beside_others: bool) -> tuple[_Limit, ...]:
        return (self.alone, self.beside) if beside_others else (self.alone,)


def torch_cached_bytes() -> int:
    """GPU memory PyTorch's allocator holds reserved but not allocated: free for the next PyTorch batch, though
    NVML counts it as used. 0 before PyTorch has used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return max(0, torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def release_torch_cache() -> None:
    """Hand PyTorch's cached, unused blocks back to the driver (they stay where they are while in use)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class BatchSizer:
    """Chooses each stage's batch size from free GPU memory; remembers out-of-memory lowerings across files.

    `ceiling` (the configured batch size) caps every stage but those given their own in `ceilings`.

    An out-of-memory lowers the stage to half the size that failed: for every later batch when the batch ran
    alone, for those that start beside another stage's batch when it ran beside one (the memory may have been
    the other's, but on a card too small for both at full size it will be again). A lowered size grows back
    (doubles, up to the ceiling) once the stage has run `regrow_after_successes` times at it and
    `regrow_after_seconds` have passed, and only when the doubled size's estimated need fits. An out-of-memory
    right after growing back doubles that wait (up to an hour), so a card that is really short of memory does not
    see a retry every minute.
    """

    MAX_REGROW_WAIT = 3600.0

    def __init__(
        self,
        ceiling: int,
        item_bytes: Mapping[str, int],
        probe: MemoryProbe | None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        regrow_after_seconds: float = 60.0,
        regrow_after_successes: int = 2,
        ceilings: Mapping[str, int] | None = None,
        cached: Callable[[], int] = torch_cached_bytes,
        release_cached: Callable[[], None] = release_torch_cache,
    ):
        ceilings = dict(ceilings or {})
        for stage in item_bytes:
            ceilings.setdefault(stage, ceiling)
            if ceilings[stage] < 1:
                raise ValueError(f"batch size ceiling of {stage} must be at least 1, not {ceilings[stage]}")
        self.probe = probe
        self.reserve_bytes = reserve_bytes
        self.clock = clock
        self.regrow_after_successes = regrow_after_successes
        self.cached = cached
        self.release_cached = release_cached
        self._lock = threading.Lock()  # the stages plan from their own threads
        self._grants = GrantBook(threading.Condition(self._lock))
        self._stages = {
            stage: _StageState(
                seed, float(seed), ceilings[stage], _Limit(wait=regrow_after_seconds), _Limit(wait=regrow_after_seconds)
            )
            for stage, seed in item_bytes.items()
        }

    @classmethod
    def for_model(
        cls,
        ceiling: int,
        model: str,
        compute_type: str,
        probe: MemoryProbe | None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> BatchSizer:
        """A sizer seeded from the table for this Whisper model and compute type."""
        return cls(ceiling, seed_item_bytes(model, compute_type), probe, reserve_bytes, clock, ceilings=OWN_CEILINGS)

    # --- planning and granting ---

    def plan(self, stage: str, at_most: int | None = None) -> BatchPlan:
        """The batch size for `stage` now: the largest, up to the ceiling, any lowering and `at_most`, that fits;
        at least 1. Nothing is held: a batch about to run takes its size from `granted` instead."""
        with self._lock:
            return self._plan(stage, at_most, self._read())

    def size_for(self, stage: str) -> int:
        """The batch size for `stage` now (see `plan`)."""
        return self.plan(stage).size

    @contextlib.contextmanager
    def granted(self, stage: str, at_most: int | None = None, alone: bool = False) -> Iterator[Grant]:
        """Plan `stage`'s batch (as `plan`) and hold its estimated need in the budget until it ends, in one step:
        a batch planned on another thread meanwhile counts on what this one has not taken yet, never on the same
        memory. `alone`: first wait until the other threads' batches have ended, and keep theirs from starting
        until this one ends (a retry at size 1 after an out-of-memory beside another stage's batch)."""
        if stage in CTRANSLATE2_STAGES:
            self._release_cache_in_the_way(stage, at_most)

        def batch(reading: Reading | None) -> Grant:
            plan = self._plan(stage, at_most, reading, granting=True)
            need = round(plan.size * self._state(stage).item_bytes)
            return Grant(stage, plan.size, need, plan.free_bytes, plan.total_bytes)

        with self._held(alone, batch) as grant:
            yield grant

    @contextlib.contextmanager
    def holding(self, what: str, nbytes: int, alone: bool = False) -> Iterator[Grant]:
        """Hold `nbytes` in the budget while something other than a stage's batch takes GPU memory: a model being
        put on the device (its exact size: batch.engine.gpu.placing), so that the batches planned meanwhile leave
        room for it. The hold is counted at once; the body then starts once the other threads' batches running now
        (planned without it) have ended. As the weights reach the device the reading shows them and they are
        counted once; the hold ends with the body. `alone` as for `granted` (a load retried after an
        out-of-memory: the other threads' batches end first, and theirs wait until the load ends)."""
        planned_without: list[Grant] = []

        def load(reading: Reading | None) -> Grant:
            planned_without.extend(self._grants.others())
            if reading is None:
                return Grant(what, 0, nbytes)
            return Grant(what, 0, nbytes, reading.idle - self._grants.unseen(reading), reading.total)

        with self._held(alone, load) as grant:
            with self._lock:
                self._grants.wait_until_ended(planned_without)
            yield grant

    @contextlib.contextmanager
    def _held(self, alone: bool, make: Callable[[Reading | None], Grant]) -> Iterator[Grant]:
        """The grant `make` builds from the reading, made and added to the running ones in one step."""
        with self._lock:
            turn = self._grants.wait_for_turn(alone)
            try:
                reading = self._read()
                grant = make(reading)
                grant.idle_at_start, grant.alone = _idle(reading), turn
                self._grants.add(grant)
            except BaseException:
                if turn:
                    self._grants.end_turn()
                raise
        try:
            yield grant
        finally:
            with self._lock:
                self._grants.remove(grant)

    def _read(self) -> Reading | None:
        reading = self.probe.free_and_total() if self.probe is not None else None
        return None if reading is None else Reading(reading[0], reading[1], self.cached())

    def _available(self, stage: str, reading: Reading, granting: bool) -> int:
        """Free memory for `stage`, less what the running grants may still take. PyTorch's cache counts as free:
        for PyTorch's stages, which reuse it, and in a CTranslate2 stage's plan, since its grant hands the cache
        back first when the batch needs it; in that grant only what is then free on the device counts."""
        usable = reading.free if granting and stage in CTRANSLATE2_STAGES else reading.idle
        return usable - self._grants.unseen(reading)

    def _plan(self, stage: str, at_most: int | None, reading: Reading | None, granting: bool = False) -> BatchPlan:
        state = self._state(stage)
        limits = state.limits(self._grants.beside_others())
        available = None if reading is None else self._available(stage, reading, granting)
        for limit in limits:
            self._maybe_regrow(state, limit, available)
        total = None if reading is None else reading.total
        return BatchPlan(self._fitting(state, limits, at_most, available), available, total)

    def _fitting(
        self, state: _StageState, limits: tuple[_Limit, ...], at_most: int | None, available: int | None
    ) -> int:
        cap = min(limit.size or state.ceiling for limit in limits)
        if at_most is not None:
            cap = min(cap, at_most)
        if available is None:
            return max(1, cap)
        return max(1, min(cap, math.floor(max(available - self.reserve_bytes, 0) / state.item_bytes)))

    def _release_cache_in_the_way(self, stage: str, at_most: int | None) -> None:
        """Hand PyTorch's cache back to the driver when it alone keeps a CTranslate2 stage's batch below its plan."""
        with self._lock:
            if self.probe is None or self.cached() <= 0:
                return
            reading = self._read()
            if reading is None:
                return
            state = self._state(stage)
            limits = state.limits(self._grants.beside_others())
            planned = self._fitting(state, limits, at_most, self._available(stage, reading, granting=False))
            if planned <= self._fitting(state, limits, at_most, self._available(stage, reading, granting=True)):
                return
        self.release_cached()  # outside the lock: it waits for the device

    # --- learning from the batches that ran ---

    def observe(self, stage: str, items: int, used_before: int | None, used_peak: int | None) -> None:
        """Correct the stage's need per item from a batch of `items` that ran: NVML's used memory before and at peak.

        A growth of zero or less says nothing (the peak fell between samples, or cached memory was reused). Call
        it only for a batch that ran alone: the device's growth beside another batch is both batches'.
        """
        if used_before is None or used_peak is None or items < 1 or used_peak <= used_before:
            return
        with self._lock:
            self._observe(stage, items, used_before, used_peak)

    def _observe(self, stage: str, items: int, used_before: int, used_peak: int) -> None:
        state = self._state(stage)
        measured = (used_peak - used_before) / items
        trusted = min(
            max(measured, state.seed_bytes / MEASUREMENT_TRUST_FACTOR), state.seed_bytes * MEASUREMENT_TRUST_FACTOR
        )
        state.item_bytes = MEASUREMENT_WEIGHT * trusted + (1 - MEASUREMENT_WEIGHT) * state.item_bytes

    def on_success(self, stage: str, shared: bool = False) -> None:
        """Count a clean run of the stage (beside another stage's batch: `shared`) toward growing a lowered size
        back."""
        with self._lock:
            state = self._state(stage)
            (state.beside if shared else state.alone).successes += 1

    def on_oom(self, stage: str, failed_size: int, shared: bool = False) -> int | None:
        """Remember that `failed_size` ran out of memory: the halved size to retry with, or None at size 1.

        `shared`: another stage's batch ran beside it: the stage is held to the halved size only when it starts
        beside another stage's batch again (alone, the memory is all its own)."""
        if failed_size <= 1:
            return None
        with self._lock:
            state = self._state(stage)
            return self._lower(state.beside if shared else state.alone, failed_size)

    def _lower(self, limit: _Limit, failed_size: int) -> int:
        if limit.grown_back:
            limit.wait = min(limit.wait * 2, self.MAX_REGROW_WAIT)
        limit.size = failed_size // 2
        limit.changed_at = self.clock()
        limit.successes = 0
        limit.grown_back = False
        return limit.size

    def _maybe_regrow(self, state: _StageState, limit: _Limit, free: int | None) -> None:
        if limit.size is None:
            return
        if limit.successes < self.regrow_after_successes:
            return
        if self.clock() - limit.changed_at < limit.wait:
            return
        doubled = min(limit.size * 2, state.ceiling)
        if free is not None and doubled * state.item_bytes > free - self.reserve_bytes:
            return
        limit.size = None if doubled >= state.ceiling else doubled
        limit.changed_at = self.clock()
        limit.successes = 0
        limit.grown_back = True

    # --- what the budget knows ---

    def item_bytes(self, stage: str) -> int:
        """The current estimate of the stage's need per batch item, in bytes."""
        return round(self._state(stage).item_bytes)

    def ceiling(self, stage: str) -> int:
        """The most the stage may batch: the configured batch size, or the stage's own cap."""
        return self._state(stage).ceiling

    def limit(self, stage: str, beside: bool = False) -> int | None:
        """The lowered size the stage is held to after an out-of-memory of a batch alone (`beside`: beside another
        stage's, for the batches that start beside one); None when it may use the ceiling."""
        state = self._state(stage)
        return (state.beside if beside else state.alone).size

    def _state(self, stage: str) -> _StageState:
        try:
            return self._stages[stage]
        except KeyError:
            raise KeyError(f"no memory estimate for stage {stage!r} (known: {', '.join(self._stages)})") from None


def _idle(reading: Reading | None) -> int | None:
    return None if reading is None else reading.idle
