"""GPU out-of-memory back-off, and the memory records of what ran (for the manifests; the run report sums them).

`run_with_oom_backoff` runs one stage of one file: on out-of-memory it frees caches, halves the batch size and
runs the stage again, down to 1; only then does the file fail (`GpuOutOfMemory`). The lowered size is kept
for the next files and grows back when memory allows. `map_in_batches` runs a list of items (of one file or
several) through a stage batch by batch, each batch under that guard, so an out-of-memory splits the batch
instead of redoing the whole list.

The batch sizes come from `batch.engine.gpu.sizing.BatchSizer`: with no GPU or no NVML it gives the configured size,
and the out-of-memory back-off still works.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from batch.common.errors import BatchError, FileFailure, redact
from batch.common.units import format_bytes
from batch.engine.gpu.nvml import MemoryProbe
from batch.engine.gpu.sizing import BatchSizer

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")

# Substrings (lower case) of the messages of out-of-memory errors that arrive as plain RuntimeErrors:
# CTranslate2 ("CUDA failed with error out of memory"), torch without its own class, the driver API, cuBLAS, and
# cuBLAS or cuDNN failing to create their handle or workspace on a full GPU (cublasCreate on a new thread gives
# NOT_INITIALIZED; cuDNN gives ALLOC_FAILED, NOT_INITIALIZED or INTERNAL_ERROR): after the caches are freed and
# the batch halved, they run.
_OOM_MARKERS = (
    "out of memory",
    "cuda_error_out_of_memory",
    "cublas_status_alloc_failed",
    "cublas_status_not_initialized",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_initialized",
    "cudnn_status_internal_error",
)
# Errors that leave the CUDA context unusable ("sticky"): every later CUDA call in the process fails too, so
# the process must end and a fresh one take over (torch's and the runtime's wording, CTranslate2's, the driver's).
_CONTEXT_LOST_MARKERS = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "device-side assert",
    "uncorrectable ecc error",
    "cuda_error_illegal_address",
    "cuda_error_launch_failed",
    "cudaerrorillegaladdress",
    "cudaerrorlaunchfailure",
    "cudaerrorassert",
)


# --- Running a stage under out-of-memory back-off ------------------------------------------------------------


class GpuOutOfMemory(FileFailure):
    """A stage ran out of GPU memory even at batch size 1: this file fails, the run goes on.

    `record` is the stage's memory record (failed, with its retries), for the failed file's manifest.
    """

    def __init__(self, message: str, record: StageMemoryRecord):
        super().__init__(message)
        self.record = record


@dataclass
class StageMemoryRecord:
    """What one stage of one file asked for, got and went through; `to_dict` is its manifest entry."""

    stage: str
    batch_size_requested: int  # the configured size (the ceiling)
    batch_size_planned: int  # what free memory allowed before the first try
    batch_size_used: int  # what finally ran
    oom_retries: int = 0
    free_bytes: int | None = None  # free memory before the first try (NVML), None without a probe
    total_bytes: int | None = None
    peak_growth_bytes: int | None = None  # NVML used memory at peak minus before, on the try that ran
    failed: bool = False  # out of memory even at batch size 1

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["stage"]  # the manifest keys records by stage
        return record


class CudaContextLost(BatchError):
    """A sticky CUDA error: this process can run nothing more on the GPU. A worker process says so and exits
    (EXIT_CONTEXT_LOST, batch/run/pool/worker.py) and the pool starts a fresh one, which takes the file again (as
    after a worker's death); an in-process run stops (exit 3) with the file unwritten, for the rerun or the
    restarted pod to do."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a GPU out-of-memory (torch's or CTranslate2's)."""
    torch = sys.modules.get("torch")  # a torch error can only exist if torch was imported
    out_of_memory_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    for current in _chain(exc):
        if out_of_memory_type is not None and isinstance(current, out_of_memory_type):
            return True
        message = str(current).lower()
        if any(marker in message for marker in _OOM_MARKERS):
            return True
    return False


def is_context_lost(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a sticky CUDA error."""
    return any(_lost(current) for current in _chain(exc))


def _lost(exc: BaseException) -> bool:
    message = str(exc).lower()
    return isinstance(exc, CudaContextLost) or any(marker in message for marker in _CONTEXT_LOST_MARKERS)


def raise_if_context_lost(exc: BaseException) -> None:
    """Raise CudaContextLost from `exc` when it, or an exception it was raised from, is a sticky CUDA error."""
    for current in _chain(exc):
        if _lost(current):
            first_line = (str(current).strip().splitlines() or [type(current).__name__])[0]
            raise CudaContextLost(f"the CUDA context is lost: {redact(first_line)}") from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def free_gpu_caches() -> None:
    """Drop unreachable tensors and hand PyTorch's cached GPU blocks back to the driver; a no-op without CUDA."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class _PeakSampler:
    """Samples the probe's used memory from a thread while a batch runs: NVML keeps no peak of its own."""

    def __init__(self, probe: MemoryProbe | None, interval: float):
        self.probe = probe
        self.interval = interval
        self.before: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakSampler:
        if self.probe is None:
            return self
        self.before = self.peak = self.probe.used()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="gpu-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        used = self.probe.used() if self.probe is not None else None
        if used is not None:
            self.peak = used if self.peak is None else max(self.peak, used)


def run_with_oom_backoff(
    stage: str,
    sizer: BatchSizer,
    call: Callable[[int], T],
    free_caches: Callable[[], None] = free_gpu_caches,
    items: int | None = None,
    sample_interval: float = 0.01,
    max_size: int | None = None,
) -> tuple[T, StageMemoryRecord]:
    """Run `call(batch_size)` for one stage of one file, halving the batch size on out-of-memory down to 1.

    `call` must do the whole stage and return its result, consuming any lazy generator itself (wrap the
    pipeline in `list(...)`): an out-of-memory raised later, while a caller iterates, would escape this
    guard. It must also build its inputs afresh on every call, since a retry runs it again from the start.
    `items` is how many items the stage has (speech chunks, segments), which makes the measured need per
    item exact when the file has fewer than a batch. Raises GpuOutOfMemory when even size 1 does not fit;
    any other error propagates unchanged.

    `max_size` caps every size tried: the items left, for a caller that runs many batches in a row
    (`map_in_batches`), so that an out-of-memory halves the size that really ran, not a larger planned one; the
    most one forward of the stage takes (alignment with a torchaudio model: 1), so that no more is granted.

    Each try is planned and granted in one step (`BatchSizer.granted`): the batch holds its estimated need in the
    budget while it runs, and a retry is planned afresh, at most half the size that failed. Caches are freed only
    after an out-of-memory: the budget counts PyTorch's cached memory as available to PyTorch's stages, and
    emptying it before every batch would stall the stages running on other threads. What the batch is seen to use
    corrects the estimate only when it ran alone. An out-of-memory beside another stage's batch holds the stage to
    the lower size whenever it starts beside one again; at size 1 the retry waits for the other threads' batches
    to end and runs alone (they wait meanwhile), and only an out-of-memory alone fails the file.
    """
    record: StageMemoryRecord | None = None
    at_most, alone = max_size, False
    while True:
        try:
            with sizer.granted(stage, at_most, alone) as grant, _PeakSampler(sizer.probe, sample_interval) as sampler:
                if record is None:  # what the stage asked for, got and saw before its first try
                    size = grant.size
                    record = StageMemoryRecord(
                        stage, sizer.ceiling(stage), size, size, 0, grant.free_bytes, grant.total_bytes
                    )
                result = call(grant.size)
        except Exception as exc:
            if record is None or not is_out_of_memory(exc):
                raise
            smaller = sizer.on_oom(stage, grant.size, shared=grant.shared)
            if smaller is None and (alone or not grant.shared):
                record.batch_size_used, record.failed = grant.size, True
                raise GpuOutOfMemory(
                    f"out of GPU memory at batch size 1 in stage {stage} "
                    f"(free {format_bytes(record.free_bytes)} of {format_bytes(record.total_bytes)} before the stage)",
                    record,
                ) from exc
            if smaller is None:  # the memory may have been the other stage's: once it is done, this runs alone
                log.warning("out of GPU memory in stage %s at batch size 1 beside another stage: retrying alone", stage)
                at_most, alone = 1, True
            else:
                log.warning(
                    "out of GPU memory in stage %s at batch size %d: retrying at %d", stage, grant.size, smaller
                )
                at_most = smaller
        else:
            assert record is not None
            record.batch_size_used = grant.size
            if sampler.before is not None and sampler.peak is not None:
                record.peak_growth_bytes = sampler.peak - sampler.before
            if grant.ran_alone:
                sizer.observe(stage, min(grant.size, items) if items else grant.size, sampler.before, sampler.peak)
            sizer.on_success(stage, shared=grant.shared)
            return result, record
        # Freed here, outside the except block: until it ends, the traceback keeps the failed batch's
        # tensors alive, and emptying the cache then would release nothing.
        free_caches()
        record.oom_retries += 1


# --- Many batches in a row, each under the back-off ----------------------------------------------------------


@dataclass
class BatchedStage(Generic[OutT]):
    """What `map_in_batches` did: one output per item, in the items' order, and a record per batch that ran."""

    outputs: list[OutT]
    batches: list[StageMemoryRecord]  # in order; each one's batch_size_used is the number of items it ran

    @property
    def record(self) -> StageMemoryRecord | None:
        """The batches' records as one (see `merge_records`); None when no batch ran (no items)."""
        return merge_records(self.batches) if self.batches else None


class BatchOutOfMemory(GpuOutOfMemory):
    """One item ran out of GPU memory alone (batch size 1) in `map_in_batches`: that item fails, not the others.

    `index` is the item's position in the list given; `done` holds what ran before it (the outputs of the items
    before `index` and their batches' records). `record` is those records and the failed batch's merged
    (failed). The items after `index` have not run: a caller fails the item's owner and maps the rest again.
    """

    def __init__(self, message: str, index: int, done: BatchedStage[Any], failed: StageMemoryRecord):
        super().__init__(message, merge_records([*done.batches, failed]))
        self.index = index
        self.done = done


def merge_records(records: Sequence[StageMemoryRecord]) -> StageMemoryRecord:
    """One record for a stage that ran as several batches (at least one), for the manifest of each file in them.

    Requested, planned, free and total memory are the first batch's (before the stage); used is the largest
    batch that ran; retries add up; the peak growth is the largest measured; failed if any batch failed.
    """
    first = records[0]
    growths = [record.peak_growth_bytes for record in records if record.peak_growth_bytes is not None]
    return StageMemoryRecord(
        first.stage,
        first.batch_size_requested,
        first.batch_size_planned,
        max(record.batch_size_used for record in records),
        sum(record.oom_retries for record in records),
        first.free_bytes,
        first.total_bytes,
        max(growths) if growths else None,
        any(record.failed for record in records),
    )


def map_in_batches(
    stage: str,
    sizer: BatchSizer,
    items: Sequence[ItemT],
    run_batch: Callable[[Sequence[ItemT]], Sequence[OutT]],
    free_caches: Callable[[], None] = free_gpu_caches,
    sample_interval: float = 0.01,
) -> BatchedStage[OutT]:
    """Run `run_batch` over `items` in consecutive batches, each as large as `sizer` allows for `stage` now.

    Each batch runs under `run_with_oom_backoff`: on out-of-memory it is retried at half its size, and the
    items it did not take go into the next batches, which the sizer keeps at the lowered size (until it grows
    back). Work already done is never redone. Caches are freed after an out-of-memory only.

    `run_batch(batch)` must return one output per item of `batch`, in its order, consuming any lazy generator
    itself and building its inputs afresh on every call (a retry calls it again with fewer items). Raises
    BatchOutOfMemory (a GpuOutOfMemory) when an item does not fit even alone, saying which; any other error,
    and a wrong number of outputs (ValueError), propagates unchanged.
    """
    done: BatchedStage[OutT] = BatchedStage([], [])
    position = 0
    while position < len(items):
        start = position

        def call(size: int, start: int = start) -> Sequence[OutT]:
            batch = items[start : start + size]
            outputs = run_batch(batch)
            if len(outputs) != len(batch):
                raise ValueError(f"run_batch gave {len(outputs)} outputs for a batch of {len(batch)} items")
            return outputs

        try:
            outputs, record = run_with_oom_backoff(
                stage,
                sizer,
                call,
                free_caches=free_caches,
                sample_interval=sample_interval,
                max_size=len(items) - position,
            )
        except GpuOutOfMemory as exc:
            raise BatchOutOfMemory(str(exc), position, done, exc.record) from exc.__cause__
        done.outputs.extend(outputs)
        done.batches.append(record)
        position += record.batch_size_used
    return done
