"""The in-process pipeline on real models and real speech: accuracy, invariants, languages."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
import numpy as np
import pytest

from batch.audio import SAMPLE_RATE, decode
from batch.config import load_settings
from batch.errors import ConfigError
from batch.pipeline import Pipeline, RuntimeOptions, Stopwatch
from tests.conftest import ENGLISH, SPANISH, speak

CPU = RuntimeOptions(device="cpu", compute_type="int8", threads=2, batch_size=4)


def pipeline_for(model: str, **flags: object) -> Pipeline:
    return Pipeline(load_settings({"model": model, "align": False, **flags}, environ={}), CPU)


@pytest.fixture(scope="module")
def tiny(tiny_en: str) -> Pipeline:
    return pipeline_for(tiny_en)


def load(path: Path) -> np.ndarray:
    with path.open("rb") as stream:
        return decode(stream)


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def test_models_load_lazily_and_once(tiny_en: str, speech_formats: dict[str, Path]) -> None:
    pipeline = pipeline_for(tiny_en)
    assert not pipeline.loaded
    pipeline.transcribe(load(speech_formats["wav"]))
    model = pipeline._asr
    pipeline.transcribe(load(speech_formats["flac"]))
    assert pipeline._asr is model


def test_sample_call_is_transcribed_within_a_word_error_bound(
    tiny: Pipeline, sample_wav: Path, sample_reference: str
) -> None:
    result = tiny.transcribe(load(sample_wav))
    hypothesis = " ".join(segment["text"] for segment in result.segments)
    error = jiwer.wer(words_of(sample_reference), words_of(hypothesis))
    assert error < 0.35, f"WER {error:.2f}: {hypothesis}"
    assert result.language == "en"  # tiny.en is English-only, found from the model, not its folder name


def test_segments_are_ordered_and_inside_the_audio(tiny: Pipeline, sample_wav: Path) -> None:
    audio = load(sample_wav)
    segments = tiny.transcribe(audio).segments
    assert segments
    ends = [0.0]
    for segment in segments:
        assert ends[-1] <= segment["start"] < segment["end"] <= len(audio) / SAMPLE_RATE + 0.01
        assert segment["text"] and segment["text"] == segment["text"].strip()
        ends.append(segment["end"])


def test_silence_gives_no_segments_not_a_crash(tiny: Pipeline, silence_wav: Path) -> None:
    result = tiny.transcribe(load(silence_wav))
    assert result.segments == []


def test_every_stage_is_timed(tiny: Pipeline, speech_formats: dict[str, Path]) -> None:
    ticks = iter(range(100))
    stopwatch = Stopwatch(clock=lambda: float(next(ticks)))
    result = tiny.transcribe(load(speech_formats["wav"]), stopwatch)
    assert result.timings == {"vad": 1.0, "language": 1.0, "asr": 1.0}


def test_english_only_model_refuses_another_language(tiny_en: str, speech_formats: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="language: the model .* is English-only"):
        pipeline_for(tiny_en, language="ru").transcribe(load(speech_formats["wav"]))


def test_auto_language_is_detected_per_file_never_reused(base_multilingual: str, tmp_path: Path) -> None:
    pipeline = pipeline_for(base_multilingual, language="auto")
    english = load(speak(ENGLISH, tmp_path / "en.wav", voice="en-us"))
    spanish = load(speak(SPANISH, tmp_path / "es.wav", voice="es"))
    detected = [pipeline.transcribe(audio).language for audio in (english, spanish, english)]
    assert detected == ["en", "es", "en"]


def test_fixed_language_is_used_as_given(base_multilingual: str, tmp_path: Path) -> None:
    result = pipeline_for(base_multilingual, language="Spanish").transcribe(
        load(speak(SPANISH, tmp_path / "es.wav", voice="es"))
    )
    assert result.language == "es" and result.language_probability is None
    assert "informe" in result.segments[0]["text"].lower() or "viernes" in result.segments[0]["text"].lower()
