"""Voice activity detection on real audio with the real bundled models (pyannote's and faster-whisper's Silero)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batch.engine.audio import decode
from batch.engine.vad.speech import PYANNOTE_WINDOW, SpeechChunk, SpeechDetector, VadOptions, load_vad
from tests.conftest import ENGLISH, speak

METHODS = ("pyannote", "silero")


def read(path: Path) -> np.ndarray:
    with path.open("rb") as stream:
        return decode(stream)


@pytest.fixture(scope="module")
def detectors() -> dict[str, SpeechDetector]:
    """Both methods with default options (so pyannote runs at the default step)."""
    return {method: load_vad(VadOptions(method=method), "cpu") for method in METHODS}


@pytest.fixture(scope="module")
def sample(sample_wav: Path) -> np.ndarray:
    return read(sample_wav)


@pytest.fixture(scope="module")
def reference_speech(sample_wav: Path) -> list[tuple[float, float]]:
    """(start, end) of every turn in sample.wav's .stm reference."""
    lines = [line.split(maxsplit=5) for line in sample_wav.with_suffix(".stm").read_text().splitlines()]
    return [(float(fields[3]), float(fields[4])) for fields in lines if len(fields) == 6]


@pytest.fixture(scope="module")
def espeak(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return read(speak(ENGLISH, tmp_path_factory.mktemp("vad") / "report.wav"))


@pytest.fixture(scope="module")
def silence(silence_wav: Path) -> np.ndarray:
    return read(silence_wav)


def covered_share(chunks: list[SpeechChunk], spans: list[tuple[float, float]]) -> float:
    """The share of the time inside `spans` that some chunk covers (10 ms resolution)."""
    inside = total = 0
    for start, end in spans:
        for t in np.arange(start, end, 0.01):
            total += 1
            inside += any(c.start <= t < c.end for c in chunks)
    return inside / total


def assert_well_formed(chunks: list[SpeechChunk], audio: np.ndarray, chunk_size: float, name: str) -> None:
    duration = len(audio) / 16_000
    for chunk in chunks:
        assert 0 <= chunk.start < chunk.end <= duration, (name, chunk)
        assert chunk.end - chunk.start <= chunk_size, (name, chunk)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.end <= after.start, (name, before, after)


@pytest.mark.parametrize("method", METHODS)
def test_finds_the_speech_of_a_two_speaker_call(detectors, sample, reference_speech, method):
    chunks = detectors[method].speech_chunks(sample)
    assert chunks
    assert covered_share(chunks, reference_speech) > 0.9
    # The call's first 6.6 s are line noise, not speech.
    assert covered_share(chunks, [(0.0, 6.0)]) < 0.1


@pytest.mark.parametrize("method", METHODS)
def test_finds_synthetic_speech(detectors, espeak, method):
    chunks = detectors[method].speech_chunks(espeak)
    assert chunks
    assert covered_share(chunks, [(0.0, len(espeak) / 16_000)]) > 0.8


@pytest.mark.parametrize("method", METHODS)
def test_each_chunk_says_how_much_of_it_is_speech(detectors, sample, espeak, method):
    """What the hallucination guard reads: the seconds inside speech regions, and (pyannote) the mean score."""
    for audio in (sample, espeak):
        for chunk in detectors[method].speech_chunks(audio):
            assert chunk.speech_seconds is not None and 0 < chunk.speech_seconds <= chunk.end - chunk.start + 1e-3  # ms
            if method == "pyannote":
                assert chunk.mean_score is not None and 0.5 < chunk.mean_score <= 1
            else:
                assert chunk.mean_score is None
    speech = detectors[method].speech_chunks(espeak)
    assert sum(chunk.speech_seconds for chunk in speech) / sum(c.end - c.start for c in speech) > 0.8
    assert speech[0] == SpeechChunk(speech[0].start, speech[0].end)  # compared by its times only


@pytest.mark.parametrize("method", METHODS)
def test_silence_has_no_speech(detectors, silence, method):
    assert detectors[method].speech_chunks(silence) == []


@pytest.mark.parametrize("method", METHODS)
def test_no_audio_has_no_speech(detectors, method):
    assert detectors[method].speech_chunks(np.zeros(0, dtype=np.float32)) == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [30.0, 5.0])
def test_chunks_are_ordered_inside_the_audio_and_no_longer_than_chunk_size(sample, espeak, silence, method, chunk_size):
    detector = load_vad(VadOptions(method=method, chunk_size=chunk_size), "cpu")
    speech_start = int(8.9 * 16_000)
    clips = {
        "sample": sample,
        "espeak": espeak,
        "silence": silence,
        "0.3 s of speech": sample[speech_start : speech_start + 4_800],
    }
    for name, audio in clips.items():
        assert_well_formed(detector.speech_chunks(audio), audio, chunk_size, name)
    if chunk_size == 5.0:  # 23 s of talk must have been split
        assert len(detector.speech_chunks(sample)) >= 5


@pytest.mark.parametrize("step", [0.5, 2.5, 1.7])
def test_pyannote_vad_gives_pyannote_scores_and_whisperx_chunks_exactly(sample, espeak, step):
    """batch.engine.vad.segmentation runs the VAD without pyannote.audio: its scores are pyannote's own, bit for bit,
    and its chunks whisperx's, at pyannote's step and coarser ones, on lengths around the window's edge cases."""
    from whisperx.vads import Pyannote
    from whisperx.vads.pyannote import VoiceActivitySegmentation

    from batch.engine.vad.segmentation import load_segmentation, speech_scores
    from batch.engine.vad.speech import BUNDLED_VAD_CHECKPOINT
    from tests.tiny_models import load_pyannote_model

    reference = VoiceActivitySegmentation(
        segmentation=load_pyannote_model(BUNDLED_VAD_CHECKPOINT), device=torch.device("cpu"), step=step
    )
    reference.instantiate({"onset": 0.5, "offset": 0.363, "min_duration_on": 0.1, "min_duration_off": 0.1})
    ours = load_segmentation(BUNDLED_VAD_CHECKPOINT)
    window, hop = 80_000, int(step * 16_000)
    clips = {
        "sample.wav": sample,
        "espeak": espeak,
        "shorter than a window": sample[int(8.9 * 16_000) :][:40_000],
        "one window": sample[:window],
        "windows that fit": sample[: window + 3 * hop],
        "one sample past": sample[: window + 3 * hop + 1],
    }
    for name, audio in clips.items():
        expected = reference({"waveform": torch.from_numpy(audio).unsqueeze(0), "sample_rate": 16_000})
        scores = speech_scores(ours, audio, step)
        assert np.array_equal(scores.data, expected.data), name
        for chunk_size in (30.0, 5.0):
            merged = Pyannote.merge_chunks(expected, chunk_size, onset=0.5, offset=0.363)
            end = len(audio) / 16_000
            chunks = load_vad(VadOptions(step=step, chunk_size=chunk_size), "cpu").speech_chunks(audio)
            assert [(c.start, c.end) for c in chunks] == [(m["start"], min(m["end"], end)) for m in merged], name


def test_the_pyannote_vad_imports_neither_pyannote_audio_nor_lightning(espeak, tmp_path):
    """Importing them costs about 10 s of every run's start-up."""
    audio = tmp_path / "speech.npy"
    np.save(audio, espeak)
    script = (
        "import sys, numpy; from batch.engine.vad.speech import load_vad, VadOptions; "
        f"assert load_vad(VadOptions(), 'cpu').speech_chunks(numpy.load({str(audio)!r})); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics')"
        " or m.startswith('pyannote.audio')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# bench/bench_vad.py: steps up to 3 s move the chunk boundaries that lie in pauses by at most 0.034 s (two
# ~17 ms score frames) and never add, drop or split a chunk. A cut that whisperx's min-cut makes inside
# speech longer than chunk_size picks the lowest score among near-ties, and any step other than 0.5 may pick
# another one: on sample.wav the cuts at chunk_size 10 stay within the tolerance, those at chunk_size 5 move
# by up to 1.5 s (with step 1 as with step 2.5), so 5 is not tested here.
BOUNDARY_TOLERANCE = 0.05


@pytest.mark.parametrize("chunk_size", [30.0, 10.0])
def test_the_default_coarse_step_gives_the_chunks_of_step_half_a_second(sample, chunk_size):
    assert VadOptions().step > 0.5
    fine = load_vad(VadOptions(step=0.5, chunk_size=chunk_size), "cpu").speech_chunks(sample)
    coarse = load_vad(VadOptions(chunk_size=chunk_size), "cpu").speech_chunks(sample)
    assert len(coarse) == len(fine)
    for ours, theirs in zip(coarse, fine, strict=True):
        assert ours.start == pytest.approx(theirs.start, abs=BOUNDARY_TOLERANCE)
        assert ours.end == pytest.approx(theirs.end, abs=BOUNDARY_TOLERANCE)


def test_silero_runs_with_the_network_blocked(monkeypatch, espeak):
    from faster_whisper.vad import get_vad_model

    def refuse(*args, **kwargs):
        raise AssertionError("the VAD tried to reach the network")

    monkeypatch.setattr(torch.hub, "load", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    get_vad_model.cache_clear()  # make the model load again, now, under the block
    chunks = load_vad(VadOptions(method="silero"), "cpu").speech_chunks(espeak)
    assert chunks


def test_silero_thresholds_are_the_onset_and_offset(espeak):
    """A higher onset/offset pair keeps less of the same speech (the options reach faster-whisper)."""
    loose = load_vad(VadOptions(method="silero", onset=0.2, offset=0.1), "cpu").speech_chunks(espeak)
    strict = load_vad(VadOptions(method="silero", onset=0.95, offset=0.9), "cpu").speech_chunks(espeak)
    span = [(0.0, len(espeak) / 16_000)]
    assert covered_share(strict, span) < covered_share(loose, span)


@pytest.mark.parametrize(
    "options",
    [
        {"step": 0.0},
        {"step": -1.0},
        {"step": PYANNOTE_WINDOW + 0.01},
        {"step": 30.0},
        {"onset": 0.0},
        {"offset": 1.0},
        {"chunk_size": 0.0},
        {"method": "webrtc"},
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        VadOptions(**options)


def test_the_window_limit_is_the_model_window():
    """A step of one whole window is allowed (pyannote accepts it); the constant matches the bundled model."""
    detector = load_vad(VadOptions(step=PYANNOTE_WINDOW), "cpu")
    assert detector._model.window_seconds == PYANNOTE_WINDOW
    assert detector.speech_chunks(np.zeros(16_000 * 12, dtype=np.float32)) == []  # windows at 0, 5 and a padded 10


def test_silero_merges_regions_by_whisperx_rule_without_importing_pyannote() -> None:
    import random

    from whisperx.diarize import Segment
    from whisperx.vads import Vad

    from batch.engine.vad.speech import merge_regions

    generator = random.Random(7)
    for _ in range(200):
        regions, moment = [], 0.0
        for _ in range(generator.randint(1, 40)):
            moment += generator.uniform(0, 3)
            length = generator.uniform(0.05, 45)
            regions.append((moment, moment + length))
            moment += length
        chunk_size = generator.choice([5.0, 15.0, 30.0])
        theirs = Vad.merge_chunks([Segment(a, b, "UNKNOWN") for a, b in regions], chunk_size, onset=0.5, offset=None)
        assert merge_regions(regions, chunk_size) == [{"start": c["start"], "end": c["end"]} for c in theirs]

    script = (
        "import sys, numpy as np\n"
        "from batch.engine.vad.speech import VadOptions, load_vad\n"
        "detector = load_vad(VadOptions(method='silero'), 'cpu')\n"
        "detector.speech_chunks(np.zeros(16000 * 3, dtype=np.float32))\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('pyannote', 'lightning')\n"
        "             or name.startswith('whisperx.')))"
    )
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_vad_under_the_gpu_budget_gives_the_same_scores_and_backs_off_on_out_of_memory(sample):
    """The VAD's windows batched by the process's budget (as every GPU stage's): the scores are the same as with
    pyannote's fixed batches, and an out-of-memory halves the batch instead of failing the file."""
    from batch.common.units import MiB
    from batch.engine.gpu.sizing import BatchSizer
    from batch.engine.vad.segmentation import load_segmentation, speech_scores
    from batch.engine.vad.speech import BUNDLED_VAD_CHECKPOINT

    model = load_segmentation(BUNDLED_VAD_CHECKPOINT)
    expected = speech_scores(model, sample, 0.5)
    real_forward, sizes = model.net.forward, []

    def forward_that_fits_4(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        if batch.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(batch)

    model.net.forward = forward_that_fits_4  # type: ignore[method-assign]
    budget = BatchSizer(8, {"vad": 32 * MiB}, probe=None, clock=lambda: 0.0, ceilings={"vad": 32})  # no regrowth
    scores = speech_scores(model, sample, 0.5, budget)
    assert np.array_equal(scores.data, expected.data)
    assert sizes[:3] == [32, 16, 8] and max(sizes[3:]) == 4 and budget.limit("vad") == 4


def test_the_vads_last_window_runs_under_the_budget_and_its_back_off_like_the_others(sample):
    """12.3 s at a 0.5 s step: 15 whole windows and a zero-padded last one. All 16 are sized by the budget, hold
    their grant while they run and are backed off together; the scores are those of pyannote's way (the last
    window alone, after the others)."""
    from batch.common.units import GiB, MiB
    from batch.engine.gpu.sizing import BatchSizer
    from batch.engine.vad.segmentation import load_segmentation, speech_scores
    from batch.engine.vad.speech import BUNDLED_VAD_CHECKPOINT
    from tests.memory_fakes import FakeProbe

    audio = sample[: int(12.3 * 16_000)]
    model = load_segmentation(BUNDLED_VAD_CHECKPOINT)
    expected = speech_scores(model, audio, 0.5)
    budget = BatchSizer(32, {"vad": 32 * MiB}, FakeProbe(free=8 * GiB), 0, clock=lambda: 0.0, cached=lambda: 0)
    real_forward, runs = model.net.forward, []

    def forward_that_fits_4(batch: torch.Tensor) -> torch.Tensor:
        granted = 8 * GiB - budget.plan("vad").free_bytes  # what the batch running now holds in the budget
        runs.append((batch.shape[0], granted // (32 * MiB)))
        if batch.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(batch)

    model.net.forward = forward_that_fits_4  # type: ignore[method-assign]
    scores = speech_scores(model, audio, 0.5, budget)
    assert np.array_equal(scores.data, expected.data)
    assert runs == [(16, 16), (8, 8), (4, 4), (4, 4), (4, 4), (4, 4)]  # every window granted, the last one too
