"""The WhisperX engine on real models and real speech: accuracy, invariants, languages, batches shared across
files, failure isolation and out-of-memory splitting inside a shared batch (the fault is injected at the
recognizer seam; the model, audio, VAD and batching are real)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import jiwer
import numpy as np
import pytest

from batch.common.errors import ConfigError
from batch.engine.asr.recognizer import Chunk, Recognized
from batch.engine.audio import SAMPLE_RATE, decode
from batch.engine.config import RuntimeOptions
from batch.engine.pipeline import DecodedFile, FileOutcome, Stopwatch
from batch.engine.whisperx_pipeline import WhisperxPipeline
from batch.settings.options import load_settings
from tests.conftest import ENGLISH, SPANISH, sections, speak

GERMAN = "Guten Morgen. Der Bericht ist fertig, und wir besprechen ihn am Freitag."
SHORT_LINES = [
    "Please call me back about the invoice.",
    "The delivery arrives on Tuesday morning.",
    "Your appointment is confirmed for noon.",
    "We have moved the meeting to room four.",
    "Thank you for your order, it has shipped.",
    "The password was reset a minute ago.",
]


def engine_for(model: str, batch_size: int = 8, **flags: object) -> WhisperxPipeline:
    settings = load_settings({"model": model, "align": False, "batch_size": batch_size, **flags}, environ={})
    runtime = RuntimeOptions(device="cpu", compute_type="int8", threads=2, batch_size=batch_size)
    return WhisperxPipeline(sections(settings, {}, runtime).pipeline)


def load(path: Path) -> np.ndarray:
    with path.open("rb") as stream:
        return decode(stream)


def decoded(key: str, audio: np.ndarray, clock=None) -> DecodedFile:  # noqa: ANN001
    return DecodedFile(key, audio, Stopwatch(clock) if clock else Stopwatch())


def run(engine: WhisperxPipeline, files: Sequence[DecodedFile], stop=lambda: False) -> dict[str, FileOutcome]:  # noqa: ANN001
    return {outcome.key: outcome for outcome in engine.process(files, stop)}


def text_of(outcome: FileOutcome) -> str:
    return " ".join(segment["text"] for segment in outcome.segments)


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def tiny(tiny_en: str) -> WhisperxPipeline:
    return engine_for(tiny_en)


@pytest.fixture(scope="module")
def short_calls(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("short")
    return [load(speak(line, folder / f"call{index}.wav")) for index, line in enumerate(SHORT_LINES)]


def test_sample_call_is_transcribed_within_a_word_error_bound(
    tiny: WhisperxPipeline, sample_wav: Path, sample_reference: str
) -> None:
    outcome = run(tiny, [decoded("call", load(sample_wav))])["call"]
    error = jiwer.wer(words_of(sample_reference), words_of(text_of(outcome)))
    assert error < 0.35, f"WER {error:.2f}: {text_of(outcome)}"
    assert outcome.transcribed and outcome.error is None
    assert outcome.language == "en"  # tiny.en is English-only, found from the model, not its folder name


def test_segments_are_ordered_and_inside_the_audio(tiny: WhisperxPipeline, sample_wav: Path) -> None:
    audio = load(sample_wav)
    segments = run(tiny, [decoded("call", audio)])["call"].segments
    assert segments
    ends = [0.0]
    for segment in segments:
        assert ends[-1] <= segment["start"] < segment["end"] <= len(audio) / SAMPLE_RATE + 0.01
        assert segment["text"] and segment["text"] == segment["text"].strip()
        ends.append(segment["end"])


def test_silence_and_a_failed_decode_come_back_at_once(tiny: WhisperxPipeline, silence_wav: Path) -> None:
    broken = DecodedFile("broken", None, Stopwatch(), error=ValueError("not audio"))
    outcomes = run(tiny, [decoded("silence", load(silence_wav)), broken])
    assert outcomes["silence"].transcribed and outcomes["silence"].segments == []
    assert not outcomes["broken"].transcribed and str(outcomes["broken"].error) == "not audio"


def test_every_stage_is_timed(tiny: WhisperxPipeline, speech_formats: dict[str, Path]) -> None:
    ticks = iter(range(1000))
    outcome = run(tiny, [decoded("report", load(speech_formats["wav"]), clock=lambda: float(next(ticks)))])["report"]
    assert set(outcome.timings) == {"vad", "asr", "quality"}
    assert all(seconds > 0 for seconds in outcome.timings.values())


def test_an_english_only_model_refuses_another_language_before_any_file(tiny_en: str) -> None:
    """The engine's own check, once the model has loaded: for a hub model whose name does not say it is English-only
    (configure refuses the folder and the names that do say so before anything loads)."""
    config = sections(load_settings({"model": tiny_en, "align": False}, environ={})).pipeline
    config = dataclasses.replace(config, asr=dataclasses.replace(config.asr, language="ru"))
    with pytest.raises(ConfigError, match="language: the model .* is English-only"):
        WhisperxPipeline(config).load()


def test_short_files_share_full_batches_and_read_as_they_do_alone(
    tiny: WhisperxPipeline, short_calls: list[np.ndarray]
) -> None:
    alone = {
        f"call{i}": text_of(run(tiny, [decoded(f"call{i}", audio)])[f"call{i}"]) for i, audio in enumerate(short_calls)
    }
    before = tiny.stats().asr_batches, tiny.stats().asr_items
    shared = run(tiny, [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)])
    batches, items = tiny.stats().asr_batches - before[0], tiny.stats().asr_items - before[1]
    assert {key: text_of(outcome) for key, outcome in shared.items()} == alone
    assert items == len(short_calls) and batches == 1  # six one-chunk files, one batch of six (not six of one)
    for outcome in shared.values():
        assert outcome.timings["asr"] > 0 and outcome.gpu["asr"].batch_size_used == len(short_calls)


def test_languages_mixed_in_one_batch_read_as_they_do_alone(base_multilingual: str, tmp_path: Path) -> None:
    engine = engine_for(base_multilingual, language="auto")
    voices = {"en": ("en-us", ENGLISH), "es": ("es", SPANISH), "de": ("de", GERMAN)}
    audio = {lang: load(speak(text, tmp_path / f"{lang}.wav", voice=voice)) for lang, (voice, text) in voices.items()}
    alone = {lang: run(engine, [decoded(lang, samples)])[lang] for lang, samples in audio.items()}
    shared = run(engine, [decoded(lang, samples) for lang, samples in audio.items()])
    for lang in audio:
        assert shared[lang].language == alone[lang].language == lang
        assert text_of(shared[lang]) == text_of(alone[lang])
    assert "informe" in text_of(shared["es"]).lower() or "viernes" in text_of(shared["es"]).lower()


def test_a_fixed_language_is_used_as_given(base_multilingual: str, tmp_path: Path) -> None:
    engine = engine_for(base_multilingual, language="Spanish")
    outcome = run(engine, [decoded("es", load(speak(SPANISH, tmp_path / "es.wav", voice="es")))])["es"]
    assert outcome.language == "es" and outcome.language_probability is None
    assert "informe" in text_of(outcome).lower() or "viernes" in text_of(outcome).lower()


class Faulty:
    """The real recognizer, with a fault injected: batches holding a poisoned file's chunk, or larger than
    `fits`, raise as a broken input or a full GPU would."""

    def __init__(self, recognize, poisoned: np.ndarray | None = None, fits: int | None = None):  # noqa: ANN001
        self.real, self.poisoned, self.fits, self.sizes = recognize, poisoned, fits, []

    def recognize(self, chunks: Sequence[Chunk]) -> list[Recognized]:
        self.sizes.append(len(chunks))
        if self.poisoned is not None and any(np.shares_memory(c.audio, self.poisoned) for c in chunks):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
        if self.fits is not None and len(chunks) > self.fits:
            raise RuntimeError("CUDA failed with error out of memory")
        return self.real(chunks)


def test_a_bad_file_in_a_shared_batch_fails_alone(tiny_en: str, short_calls: list[np.ndarray]) -> None:
    engine = engine_for(tiny_en)
    engine.load()
    poisoned = short_calls[2]
    engine.recognizer.recognize = Faulty(engine.recognizer.recognize, poisoned=poisoned).recognize  # type: ignore[union-attr]
    outcomes = run(engine, [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)])
    assert len(outcomes) == len(short_calls)
    assert not outcomes["call2"].transcribed and "CUDNN_STATUS_EXECUTION_FAILED" in str(outcomes["call2"].error)
    for key in ("call0", "call1", "call3", "call4", "call5"):
        assert outcomes[key].transcribed and outcomes[key].error is None and text_of(outcomes[key])


def test_a_sticky_cuda_error_stops_the_engine_rather_than_failing_every_file_after_it(
    tiny_en: str, short_calls: list[np.ndarray]
) -> None:
    """An illegal memory access poisons the CUDA context: no later file could run, so the engine raises
    CudaContextLost (a worker exits and a fresh one takes its files; an in-process run stops, nothing written)."""
    from batch.engine.gpu.oom import CudaContextLost

    engine = engine_for(tiny_en)
    engine.load()
    poisoned = short_calls[2]

    def recognize(chunks: Sequence[Chunk]) -> list[Recognized]:
        if any(np.shares_memory(chunk.audio, poisoned) for chunk in chunks):
            raise RuntimeError("CUDA failed with error an illegal memory access was encountered")
        return real(chunks)

    real = engine.recognizer.recognize  # type: ignore[union-attr]
    engine.recognizer.recognize = recognize  # type: ignore[union-attr]
    with pytest.raises(CudaContextLost, match="illegal memory access"):
        run(engine, [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)])


def test_a_shared_batch_out_of_memory_is_split_not_failed(tiny_en: str, short_calls: list[np.ndarray]) -> None:
    engine = engine_for(tiny_en, batch_size=6)
    engine.load()
    fault = Faulty(engine.recognizer.recognize, fits=2)
    engine.recognizer.recognize = fault.recognize  # type: ignore[union-attr]
    outcomes = run(engine, [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)])
    assert all(outcome.transcribed and outcome.error is None for outcome in outcomes.values())
    # Halved until it fits (6, 3, then 1), then the rest at the lowered size; no chunk read twice.
    assert fault.sizes[:2] == [6, 3] and all(size <= 2 for size in fault.sizes[2:])
    assert sum(size for size in fault.sizes if size <= 2) == len(short_calls)
    record = outcomes["call0"].gpu["asr"]
    assert record.batch_size_requested == 6 and record.oom_retries == 2


def test_a_stop_writes_only_files_whose_chunks_are_all_read(tiny_en: str, short_calls: list[np.ndarray]) -> None:
    engine = engine_for(tiny_en, batch_size=2)
    outcomes = []
    for outcome in engine.process(
        [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)], lambda: len(outcomes) >= 2
    ):
        outcomes.append(outcome)
    assert [outcome.key for outcome in outcomes] == ["call0", "call1"]


def test_the_overlapped_path_gives_the_same_outcomes(tiny_en: str, short_calls: list[np.ndarray]) -> None:
    """On a GPU the VAD of the next files and the finishing of done ones run on threads beside the ASR; the
    outcomes must not change. Forced on here, since no GPU is at hand."""
    in_turn, overlapped = engine_for(tiny_en, batch_size=4), engine_for(tiny_en, batch_size=4)
    overlapped.overlap = True
    files = [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)]
    expected = {key: text_of(outcome) for key, outcome in run(in_turn, files).items()}
    files = [decoded(f"call{i}", audio) for i, audio in enumerate(short_calls)]
    got = run(overlapped, files)
    assert {key: text_of(outcome) for key, outcome in got.items()} == expected
    assert all("vad" in outcome.timings for outcome in got.values())
    assert overlapped.stats().asr_batches == 2 and overlapped.stats().asr_items == len(short_calls)
