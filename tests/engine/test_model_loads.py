"""A language's alignment model loads mid-run, on the finishing thread, beside the other stages' batches: it goes on
the GPU under the run's memory budget, an out-of-memory while loading is never taken for a batch's (no halving, no
lowered size for later files, no failed file), it is tried again once the caches are freed and again for the next
file, and nothing keeps a failed file's audio.

The GPU is the CPU here: tests/memory_fakes.FakeCudaMemory stands at torch's `to` (where a real load allocates),
with the device's memory that of the fake NVML probe the budget reads, and raises PyTorch's own out-of-memory."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from batch.common.errors import EnvironmentFault, FileFailure
from batch.common.units import GiB, MiB
from batch.engine.align.aligner import AlignmentModelNotLoaded, ensure_punkt, punkt_root
from batch.engine.audio import decode
from batch.engine.config import AlignConfig, AsrConfig, DiarizeConfig, HubConfig, PipelineConfig, RuntimeOptions
from batch.engine.finish import Finisher
from batch.engine.gpu.placing import model_bytes, put_on_device
from batch.engine.gpu.sizing import BatchSizer, Grant
from batch.engine.pipeline import DecodedFile, FileOutcome, Stopwatch
from batch.engine.vad.speech import VadOptions
from tests.conftest import SITE
from tests.memory_fakes import FakeCudaMemory, FakeProbe
from tests.tiny_models import build_tiny_align_model

# wav2vec2's front end at a 24 GB card's scale is what the sizer grants per segment; the budget here is the fake's.
ALIGN_ITEM = 512 * MiB


@pytest.fixture(scope="module")
def align_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("align-model")
    ensure_punkt("en", punkt_root(str(root)))
    return str(build_tiny_align_model(root / "xlsr", feat_extract_norm="layer"))


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """pyannote's two-speaker call and the first of its reference turns as segments."""
    with (SITE / "sample" / "sample.wav").open("rb") as stream:
        audio = decode(stream)
    segments = []
    for line in (SITE / "sample" / "sample.stm").read_text().splitlines()[:4]:
        _, _, _, start, end, text = line.split(maxsplit=5)
        segments.append({"start": float(start), "end": float(end), "text": text})
    return audio, segments


def gpu_finisher(model: str, cache: Path, budget: BatchSizer) -> Finisher:
    config = PipelineConfig(
        AsrConfig(), VadOptions(), AlignConfig(True, model), DiarizeConfig(), HubConfig(str(cache), offline=True),
        RuntimeOptions("cuda", "float16", 2, 16),
    )  # fmt: skip
    return Finisher(config, budget)


def budget_on(probe: FakeProbe) -> BatchSizer:
    items = {"asr": 1 * GiB, "align": ALIGN_ITEM, "diarize": 128 * MiB}
    return BatchSizer(16, items, probe, reserve_bytes=0, clock=lambda: 0.0, cached=lambda: 0)


def a_file(key: str, speech: tuple[np.ndarray, list[dict[str, Any]]]) -> FileOutcome:
    audio, segments = speech
    decoded = DecodedFile(key, audio.copy(), Stopwatch())
    return FileOutcome(decoded, True, "en", segments=[dict(segment) for segment in segments])


def test_an_alignment_model_with_no_room_is_the_machines_fault_not_a_batch_to_halve_and_loads_once_there_is(
    align_model: str, speech: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = FakeProbe(free=10 * 1024, total=24 * GiB)  # 10 KiB: a full card (the model's weights are ~300 KiB)
    fake = FakeCudaMemory(probe)
    fake.install(monkeypatch)
    budget = budget_on(probe)
    finisher = gpu_finisher(align_model, tmp_path, budget)

    first = a_file("first.wav", speech)
    audio_of_first = weakref.ref(first.file.audio)
    with pytest.raises(AlignmentModelNotLoaded) as failed:
        finisher.finish(first)
    error = failed.value
    assert isinstance(error, EnvironmentFault) and not isinstance(error, FileFailure)  # no failed manifest
    assert "CUDA out of memory. Tried to allocate" in str(error) and "the next file that needs it tries again" in str(
        error
    )
    assert "offline and not in the cache" not in str(error)  # it is in the cache: the GPU is full
    assert [fits for _, fits in fake.moves] == [False, False]  # tried, then once more with the caches freed
    assert budget.limit("align") is None  # not taken for a batch's out-of-memory: no halving, nothing lowered
    assert "align" not in first.gpu and first.alignment is None
    assert not fake.placed and probe.free == 10 * 1024  # nothing left on the device
    del first, failed, error
    gc.collect()
    assert audio_of_first() is None  # the failure kept nothing of the file's

    probe.free = 20 * GiB  # the other stages' memory is free again: the next file that needs the model loads it
    second = a_file("second.wav", speech)
    finisher.finish(second)
    assert second.error is None and second.alignment == {"status": "aligned", "model": align_model}
    # all 4 segments in one forward (the most a forward takes: nothing lowered by the failed load)
    assert second.gpu["align"].batch_size_used == 4 and second.gpu["align"].oom_retries == 0
    assert finisher.alignment_models_loaded() == [align_model]
    assert [fits for _, fits in fake.moves] == [False, False, True]
    assert probe.free == 20 * GiB - fake.moves[-1][0]  # the model now takes its place on the device


def test_a_model_goes_on_the_gpu_once_the_batches_planned_without_it_end_and_holds_its_size_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ASR's batch runs on its thread (planned without the model); the model waits for it to end; meanwhile
    and while it moves, batches planned on other threads leave it room."""
    probe = FakeProbe(free=12 * GiB)
    fake = FakeCudaMemory(probe)
    fake.install(monkeypatch)
    budget = budget_on(probe)
    model = torch.nn.Linear(1024, 1024)
    size = model_bytes(model)
    asr_running, asr_may_end, asr_ended = threading.Event(), threading.Event(), threading.Event()
    seen_at_move: list[tuple[bool, int | None]] = []
    fake.on_move.append(lambda: seen_at_move.append((asr_ended.is_set(), budget.plan("diarize").free_bytes)))

    def asr_batch() -> None:
        with budget.granted("asr", at_most=4):
            asr_running.set()
            asr_may_end.wait()
        asr_ended.set()

    asr = threading.Thread(target=asr_batch)
    asr.start()
    asr_running.wait()
    loader = threading.Thread(target=put_on_device, args=(model, "cuda", budget, lambda: None))
    loader.start()
    waiting = 12 * GiB - 4 * GiB - size  # the ASR's grant and the model's, both held
    while budget.plan("diarize").free_bytes != waiting:  # the model's grant is taken before it waits
        assert loader.is_alive()
        threading.Event().wait(0.001)
    assert not fake.moves  # not while the batch planned without it runs
    asr_may_end.set()
    loader.join()
    asr.join()
    assert seen_at_move == [(True, 12 * GiB - size)]  # after that batch; its size held in the budget as it moved
    assert fake.moves == [(size, True)] and budget.plan("diarize").free_bytes == 12 * GiB - size  # now NVML's


def test_a_load_out_of_memory_frees_the_caches_and_tries_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = FakeProbe(free=1 * MiB)
    fake = FakeCudaMemory(probe)
    fake.install(monkeypatch)
    budget = budget_on(probe)
    model = torch.nn.Linear(1024, 1024)  # 4 MiB

    def free_caches() -> None:  # what emptying PyTorch's cache gives back
        probe.free += 8 * MiB

    assert put_on_device(model, "cuda", budget, free_caches) is model
    assert [fits for _, fits in fake.moves] == [False, True] and id(model) in fake.placed

    probe.free, fake.moves = 1 * MiB, []
    other = torch.nn.Linear(1024, 1024)
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        put_on_device(other, "cuda", budget, lambda: None)
    assert [fits for _, fits in fake.moves] == [False, False] and id(other) not in fake.placed
    assert budget.plan("diarize").free_bytes == 1 * MiB  # no grant left behind


def test_a_load_that_runs_out_of_memory_beside_a_batch_is_tried_again_alone_once_that_batch_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A diarization batch granted on another thread after the model's hold (it left room by its estimate) takes
    more than that: the move runs out of memory. The retry waits for that batch to end and moves alone: a batch
    another thread asks for meanwhile starts only after the model is on the device."""
    probe = FakeProbe(free=12 * GiB)
    fake = FakeCudaMemory(probe)
    fake.install(monkeypatch)
    budget = budget_on(probe)
    model = torch.nn.Linear(1024, 1024)
    greedy_running, greedy_may_end, greedy_ended = threading.Event(), threading.Event(), threading.Event()
    retrying = threading.Event()
    later: list[Grant] = []

    def greedy_batch() -> None:
        with budget.granted("diarize", at_most=1):
            probe.free -= 12 * GiB - 1 * MiB  # far more than its 128 MiB estimate
            greedy_running.set()
            greedy_may_end.wait()
            probe.free += 12 * GiB - 1 * MiB
        greedy_ended.set()

    def later_batch() -> None:
        with budget.granted("diarize", at_most=1) as grant:
            later.append(grant)

    greedy, asking = threading.Thread(target=greedy_batch), threading.Thread(target=later_batch)
    seen_at_move: list[bool] = []

    def on_move() -> None:
        seen_at_move.append(greedy_ended.is_set())
        if len(seen_at_move) == 1:  # the first move: the greedy batch starts beside it
            greedy.start()
            greedy_running.wait()
        else:  # the retry, alone: a batch asked for now waits for it
            asking.start()

    fake.on_move.append(on_move)
    placed: list[Any] = []
    loader = threading.Thread(target=lambda: placed.append(put_on_device(model, "cuda", budget, retrying.set)))
    loader.start()
    retrying.wait()  # the first move ran out of memory; the caches are freed and the retry asks to run alone
    greedy_may_end.set()
    for thread in (loader, greedy, asking):
        thread.join()
    assert placed == [model] and seen_at_move == [False, True]  # the retry moved once that batch had ended
    assert [fits for _, fits in fake.moves] == [False, True]
    assert len(later) == 1 and later[0].ran_alone  # it never ran beside the retry
