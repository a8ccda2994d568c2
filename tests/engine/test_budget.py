"""One GPU memory budget for the stages of one process (BatchSizer.granted): what it counts as available, what the
running batches hold in it, and what an out-of-memory beside another stage's batch does.

Free memory, PyTorch's cache and time are the fakes (FakeProbe, the `cached` and `release_cached` arguments,
FakeClock); the threads, the grants and the back-off are the real code, so the suite needs no GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from batch.common.units import GiB, MiB
from batch.engine.gpu.oom import GpuOutOfMemory, run_with_oom_backoff
from batch.engine.gpu.sizing import BatchSizer, Grant
from tests.memory_fakes import FakeClock, FakeProbe


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def budget_of(probe: FakeProbe, clock: FakeClock | None = None, **kwargs: object) -> BatchSizer:
    """1 GiB an item, 1 GiB reserve, no PyTorch cache unless given."""
    kwargs.setdefault("cached", lambda: 0)
    items = {"asr": 1 * GiB, "align": 1 * GiB, "diarize": 1 * GiB, "vad": 1 * GiB}
    return BatchSizer(16, items, probe, 1 * GiB, clock or FakeClock(), **kwargs)  # type: ignore[arg-type]


# --- what a running batch holds: counted once ----------------------------------------------------------------


def test_a_batch_running_on_another_thread_holds_its_grant_until_it_ends() -> None:
    """The ASR plans against free memory less what a diarization batch was granted and the device does not show
    yet; once that batch ends, the whole free memory is the ASR's again."""
    budget = budget_of(FakeProbe(free=12 * GiB))
    assert budget.size_for("asr") == 11
    with budget.granted("diarize", at_most=8) as grant:
        assert budget.size_for("asr") == 3 and grant.size == 8 and grant.ran_alone
    assert budget.size_for("asr") == 11


def test_a_running_batch_is_counted_once_whether_the_reading_shows_its_memory_or_not() -> None:
    """An ASR batch of 4 (4 GiB granted) on a card with 12 GiB free: diarization planned beside it gets 7 before
    the batch allocates, when it has allocated half and when it has allocated all. Subtracting the grant from a
    reading that already shows it (the double count) gave 5, then 3."""
    probe = FakeProbe(free=12 * GiB)
    budget = budget_of(probe)
    beside: list[int] = []

    def asr(size: int) -> int:
        for shown in (0, 2 * GiB, 4 * GiB):
            probe.free = 12 * GiB - shown
            beside.append(budget.size_for("diarize"))
        return size

    _, record = run_with_oom_backoff("asr", budget, asr, free_caches=lambda: None, max_size=4)
    assert record.batch_size_used == 4 and beside == [7, 7, 7]
    probe.free = 12 * GiB
    assert budget.size_for("diarize") == 11  # ended: nothing held


def test_two_running_batches_are_each_counted_once() -> None:
    """ASR (4 GiB) has allocated all of it; diarization (2 GiB), granted after, nothing yet: 2 GiB of the 8 free are
    still theirs to take, and the VAD gets (8 - 2 - 1 reserve) / 1 GiB = 5 windows."""
    probe = FakeProbe(free=12 * GiB)
    budget = budget_of(probe)
    with budget.granted("asr", at_most=4):
        probe.free = 8 * GiB
        with budget.granted("diarize", at_most=2):
            assert budget.size_for("vad") == 5
            probe.free = 6 * GiB  # diarization allocated too
            assert budget.size_for("vad") == 5


def test_a_model_load_holds_its_weights_in_the_budget_until_they_show() -> None:
    """A 2 GiB model loading beside the ASR: the ASR's batches leave room for it while it loads, and count its
    weights once when the device shows them."""
    probe = FakeProbe(free=12 * GiB)
    budget = budget_of(probe)
    with budget.holding("alignment model", 2 * GiB) as load:
        assert budget.size_for("asr") == 9 and load.free_bytes == 12 * GiB
        probe.free = 10 * GiB  # the weights are on the device
        assert budget.size_for("asr") == 9
    assert budget.size_for("asr") == 9


# --- PyTorch's cache: PyTorch's stages only --------------------------------------------------------------------


def ctranslate2_like(probe: FakeProbe, sizes: list[int]) -> Callable[[int], int]:
    """An ASR batch as CTranslate2 runs it: 1 GiB an item from its own allocator, which gets only what NVML shows
    free (PyTorch's cached blocks are not its to take)."""

    def asr(size: int) -> int:
        sizes.append(size)
        if size * GiB > probe.free - 1 * GiB:
            raise RuntimeError("CUDA failed with error out of memory")
        return size

    return asr


def test_pytorch_cached_memory_is_handed_back_before_a_ctranslate2_batch_counts_on_it() -> None:
    """5 GiB free, 4 GiB in PyTorch's cache (NVML counts it used): wav2vec2 reuses those blocks, CTranslate2 cannot.
    The ASR's grant of 8 hands them back to the driver first, and the batch runs. Counting them as free without
    that, the batch of 8 ran out of memory, and the ASR was held to 4 for the files after."""
    probe, cache = FakeProbe(free=5 * GiB), {"bytes": 4 * GiB}
    released: list[int] = []

    def release() -> None:
        released.append(cache["bytes"])
        probe.free, cache["bytes"] = probe.free + cache["bytes"], 0

    budget = budget_of(probe, cached=lambda: cache["bytes"], release_cached=release)
    assert budget.size_for("align") == 8 and budget.size_for("asr") == 8  # (5 + 4 - 1) GiB
    sizes: list[int] = []
    _, record = run_with_oom_backoff("asr", budget, ctranslate2_like(probe, sizes), free_caches=lambda: None)
    assert released == [4 * GiB] and sizes == [8] and record.oom_retries == 0 and budget.limit("asr") is None


def test_a_ctranslate2_grant_counts_only_what_is_free_on_the_device() -> None:
    """PyTorch's cache that cannot be handed back (its blocks in use by the time it is released) is not counted
    for the ASR's grant: it gets what NVML shows free."""
    probe = FakeProbe(free=5 * GiB)
    budget = budget_of(probe, cached=lambda: 4 * GiB)  # no CUDA here: releasing it frees nothing
    sizes: list[int] = []
    _, record = run_with_oom_backoff("asr", budget, ctranslate2_like(probe, sizes), free_caches=lambda: None)
    assert sizes == [4] and record.oom_retries == 0


def test_pytorch_cache_is_kept_when_the_ctranslate2_stage_does_not_need_it() -> None:
    released: list[int] = []
    budget = budget_of(FakeProbe(free=40 * GiB), cached=lambda: 4 * GiB, release_cached=lambda: released.append(1))
    run_with_oom_backoff("asr", budget, lambda size: size, free_caches=lambda: None)
    assert released == []  # 16 fit without it: the stages on other threads keep their cached blocks


# --- planning and granting: one step ---------------------------------------------------------------------------


class ProbeWithHook(FakeProbe):
    """A probe that runs `hook` (once) while the budget reads it: another thread starts mid-plan."""

    hook: threading.Thread | None = None

    def free_and_total(self) -> tuple[int, int]:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook.start()
        return super().free_and_total()


def test_a_batch_planned_while_another_is_being_planned_counts_on_what_that_one_was_granted() -> None:
    """Diarization's plan starts a VAD batch's plan on another thread while it reads the device: the VAD's plan
    waits until diarization's grant is held, and gets the memory left (12 - 4 - 1 reserve), not the same 11 GiB."""
    probe = ProbeWithHook(free=12 * GiB)
    budget = budget_of(probe)
    vad: list[Grant] = []

    def plan_vad() -> None:
        with budget.granted("vad") as grant:
            vad.append(grant)

    vad_thread = probe.hook = threading.Thread(target=plan_vad)
    with budget.granted("diarize", at_most=4) as diarize:
        vad_thread.join(timeout=30)  # started by diarization's reading: it ends only once granted
    assert diarize.size == 4 and [grant.size for grant in vad] == [7] and vad[0].shared


# --- an out-of-memory beside another stage's batch -----------------------------------------------------------


def test_an_out_of_memory_beside_another_stage_holds_the_stage_when_it_runs_beside_one_again() -> None:
    """A card too small for both stages at full size: the ASR beside a diarization batch ran out of memory at 16.
    The next files' ASR batches start at 8 beside one (not 16, to run out of memory once per file), at 16 alone, and
    grow back beside one after 2 clean runs there and 60 s."""
    clock = FakeClock()
    budget = BatchSizer(16, {"asr": 100 * MiB, "diarize": 100 * MiB}, FakeProbe(free=40 * GiB), 1 * GiB, clock)
    sizes: list[int] = []

    def asr(size: int) -> int:
        sizes.append(size)
        if len(sizes) == 1:
            with budget.granted("diarize", at_most=4):  # the finishing thread's batch, running meanwhile
                raise oom()
        return size

    result, record = run_with_oom_backoff("asr", budget, asr, free_caches=lambda: None)
    assert result == 8 and sizes == [16, 8] and record.oom_retries == 1
    assert budget.limit("asr") is None and budget.limit("asr", beside=True) == 8
    assert budget.size_for("asr") == 16  # alone: all its own
    with budget.granted("diarize", at_most=4):
        assert budget.size_for("asr") == 8
        for _ in range(2):
            _, record = run_with_oom_backoff("asr", budget, lambda size: size, free_caches=lambda: None)
            assert record.batch_size_used == 8 and record.oom_retries == 0
        clock.now += 61
        assert budget.size_for("asr") == 16


def test_an_out_of_memory_at_size_one_beside_another_stage_waits_for_it_and_retries_alone() -> None:
    """Alignment at 1 segment runs out of memory while the ASR's batch holds 30 GiB: instead of failing the file
    it waits until that batch has ended (and its memory is back), runs again alone, and works; a batch another
    thread asks for meanwhile starts only after it."""
    probe = FakeProbe(free=40 * GiB)
    budget = budget_of(probe)
    asr_running, asr_may_end = threading.Event(), threading.Event()
    later: list[Grant] = []

    def asr() -> None:
        with budget.granted("asr"):
            probe.free -= 30 * GiB
            asr_running.set()
            asr_may_end.wait(timeout=30)
            probe.free += 30 * GiB

    def vad() -> None:
        with budget.granted("vad") as grant:
            later.append(grant)

    asr_thread, vad_thread = threading.Thread(target=asr), threading.Thread(target=vad)
    tries: list[tuple[int, int]] = []

    def align(size: int) -> str:
        tries.append((size, probe.free))
        if len(tries) == 1:
            asr_may_end.set()  # it may end from now on: the retry must wait for it
            raise oom()
        vad_thread.start()  # asks while the retry runs alone: waits for it
        return "aligned"

    asr_thread.start()
    assert asr_running.wait(timeout=30)
    result, record = run_with_oom_backoff("align", budget, align, free_caches=lambda: None, max_size=1)
    asr_thread.join(timeout=30)
    vad_thread.join(timeout=30)
    assert result == "aligned" and tries == [(1, 10 * GiB), (1, 40 * GiB)]
    assert record.oom_retries == 1 and not record.failed and record.batch_size_used == 1
    assert len(later) == 1 and later[0].ran_alone  # it never ran beside the retry


def test_an_out_of_memory_at_size_one_alone_fails_the_file() -> None:
    def align(size: int) -> str:
        raise oom()

    budget = budget_of(FakeProbe(free=40 * GiB))
    with pytest.raises(GpuOutOfMemory) as failure:
        run_with_oom_backoff("align", budget, align, free_caches=lambda: None, max_size=1)
    assert failure.value.record.failed and failure.value.record.oom_retries == 0


def test_a_model_load_is_held_at_the_bytes_its_move_to_the_device_allocates() -> None:
    """What the alignment's loader holds while a model goes on the device beside the ASR (batch.engine.gpu.placing):
    its parameters' and buffers' bytes, whatever their types, here 1 GiB and a little of the 12 free. A model on
    PyTorch's meta device: shapes and types, no memory."""
    from batch.engine.gpu.placing import model_bytes

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(16384, 16384), torch.nn.BatchNorm1d(16384))
    # Linear's weight and bias, BatchNorm's weight, bias, running mean and variance (float32), its batch count (int64)
    assert model_bytes(model) == (16384 * 16384 + 5 * 16384) * 4 + 8
    budget = budget_of(FakeProbe(free=12 * GiB))
    with budget.holding("alignment model", model_bytes(model)):
        assert budget.size_for("asr") == 9  # (12 - 1.0003 - 1) GiB
    assert budget.size_for("asr") == 11
