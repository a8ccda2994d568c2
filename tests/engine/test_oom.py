"""GPU out-of-memory back-off: one stage retried at half the batch size, many batches in a row, the records.

Free memory and time are the two fakes (FakeProbe, FakeClock); everything else is the real code, so the
suite needs no GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest
import torch

from batch.common.advice import advice_for
from batch.common.errors import FileFailure
from batch.common.units import GiB, MiB
from batch.engine.gpu.oom import (
    BatchedStage,
    BatchOutOfMemory,
    CudaContextLost,
    GpuOutOfMemory,
    StageMemoryRecord,
    is_context_lost,
    is_out_of_memory,
    map_in_batches,
    merge_records,
    raise_if_context_lost,
    run_with_oom_backoff,
)
from batch.engine.gpu.sizing import BatchSizer
from tests.memory_fakes import FakeClock, FakeProbe, sizer


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# --- out-of-memory back-off ----------------------------------------------------------------------------------


class FlakyStage:
    """A stage that runs out of memory on its first `failures` calls, whatever the batch size."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error = failures, error
        self.sizes: list[int] = []

    def __call__(self, batch_size: int) -> str:
        self.sizes.append(batch_size)
        if len(self.sizes) <= self.failures:
            raise self.error
        return f"done at {batch_size}"


def test_alignment_batches_and_backs_off_like_the_other_stages() -> None:
    """On a GPU a file's segments share wav2vec2 forwards (batch.engine.align.words): its out-of-memory halves the
    batch, and the lowered size is the alignment's own."""
    controller = BatchSizer.for_model(16, "large-v3", "float16", FakeProbe(free=40 * GiB))
    stage = FlakyStage(1, RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB"))
    result, record = run_with_oom_backoff("align", controller, stage, free_caches=lambda: None)
    assert result == "done at 8" and stage.sizes == [16, 8] and record.oom_retries == 1
    assert controller.size_for("align") == 8 and controller.size_for("asr") == 16


def test_out_of_memory_halves_the_batch_size_and_retries_the_stage() -> None:
    freed: list[int] = []
    controller = sizer(FakeProbe(free=40 * GiB))
    stage = FlakyStage(2, oom())
    result, record = run_with_oom_backoff("asr", controller, stage, free_caches=lambda: freed.append(1))
    assert result == "done at 4"
    assert stage.sizes == [16, 8, 4]
    assert (record.batch_size_requested, record.batch_size_planned, record.batch_size_used) == (16, 16, 4)
    assert record.oom_retries == 2
    assert record.free_bytes == 40 * GiB
    assert len(freed) == 2  # after each out-of-memory only: cached memory counts as available
    assert controller.size_for("asr") == 4  # remembered for the next file


def test_ctranslate2_out_of_memory_is_recognised_without_a_probe() -> None:
    freed: list[int] = []
    stage = FlakyStage(1, RuntimeError("CUDA failed with error out of memory"))
    result, record = run_with_oom_backoff("asr", sizer(None, ceiling=6), stage, free_caches=lambda: freed.append(1))
    assert result == "done at 3"
    assert record.oom_retries == 1 and record.free_bytes is None
    assert len(freed) == 1  # nothing to measure without a probe: caches freed only after the failure


def test_out_of_memory_at_batch_size_1_fails_the_file_with_a_clear_reason() -> None:
    stage = FlakyStage(99, oom())
    probe = FakeProbe(free=int(1.2 * GiB) + 1, total=80 * GiB)
    with pytest.raises(GpuOutOfMemory) as failure:
        run_with_oom_backoff("asr", sizer(probe, ceiling=4), stage, free_caches=lambda: None)
    assert stage.sizes == [2, 1]  # 0.2 GiB above the reserve: 2 items planned, then halved to 1
    assert isinstance(failure.value, FileFailure)
    assert str(failure.value) == (
        "out of GPU memory at batch size 1 in stage asr (free 1.2 GiB of 80.0 GiB before the stage)"
    )
    assert isinstance(failure.value.__cause__, torch.OutOfMemoryError)
    record = failure.value.record  # for the failed file's manifest
    assert (record.batch_size_planned, record.batch_size_used, record.oom_retries, record.failed) == (2, 1, 1, True)


def test_other_errors_propagate_at_once() -> None:
    stage = FlakyStage(1, ValueError("bad audio"))
    with pytest.raises(ValueError, match="bad audio"):
        run_with_oom_backoff("asr", sizer(FakeProbe(free=8 * GiB)), stage, free_caches=lambda: None)
    assert stage.sizes == [16]


def test_an_out_of_memory_inside_a_lazy_generator_is_caught_when_the_call_consumes_it() -> None:
    def batches(batch_size: int) -> Iterator[int]:
        for index in range(3):
            if index == 2 and batch_size > 4:  # fails late, as a pipeline does on a long file's dense part
                raise RuntimeError("CUDA failed with error out of memory")
            yield index * batch_size

    result, record = run_with_oom_backoff(
        "asr", sizer(None, ceiling=16), lambda size: list(batches(size)), free_caches=lambda: None
    )
    assert result == [0, 4, 8]
    assert record.oom_retries == 2


def test_out_of_memory_is_found_down_an_exception_chain() -> None:
    try:
        try:
            raise oom()
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("alignment failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_out_of_memory(MemoryError())


@pytest.mark.parametrize(
    "text",
    [
        # PyTorch's wording when cublasCreate fails on a full GPU (a new thread's first matmul)
        "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cuDNN error: CUDNN_STATUS_NOT_INITIALIZED",
        "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR",
        "CUDA failed with error out of memory",  # CTranslate2's
    ],
)
def test_the_libraries_out_of_memory_texts_are_backed_off_from(text: str) -> None:
    assert is_out_of_memory(RuntimeError(text))
    assert advice_for(text) is not None and "ran out of memory" in advice_for(text)  # type: ignore[operator]

    def call(size: int) -> int:
        if size > 2:
            raise RuntimeError(text)
        return size

    result, record = run_with_oom_backoff("asr", sizer(None, ceiling=8), call, free_caches=lambda: None)
    assert result == 2 and record.oom_retries == 2


@pytest.mark.parametrize(
    "text",
    [
        "CUDA error: an illegal memory access was encountered",
        "CUDA error: device-side assert triggered",
        "CUDA error: unspecified launch failure",
        "CUDA failed with error an illegal memory access was encountered",  # CTranslate2's
        "CUDA error: misaligned address",
    ],
)
def test_a_sticky_cuda_error_is_a_lost_context_found_down_the_chain(text: str) -> None:
    wrapped = ValueError("alignment with wav2vec2 failed")
    wrapped.__cause__ = RuntimeError(text)  # as `raise ValueError(...) from inner` leaves it
    assert is_context_lost(wrapped) and not is_out_of_memory(wrapped)
    with pytest.raises(CudaContextLost, match="the CUDA context is lost") as lost:
        raise_if_context_lost(wrapped)
    assert lost.value.exit_code == 3 and lost.value.__cause__ is wrapped
    raise_if_context_lost(RuntimeError("CUDA out of memory"))  # not sticky: nothing raised
    assert not is_context_lost(RuntimeError("invalid data found when processing input"))


def test_the_peak_during_a_batch_is_measured_and_corrects_the_estimate() -> None:
    class RisingProbe(FakeProbe):
        """Used memory rises while the batch runs; tells the batch when a sample has seen the rise."""

        def __init__(self) -> None:
            super().__init__(free=40 * GiB, used=2 * GiB)
            self.rise_seen = threading.Event()
            self.high = False

        def used(self) -> int:
            if self.high:
                self.rise_seen.set()
                return 2 * GiB + 8 * 400 * MiB
            return 2 * GiB

    probe = RisingProbe()
    controller = sizer(probe, ceiling=8, item=200 * MiB)

    def batch(size: int) -> int:
        probe.high = True
        assert probe.rise_seen.wait(timeout=10), "the sampler never read the used memory during the batch"
        probe.high = False  # released before the call returns, as the allocator's blocks would be
        return size

    _, record = run_with_oom_backoff("asr", controller, batch, free_caches=lambda: None, sample_interval=0.001)
    assert record.peak_growth_bytes == 8 * 400 * MiB
    assert controller.item_bytes("asr") == 300 * MiB  # halfway from the 200 MiB seed to the measured 400


def test_a_file_with_fewer_items_than_the_batch_is_measured_per_real_item() -> None:
    probe = FakeProbe(free=40 * GiB)
    controller = sizer(probe, ceiling=16, item=100 * MiB)

    def batch(size: int) -> None:
        probe.used_bytes += 2 * 300 * MiB  # two chunks, held until the end of the stage

    run_with_oom_backoff("asr", controller, batch, free_caches=lambda: None, items=2)
    assert controller.item_bytes("asr") == 200 * MiB  # 600 MiB over 2 items, not over 16


def test_a_stage_record_is_its_manifest_entry() -> None:
    record = StageMemoryRecord("asr", 16, 16, 4, 2, 5 * GiB, 80 * GiB, None)
    assert record.to_dict() == {
        "batch_size_requested": 16,
        "batch_size_planned": 16,
        "batch_size_used": 4,
        "oom_retries": 2,
        "free_bytes": 5 * GiB,
        "total_bytes": 80 * GiB,
        "peak_growth_bytes": None,
        "failed": False,
    }


# --- many batches in a row (items of several files in one batch) ---------------------------------------------


def sizes_run(done: BatchedStage) -> list[int]:
    """The number of items in each batch that ran, in order."""
    return [record.batch_size_used for record in done.batches]


class FakeAsr:
    """A batched stage that runs out of memory, as CTranslate2 says it, on a batch above `fits` items or on a
    batch holding one of `too_big` (an item that does not fit even alone); its output for an item is `item * 10`."""

    def __init__(self, fits: int = 1_000, too_big: frozenset[int] = frozenset()):
        self.fits, self.too_big = fits, too_big
        self.batches: list[list[int]] = []

    def __call__(self, batch: Sequence[int]) -> list[int]:
        self.batches.append(list(batch))
        if len(batch) > self.fits or self.too_big.intersection(batch):
            raise RuntimeError("CUDA failed with error out of memory")
        return [item * 10 for item in batch]


def test_items_are_mapped_in_batches_as_large_as_memory_allows_in_their_order() -> None:
    probe = FakeProbe(free=1 * GiB + 3 * 100 * MiB)  # room for 3 items of 100 MiB above the reserve
    asr = FakeAsr()
    done = map_in_batches("asr", sizer(probe, ceiling=8), list(range(8)), asr, free_caches=lambda: None)
    assert done.outputs == [item * 10 for item in range(8)]
    assert sizes_run(done) == [3, 3, 2]  # the last batch is what is left
    assert asr.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]
    record = done.record
    assert record is not None
    assert (record.batch_size_requested, record.batch_size_planned, record.batch_size_used) == (8, 3, 3)
    assert (record.oom_retries, record.failed, record.free_bytes) == (0, False, 1 * GiB + 300 * MiB)


def test_a_batch_that_runs_out_of_memory_is_split_and_nothing_done_is_redone() -> None:
    freed: list[int] = []
    controller = sizer(FakeProbe(free=40 * GiB), ceiling=8, clock=FakeClock())
    asr = FakeAsr(fits=3)
    items = list(range(20))
    done = map_in_batches("asr", controller, items, asr, free_caches=lambda: freed.append(1))
    assert done.outputs == [item * 10 for item in items]
    assert [len(batch) for batch in asr.batches] == [8, 4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]  # 2 failed tries, then 2s
    assert asr.batches[2] == [0, 1]  # the failed batch's first items, then the rest of it in the next batches
    assert sizes_run(done) == [2] * 10
    assert [record.oom_retries for record in done.batches] == [2] + [0] * 9
    record = done.record
    assert record is not None and (record.batch_size_planned, record.batch_size_used, record.oom_retries) == (8, 2, 2)
    assert len(freed) == 2  # after each out-of-memory, never between clean batches
    assert controller.limit("asr") == 2  # remembered for what comes next


def test_the_last_batch_backs_off_from_its_real_size_not_from_the_planned_one() -> None:
    asr = FakeAsr(fits=2)
    done = map_in_batches("asr", sizer(None, ceiling=16), list(range(6)), asr, free_caches=lambda: None)
    assert [len(batch) for batch in asr.batches] == [6, 3, 1, 1, 1, 1, 1, 1]  # 6 items, not 16, 8, 4
    assert done.outputs == [item * 10 for item in range(6)]


def test_an_item_that_does_not_fit_alone_fails_by_itself_and_the_rest_can_go_on() -> None:
    controller = sizer(None, ceiling=4)
    asr = FakeAsr(too_big=frozenset({5}))
    items = list(range(8))
    with pytest.raises(BatchOutOfMemory) as failure:
        map_in_batches("asr", controller, items, asr, free_caches=lambda: None)
    error = failure.value
    assert isinstance(error, GpuOutOfMemory) and isinstance(error, FileFailure)
    assert str(error) == "out of GPU memory at batch size 1 in stage asr (free unknown of unknown before the stage)"
    assert isinstance(error.__cause__, RuntimeError) and is_out_of_memory(error.__cause__)
    assert error.index == 5  # the item to fail (its file); those before it are done
    assert error.done.outputs == [0, 10, 20, 30, 40]
    assert sizes_run(error.done) == [4, 1]  # [4..7] failed at 4 and 2, then 4 ran alone; 5 failed alone
    # retried at 2 and at 1 in the batch from item 4; the failure alone at 1 is no retry
    assert (error.record.failed, error.record.oom_retries, error.record.batch_size_used) == (True, 2, 4)
    rest = map_in_batches("asr", controller, items[error.index + 1 :], asr, free_caches=lambda: None)
    assert rest.outputs == [60, 70]


def test_other_errors_and_a_wrong_number_of_outputs_propagate() -> None:
    def wrong(batch: Sequence[int]) -> list[int]:
        return [0]

    with pytest.raises(ValueError, match="gave 1 outputs for a batch of 4 items"):
        map_in_batches("asr", sizer(None, ceiling=4), list(range(4)), wrong, free_caches=lambda: None)

    def bad_audio(batch: Sequence[int]) -> list[int]:
        raise ValueError("bad audio")

    with pytest.raises(ValueError, match="bad audio"):
        map_in_batches("asr", sizer(None, ceiling=4), list(range(4)), bad_audio, free_caches=lambda: None)


def test_no_items_run_no_batch() -> None:
    asr = FakeAsr()
    done = map_in_batches("asr", sizer(FakeProbe(free=8 * GiB)), [], asr, free_caches=lambda: None)
    assert (done.outputs, done.batches, done.record, asr.batches) == ([], [], None, [])


def test_merged_records_of_several_batches() -> None:
    records = [
        StageMemoryRecord("asr", 16, 16, 8, 1, 30 * GiB, 80 * GiB, 2 * GiB),
        StageMemoryRecord("asr", 16, 8, 8, 0, 29 * GiB, 80 * GiB, None),
        StageMemoryRecord("asr", 16, 3, 3, 0, 29 * GiB, 80 * GiB, 3 * GiB),
    ]
    merged = merge_records(records)
    assert merged == StageMemoryRecord("asr", 16, 16, 8, 1, 30 * GiB, 80 * GiB, 3 * GiB, failed=False)
