"""batch.engine.diarize.speaker_embeddings gives pyannote's speaker embeddings, and so pyannote's speaker turns.

Each check compares with pyannote's own SpeakerDiarization.get_embeddings or pipeline run, offline on the CPU with one
torch thread:
- embeddings: same shape, dtype and NaN slots, inactive slots bit-identical, the rest within EMBEDDING_TOLERANCE
  (batching only reorders float32 sums); the override really ran (its batch count is pyannote's divided by the
  local speakers), the progress hook goes as pyannote's does;
- turns: `speaker_diarization` and `exclusive_speaker_diarization` identical (exact times, labels), on pyannote's
  sample.wav and on an espeak-ng two-voice conversation (overlapped turn, fully silent windows), with and without
  excluding overlap, at several batch sizes and speaker-count constraints;
- the mask cases pyannote branches on (no clean frame, partial-stitching NaNs, a silent window, the min_num_frames
  boundary), several files batched together = one at a time, the override per instance and undone by `del`,
  pipelines whose embedding is not a WeSpeaker ResNet (XVector) refused, training mode left to pyannote;
- full size: bench.models' community-1-shaped pipeline loaded by whisperx's DiarizationPipeline;
- the project's Diarizer shares the trunk of a WeSpeaker pipeline and gives pyannote's turns, and keeps pyannote's
  method for the tiny XVector pipeline.
Pipelines: tests.tiny_models (whisperx's trained segmentation, random narrow WeSpeakerResNet34, random PLDA, VBx
with community-1's parameters). Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pyannote.audio import Pipeline
from pyannote.audio.pipelines import SpeakerDiarization
from pyannote.audio.pipelines.speaker_diarization import DiarizeOutput
from pyannote.audio.utils.signal import binarize
from pyannote.core import Annotation, SlidingWindow, SlidingWindowFeature

from batch.engine.diarize import speaker_embeddings
from batch.engine.diarize.speaker_embeddings import (
    shared_trunk_embeddings,
    shared_trunk_embeddings_many,
    supports_shared_trunk,
    use_shared_trunk_embeddings,
)
from tests.conftest import speak
from tests.tiny_models import build_tiny_diarization_pipeline

torch.set_num_threads(1)

pytestmark = [
    # pyannote's own min_num_samples probe runs the model on a few samples, without weights
    pytest.mark.filterwarnings("ignore:std\\(\\):UserWarning"),
    # XVectorMFCC's default MFCC settings
    pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values:UserWarning"),
]

#: pyannote issue #2050 reports 2.3e-6 on real models; batching only reorders float32 sums
EMBEDDING_TOLERANCE = 1e-5
SAMPLE_RATE = 16000

#: a two-voice conversation: (voice, line); the third line overlaps the second, a long pause precedes the fourth
LINES = [
    ("en-us+m3", "Good morning. I wanted to talk about the budget for next quarter before the meeting starts."),
    ("en-gb+f3", "Sure, I have the numbers here. Travel went up a lot, but the hardware costs went down."),
    ("en-us+m3", "That is good news. Can we move some of that money to the training program?"),
    ("en-gb+f3", "Maybe. Let me check with finance first and I will get back to you this afternoon."),
    ("en-us+m3", "Perfect, thank you. Send me the spreadsheet when you have it."),
]


def load_audio(path: Path) -> np.ndarray:
    """float32 mono 16 kHz, as the project decodes (whisperx's FFmpeg reader)."""
    from whisperx.audio import load_audio

    return load_audio(str(path))


@pytest.fixture(scope="module")
def sample_audio(sample_wav: Path) -> np.ndarray:
    return load_audio(sample_wav)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The LINES spoken by two espeak-ng voices (~30 s): short gaps, the third turn overlapping the second by 1 s,
    and a 6 s pause (longer than a 5 s window: fully silent windows) before the fourth."""
    folder = tmp_path_factory.mktemp("conversation")
    gap = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    audio = np.zeros(0, dtype=np.float32)
    for index, (voice, text) in enumerate(LINES):
        line = 0.5 * load_audio(speak(text, folder / f"line{index}.wav", voice))
        if index == 2:  # over the end of the previous turn
            start = len(audio) - SAMPLE_RATE
            audio = np.concatenate([audio, np.zeros(len(line) - (len(audio) - start), dtype=np.float32)])
            audio[start : start + len(line)] += line
            continue
        if index == 3:
            audio = np.concatenate([audio, np.zeros(6 * SAMPLE_RATE, dtype=np.float32)])
        audio = np.concatenate([audio, line, gap])
    return audio


@pytest.fixture(scope="module")
def audios(sample_audio: np.ndarray, conversation: np.ndarray) -> dict[str, np.ndarray]:
    return {"sample": sample_audio, "espeak": conversation}


@pytest.fixture(scope="module")
def wespeaker_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """community-1's pipeline but for the segmentation (whisperx's trained 5 s multi-label model) and the width of
    the WeSpeakerResNet34 trunk (8 channels instead of 32: 16x fewer FLOPs); random embedding and PLDA."""
    return build_tiny_diarization_pipeline(
        tmp_path_factory.mktemp("wespeaker"),
        segmentation="whisperx",
        clustering="VBxClustering",
        embedding="wespeaker",
        segmentation_step=0.2,
    )


def load_pipeline(folder: Path, embedding_batch_size: int = 32, exclude_overlap: bool = True) -> SpeakerDiarization:
    pipeline = Pipeline.from_pretrained(folder)
    pipeline.embedding_batch_size = embedding_batch_size
    pipeline.embedding_exclude_overlap = exclude_overlap
    return pipeline


def audio_file(waveform: np.ndarray, uri: str) -> dict[str, Any]:
    """A pyannote AudioFile dict, as whisperx's DiarizationPipeline builds it (plus a uri)."""
    return {"waveform": torch.from_numpy(waveform[None, :]), "sample_rate": SAMPLE_RATE, "uri": uri}


def binarized(pipeline: SpeakerDiarization, segmentations: SlidingWindowFeature) -> SlidingWindowFeature:
    """What SpeakerDiarization.apply hands get_embeddings."""
    if pipeline._segmentation.model.specifications.powerset:
        return segmentations
    return binarize(segmentations, onset=pipeline.segmentation.threshold, initial_state=False)


@dataclass
class Run:
    output: DiarizeOutput
    segmentation: SlidingWindowFeature
    binarized: SlidingWindowFeature
    embeddings: np.ndarray
    progress: list[tuple[int, int]] = field(default_factory=list)  # (completed, total) of the embedding step


def diarize(pipeline: SpeakerDiarization, waveform: np.ndarray, **speakers: int) -> Run:
    """pipeline(audio_dict, ...) as the project calls it, with a hook keeping what the steps produced."""
    artefacts: dict[str, Any] = {}
    progress: list[tuple[int, int]] = []

    def hook(
        step: str, artefact: Any, file: Any = None, total: int | None = None, completed: int | None = None
    ) -> None:
        if total is not None:
            if step == "embeddings":
                progress.append((completed, total))
        else:
            artefacts[step] = artefact

    output = pipeline(audio_file(waveform, "test"), hook=hook, **speakers)
    segmentation = artefacts["segmentation"]
    return Run(output, segmentation, binarized(pipeline, segmentation), artefacts["embeddings"], progress)


def turns(annotation: Annotation) -> list[tuple[float, float, str]]:
    return [(segment.start, segment.end, label) for segment, _, label in annotation.itertracks(yield_label=True)]


def assert_same_embeddings(reference: np.ndarray, fast: np.ndarray, binarized: SlidingWindowFeature) -> float:
    """Same shape and NaN slots, inactive slots bit-identical, the rest within tolerance; returns max |diff|."""
    assert fast.shape == reference.shape and fast.dtype == reference.dtype
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(reference))
    inactive = np.nansum(binarized.data, axis=1) == 0
    np.testing.assert_array_equal(fast[inactive], reference[inactive])
    difference = float(np.nanmax(np.abs(fast - reference)))
    assert difference <= EMBEDDING_TOLERANCE
    return difference


def assert_override_ran(reference: Run, fast: Run, batch_size: int) -> None:
    """pyannote batches (window, speaker) pairs; the override batches windows with speech."""
    num_chunks, _, num_speakers = reference.segmentation.data.shape
    speech_windows = int(np.any(reference.binarized.data > 0, axis=(1, 2)).sum())
    assert reference.progress[-1] == (math.ceil(num_chunks * num_speakers / batch_size),) * 2
    assert fast.progress[-1] == (math.ceil(speech_windows / batch_size),) * 2
    completed, total = zip(*fast.progress, strict=True)
    assert list(completed) == list(range(total[0] + 1)) and set(total) == {total[0]}


def assert_not_degenerate(run: Run) -> None:
    """Embeddings that differ between windows, overlapped frames and inactive slots: what could go wrong."""
    active = np.nansum(run.binarized.data, axis=1) > 0
    assert np.ptp(run.embeddings[active], axis=0).max() > 1e-3
    assert (np.sum(run.binarized.data, axis=2) >= 2).any()
    assert (~active).any()


def assert_same_diarization(reference: DiarizeOutput, fast: DiarizeOutput) -> None:
    assert turns(fast.speaker_diarization) == turns(reference.speaker_diarization)
    assert turns(fast.exclusive_speaker_diarization) == turns(reference.exclusive_speaker_diarization)
    np.testing.assert_allclose(fast.speaker_embeddings, reference.speaker_embeddings, rtol=0, atol=EMBEDDING_TOLERANCE)


@pytest.fixture
def trunk_passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The windows of each shared-trunk pass (batch.engine.diarize.speaker_embeddings.embed_windows), as they happen."""
    passes: list[int] = []
    embed_windows: Callable[..., np.ndarray] = speaker_embeddings.embed_windows

    def spy(model: Any, waveforms: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        passes.append(len(waveforms))
        return embed_windows(model, waveforms, masks)

    monkeypatch.setattr(speaker_embeddings, "embed_windows", spy)
    yield passes


CASES = {
    # name: (audio, exclude_overlap, embedding_batch_size, speaker arguments)
    "sample-exclude-batch1-auto": ("sample", True, 1, {}),
    "sample-exclude-batch32-num2": ("sample", True, 32, {"num_speakers": 2}),
    "espeak-exclude-batch32-auto": ("espeak", True, 32, {}),
    "espeak-whole-batch8-min1max3": ("espeak", False, 8, {"min_speakers": 1, "max_speakers": 3}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_embeddings_and_turns_as_pyannote(
    case: str, audios: dict[str, np.ndarray], wespeaker_folder: Path
) -> None:
    audio, exclude_overlap, batch_size, speakers = CASES[case]
    pipeline = load_pipeline(wespeaker_folder, batch_size, exclude_overlap)
    reference = diarize(pipeline, audios[audio], **speakers)
    use_shared_trunk_embeddings(pipeline)
    fast = diarize(pipeline, audios[audio], **speakers)

    assert_not_degenerate(reference)
    assert_override_ran(reference, fast, batch_size)
    difference = assert_same_embeddings(reference.embeddings, fast.embeddings, reference.binarized)
    assert_same_diarization(reference.output, fast.output)
    labels = reference.output.speaker_diarization.labels()
    assert len(labels) >= 2
    print(
        f"\n{case}: max |embedding difference| {difference:.2e}, {len(labels)} speakers, "
        f"{len(turns(reference.output.speaker_diarization))} turns identical"
    )


def edge_case_segmentation(
    binarized: SlidingWindowFeature, chunks: list[int], min_num_frames: int
) -> SlidingWindowFeature:
    """A few real windows altered into the cases pyannote's mask logic branches on (with exclude_overlap, a
    speaker with at most min_num_frames clean frames is pooled over its whole, overlapped, mask)."""
    data = binarized.data[chunks].copy()
    num_frames = data.shape[1]
    data[0, :, 1] = data[0, :, 0]  # speaker 1 exactly overlaps speaker 0: no clean frame -> whole mask
    data[1, : num_frames // 3, :] = np.nan  # partial stitching
    data[2] = 0.0  # silent window
    data[3:5, :, 2] = 0.0  # speaker 2 overlapped, with min_num_frames clean frames (whole mask) or one more
    data[3:5, 20:60, :] = [1.0, 0.0, 1.0]
    data[3, 10 : 10 + min_num_frames, :] = [0.0, 0.0, 1.0]
    data[4, 10 : 11 + min_num_frames, :] = [0.0, 0.0, 1.0]
    window = binarized.sliding_window
    start = window[chunks[0]].start
    return SlidingWindowFeature(data, SlidingWindow(start=start, duration=window.duration, step=window.step))


@pytest.mark.parametrize("exclude_overlap", [True, False])
def test_mask_edge_cases(exclude_overlap: bool, sample_audio: np.ndarray, wespeaker_folder: Path) -> None:
    pipeline = load_pipeline(wespeaker_folder, embedding_batch_size=4)
    file = audio_file(sample_audio, "sample")
    segmentation = binarized(pipeline, pipeline.get_segmentations(file))
    num_chunks, num_frames, _ = segmentation.data.shape
    window_samples = segmentation.sliding_window.duration * SAMPLE_RATE
    min_num_frames = math.ceil(num_frames * pipeline._embedding.min_num_samples / window_samples)
    assert 1 <= min_num_frames < 10
    first = int(np.flatnonzero(segmentation.data.sum(axis=(1, 2)) > 100)[0])  # consecutive windows with speech
    edge_cases = edge_case_segmentation(segmentation, list(range(first, first + 5)), min_num_frames)

    reference = pipeline.get_embeddings(file, edge_cases, exclude_overlap=exclude_overlap)
    fast = shared_trunk_embeddings(pipeline, file, edge_cases, exclude_overlap=exclude_overlap, window_batch_size=3)
    assert_same_embeddings(reference, fast, edge_cases)


def test_several_files_batched_together(audios: dict[str, np.ndarray], wespeaker_folder: Path) -> None:
    pipeline = load_pipeline(wespeaker_folder)
    items = []
    for name, waveform in audios.items():
        file = audio_file(waveform, name)
        items.append((file, binarized(pipeline, pipeline.get_segmentations(file))))

    progress: list[tuple[int, int]] = []

    def hook(step: str, artefact: np.ndarray | None, total: int, completed: int) -> None:
        progress.append((completed, total))

    together = shared_trunk_embeddings_many(pipeline, items, exclude_overlap=True, hook=hook, window_batch_size=7)
    for (file, segmentation), embeddings in zip(items, together, strict=True):
        alone = shared_trunk_embeddings(pipeline, file, segmentation, exclude_overlap=True, window_batch_size=5)
        assert_same_embeddings(alone, embeddings, segmentation)
    assert progress[-1][0] == progress[-1][1] == len(progress) - 1


def test_override_is_per_instance_and_undone(wespeaker_folder: Path) -> None:
    fast = use_shared_trunk_embeddings(load_pipeline(wespeaker_folder))
    plain = load_pipeline(wespeaker_folder)
    assert "get_embeddings" in vars(fast) and "get_embeddings" not in vars(plain)
    assert plain.get_embeddings.__func__ is SpeakerDiarization.get_embeddings
    del fast.get_embeddings
    assert fast.get_embeddings.__func__ is SpeakerDiarization.get_embeddings


def test_other_embedding_models_are_refused(tmp_path: Path) -> None:
    pipeline = Pipeline.from_pretrained(build_tiny_diarization_pipeline(tmp_path / "xvector"))
    assert type(pipeline._embedding.model_).__name__ == "XVectorMFCC"
    assert not supports_shared_trunk(pipeline)
    with pytest.raises(TypeError):
        use_shared_trunk_embeddings(pipeline)
    assert "get_embeddings" not in vars(pipeline)


def test_training_mode_is_left_to_pyannote(
    sample_audio: np.ndarray, wespeaker_folder: Path, trunk_passes: list[int]
) -> None:
    """Hyper-parameter tuning caches embeddings across trials in the file: pyannote's own method does it."""
    pipeline = use_shared_trunk_embeddings(load_pipeline(wespeaker_folder))
    pipeline.training = True
    waveform = sample_audio[: 8 * SAMPLE_RATE]
    segmentation = binarized(pipeline, pipeline.get_segmentations(audio_file(waveform, "short")))
    file = audio_file(waveform, "short")
    embeddings = pipeline.get_embeddings(file, segmentation)
    assert "training_cache/embeddings" in file and not trunk_passes
    reference = SpeakerDiarization.get_embeddings(pipeline, audio_file(waveform, "short"), segmentation)
    np.testing.assert_array_equal(embeddings, reference)


def test_full_size_model_through_whisperx(tmp_path: Path, conversation: np.ndarray) -> None:
    """bench.models' community-1-shaped folder (full-size WeSpeakerResNet34, segmentation-3.0's 10 s powerset
    windows), loaded as the project loads it (whisperx's DiarizationPipeline)."""
    from whisperx.diarize import DiarizationPipeline

    from bench.models import build_diarization_pipeline

    folder = tmp_path / "community-1"
    build_diarization_pipeline(folder)
    whisperx_pipeline = DiarizationPipeline(model_name=str(folder), device="cpu")
    pipeline = whisperx_pipeline.model
    assert type(pipeline) is SpeakerDiarization and type(pipeline._embedding.model_).__name__ == "WeSpeakerResNet34"
    pipeline.embedding_batch_size = 16
    waveform = conversation[: 14 * SAMPLE_RATE]  # two voices and their overlap

    reference = diarize(pipeline, waveform)
    use_shared_trunk_embeddings(pipeline)
    fast = diarize(pipeline, waveform)
    assert_not_degenerate(reference)
    assert_override_ran(reference, fast, batch_size=16)
    difference = assert_same_embeddings(reference.embeddings, fast.embeddings, reference.binarized)
    assert_same_diarization(reference.output, fast.output)

    progress: list[float] = []
    frame = whisperx_pipeline(waveform, progress_callback=progress.append)
    whisperx_turns = list(zip(frame["start"], frame["end"], frame["speaker"], strict=True))
    assert whisperx_turns == turns(reference.output.speaker_diarization)
    assert progress == sorted(progress) and progress[-1] == 100.0
    print(
        f"\nfull size: max |embedding difference| {difference:.2e}, "
        f"{len(reference.output.speaker_diarization.labels())} speakers, {len(whisperx_turns)} turns identical"
    )


def test_the_projects_diarizer_shares_the_trunk_and_gives_pyannotes_turns(
    sample_audio: np.ndarray, wespeaker_folder: Path, tmp_path: Path, trunk_passes: list[int]
) -> None:
    from batch.engine.diarize.diarizer import Diarizer

    shared = Diarizer(str(wespeaker_folder), "cpu", None, None, True)
    assert shared.shared_trunk is True
    shared_turns = shared.turns(sample_audio, None, None, None, batch_size=8)
    assert trunk_passes and max(trunk_passes) <= 8

    plain = Diarizer(str(wespeaker_folder), "cpu", None, None, True)
    del plain._pipeline.model.get_embeddings  # pyannote's own method
    passes = len(trunk_passes)
    plain_turns = plain.turns(sample_audio, None, None, None, batch_size=8)
    assert len(trunk_passes) == passes
    assert shared_turns == plain_turns
    assert len({turn["speaker"] for turn in shared_turns}) >= 2

    xvector = Diarizer(str(build_tiny_diarization_pipeline(tmp_path / "xvector")), "cpu", None, None, True)
    assert xvector.shared_trunk is False
    assert "get_embeddings" not in vars(xvector._pipeline.model)
