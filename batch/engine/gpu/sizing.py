"""GPU memory: batch sizes fitted to the memory really free (read through NVML).

One `BatchSizer` lives for the whole run, and it is the process's one GPU memory budget: the VAD's thread, the
ASR and the finishing thread (alignment, diarization) all size their batches through it. Before each batch it
picks the largest batch size, at most the configured one (the ceiling), whose estimated need fits in the memory
available (free on the device, plus what PyTorch holds cached but unused) minus a reserve and minus what the
batches running on other threads have been granted and not yet shown in the reading. The need per
batch item starts from a table (per model size and compute type) and is corrected by what this card shows:
NVML's used memory sampled around each batch, since CTranslate2 allocates outside PyTorch's allocator.

Running a stage under out-of-memory back-off, and the memory records of what ran: see `batch.engine.gpu.oom`.

With no GPU or no NVML, the configured batch size is used (said once, when the probe is sought: see
`batch.engine.gpu.nvml.probe_for_device`), and the out-of-memory back-off still works.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from batch.common.units import GiB, MiB
from batch.engine.gpu.nvml import MemoryProbe

DEFAULT_RESERVE_BYTES = 1 * GiB

# The stages whose batch size the sizer chooses. One item is: a speech chunk of up to 30 s (asr), one
# segment of up to 30 s (align), one 10 s window of the diarization model (diarize), one window of the VAD's
# segmentation model (vad), a file's 30 s language window (language: one at a time, under the same budget).
STAGES = ("asr", "align", "diarize", "vad", "language")
# Stages with a batch size of their own, whatever --batch-size says: pyannote's VAD batch (as its Inference),
# and language detection (one window per file).
OWN_CEILINGS = {"vad": 32, "language": 1}

# --- Estimated need per batch item --------------------------------------------------------------------------
#
# ASR (CTranslate2 Whisper, beam search, 30 s windows = 1500 encoder frames). The memory that grows with the
# batch is the larger of
#   encoder attention:  2 x heads x 1500^2 x activation bytes            (scores and softmax of one layer)
#   decoder cache:      decoder layers x 2 (K, V) x 1500 x d_model x activation bytes   (cross-attention)
# times 1.25 for what the formula leaves out, rounded up to 8 MiB. Check against a measurement: faster-whisper's
# published benchmark (large-v2, fp16, beam 5) used 4525 MB unbatched and 6090 MB at batch_size=8, i.e.
# ~224 MiB per added item; the formula's decoder cache alone gives 234 MiB, so the 296 MiB below errs on the
# safe side by about a third. The first batches measured on the card replace the seed (see BatchSizer.observe).
# Families: d_model / heads / decoder layers = tiny 384/6/4, base 512/8/6, small 768/12/12, medium 1024/16/24,
# large 1280/20/32, turbo (large-v3-turbo, distil-large-*: large's encoder, 2-4 decoder layers) 1280/20/4.
ASR_ITEM_MIB: dict[tuple[str, int], int] = {
    ("tiny", 2): 72,
    ("base", 2): 88,
    ("small", 2): 136,
    ("medium", 2): 176,
    ("large", 2): 296,
    ("turbo", 2): 216,
    ("tiny", 4): 136,
    ("base", 4): 176,
    ("small", 4): 264,
    ("medium", 4): 352,
    ("large", 4): 592,
    ("turbo", 4): 432,
}
# Alignment (wav2vec2 in float32, whatever the Whisper model): its convolutional front end alone holds
# 512 channels x 96,000 frames x 4 bytes = 196 MB per 30 s segment, and a couple of such tensors are alive
# at once. Diarization (pyannote, float32, 10 s windows): the WeSpeaker ResNet's first feature maps are
# 32 x 80 x 998 x 4 bytes = 10 MB each, a dozen alive, which outweighs the segmentation model's SincNet.
# Neither has been measured on a card yet; both are corrected at run time like the ASR figures.
ALIGN_ITEM_MIB = 512
DIARIZE_ITEM_MIB = 128
# The VAD (pyannote's segmentation PyanNet, float32, one window): SincNet's 80 filters over the window's
# 160,000 samples, pooled, then the LSTM: about 16 MB alive per window at most; 32 MiB to be safe until measured.
VAD_ITEM_MIB = 32

# A measured need is trusted within this factor of the seed: a reading far off the formula is more likely
# noise (another process on a shared card, one-off workspaces) than the model's real need.
MEASUREMENT_TRUST_FACTOR = 4.0
# Weight of a new measurement in the running estimate.
MEASUREMENT_WEIGHT = 0.5

_HALF_WIDTH_COMPUTE_TYPES = frozenset({"float16", "bfloat16", "int8_float16", "int8_bfloat16"})


def activation_bytes(compute_type: str) -> int:
    """Bytes per activation value for a CTranslate2 compute type; unknown and `auto` count as float32."""
    return 2 if compute_type in _HALF_WIDTH_COMPUTE_TYPES else 4


def model_family(model: str) -> str:
    """The Whisper size family of a model name, repo id or folder; `large` (the safe guess) when unknown."""
    name = model.lower().rstrip("/")
    for text in (name.rsplit("/", 1)[-1], name):
        if re.search(r"turbo|distil-large|distil-whisper-large", text):
            return "turbo"
        match = re.search(r"(?<![a-z])(large|medium|small|base|tiny)(?![a-z])", text)
        if match:
            return match.group(1)
    return "large"


def seed_item_bytes(model: str, compute_type: str) -> dict[str, int]:
    """The table's estimated need per batch item of each stage, in bytes, before anything is measured."""
    asr = ASR_ITEM_MIB[(model_family(model), activation_bytes(compute_type))]
    return {
        "asr": asr * MiB,
        "align": ALIGN_ITEM_MIB * MiB,
        "diarize": DIARIZE_ITEM_MIB * MiB,
        "vad": VAD_ITEM_MIB * MiB,
        "language": asr * MiB,  # one ASR encoder pass
    }


# --- The controller -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """A stage's batch size and the memory reading it was chosen on (None without a probe)."""

    size: int
    free_bytes: int | None
    total_bytes: int | None


@dataclass
class _StageState:
    seed_bytes: int
    item_bytes: float
    ceiling: int
    limit: int | None = None  # the size an out-of-memory lowered the stage to; None: the ceiling
    changed_at: float = 0.0  # when the limit last moved
    successes_since_change: int = 0
    grown_back: bool = False  # the limit last moved up, so an out-of-memory now means growing back was early
    regrow_wait: float = 0.0


def torch_cached_bytes() -> int:
    """GPU memory PyTorch's allocator holds reserved but not allocated: free for the next PyTorch batch, though
    NVML counts it as used. 0 before PyTorch has used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return max(0, torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


@dataclass(eq=False)  # each grant is itself: `running` removes this one, not an equal one of another thread
class Grant:
    """A batch that runs under the budget: its stage, size, the bytes it was granted, and whether another
    stage's batch ran at some moment beside it (then the memory it saw grow, or run out, was not its own alone)."""

    stage: str
    size: int
    bytes: int
    shared: bool = False  # set, under the budget's lock, once another batch ran beside this one
    thread: int = field(default_factory=threading.get_ident)  # the thread that runs it

    @property
    def ran_alone(self) -> bool:
        return not self.shared


class BatchSizer:
    """Chooses each stage's batch size from free GPU memory; remembers out-of-memory lowerings across files.

    `ceiling` (the configured batch size) caps every stage but those given their own in `ceilings`.

    A lowered size grows back (doubles, up to the ceiling) once the stage has run `regrow_after_successes`
    times and `regrow_after_seconds` have passed since the last change, and only when the doubled size's
    estimated need fits. An out-of-memory right after growing back doubles that wait (up to an hour), so a
    card that is really short of memory does not see a retry every minute.
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
        self._lock = threading.Lock()  # the stages plan from their own threads
        self._ended = threading.Condition(self._lock)  # notified whenever a grant ends
        self._running: list[Grant] = []
        self._stages = {
            stage: _StageState(seed, float(seed), ceilings[stage], regrow_wait=regrow_after_seconds)
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

    def plan(self, stage: str) -> BatchPlan:
        """The batch size for `stage` now: the largest, up to the ceiling and any lowering, that fits; at least 1.

        `free_bytes` is what the budget counts as available: the device's free memory, plus PyTorch's cached
        memory, less what the batches running now on other threads were granted."""
        with self._lock:
            return self._plan(stage)

    def _plan(self, stage: str) -> BatchPlan:
        state = self._state(stage)
        reading = self.probe.free_and_total() if self.probe is not None else None
        if reading is None:
            self._maybe_regrow(state, None)
            return BatchPlan(state.limit or state.ceiling, None, None)
        free = reading[0] + self.cached() - sum(grant.bytes for grant in self._running)
        self._maybe_regrow(state, free)
        cap = state.limit or state.ceiling
        fitting = math.floor(max(free - self.reserve_bytes, 0) / state.item_bytes)
        return BatchPlan(max(1, min(cap, fitting)), free, reading[1])

    @contextlib.contextmanager
    def running(self, stage: str, size: int) -> Iterator[Grant]:
        """Hold `size` items' estimated need of `stage` in the budget while its batch runs: batches planned on
        other threads meanwhile do not count on that memory. The grant says whether the batch ran alone."""
        with self._lock:
            grant = Grant(stage, size, round(size * self._state(stage).item_bytes), shared=bool(self._running))
            for other in self._running:
                other.shared = True
            self._running.append(grant)
        try:
            yield grant
        finally:
            self._end(grant)

    @contextlib.contextmanager
    def loading(self, nbytes: int) -> Iterator[Grant]:
        """Hold `nbytes` (a model being put on the device) in the budget while it is put there: batches planned
        from now on leave it room, and it starts once the batches running now, planned without it, have ended.

        The batches of the calling thread are not waited for: they could not end while it waits."""
        with self._lock:
            planned_without = [grant for grant in self._running if grant.thread != threading.get_ident()]
            grant = Grant("load", 1, nbytes, shared=bool(self._running))
            self._running.append(grant)
        try:
            with self._lock:
                self._ended.wait_for(lambda: not any(other in self._running for other in planned_without))
            yield grant
        finally:
            self._end(grant)

    def _end(self, grant: Grant) -> None:
        with self._lock:
            self._running.remove(grant)
            self._ended.notify_all()

    def size_for(self, stage: str) -> int:
        """The batch size for `stage` now (see `plan`)."""
        return self.plan(stage).size

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

    def on_success(self, stage: str) -> None:
        """Count a clean run of the stage toward growing a lowered size back."""
        self._state(stage).successes_since_change += 1

    def on_oom(self, stage: str, failed_size: int, shared: bool = False) -> int | None:
        """Remember that `failed_size` ran out of memory: the halved size to retry with, or None at size 1.

        `shared`: another stage's batch ran beside it, so the memory may have been that one's: the retry is
        smaller, but the stage is not held to it for the files after (the halving is not remembered)."""
        if failed_size <= 1:
            return None
        if shared:
            return failed_size // 2
        with self._lock:
            return self._lower(stage, failed_size)

    def _lower(self, stage: str, failed_size: int) -> int:
        state = self._state(stage)
        if state.grown_back:
            state.regrow_wait = min(state.regrow_wait * 2, self.MAX_REGROW_WAIT)
        state.limit = failed_size // 2
        state.changed_at = self.clock()
        state.successes_since_change = 0
        state.grown_back = False
        return state.limit

    def item_bytes(self, stage: str) -> int:
        """The current estimate of the stage's need per batch item, in bytes."""
        return round(self._state(stage).item_bytes)

    def ceiling(self, stage: str) -> int:
        """The most the stage may batch: the configured batch size, or the stage's own cap."""
        return self._state(stage).ceiling

    def limit(self, stage: str) -> int | None:
        """The lowered size the stage is held to after an out-of-memory; None when it may use the ceiling."""
        return self._state(stage).limit

    def _maybe_regrow(self, state: _StageState, free: int | None) -> None:
        if state.limit is None:
            return
        if state.successes_since_change < self.regrow_after_successes:
            return
        if self.clock() - state.changed_at < state.regrow_wait:
            return
        doubled = min(state.limit * 2, state.ceiling)
        if free is not None and doubled * state.item_bytes > free - self.reserve_bytes:
            return
        state.limit = None if doubled >= state.ceiling else doubled
        state.changed_at = self.clock()
        state.successes_since_change = 0
        state.grown_back = True

    def _state(self, stage: str) -> _StageState:
        try:
            return self._stages[stage]
        except KeyError:
            raise KeyError(f"no memory estimate for stage {stage!r} (known: {', '.join(self._stages)})") from None
