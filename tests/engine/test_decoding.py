"""The decoding options of the whisperx command line, on real models and real speech: prompts and hotwords,
translation, detection among a set of languages, suppressed numerals, the no-speech threshold and the
temperature fallback; each in the settings hash, the config file, and refused with exit 2 when bad."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batch.engine.asr.decoding import DecodingOptions
from batch.engine.asr.recognizer import Chunk, load_recognizer
from batch.engine.config import RuntimeOptions
from batch.settings.options import DECODING_SHAPING, load_settings
from tests.conftest import sections, speak
from tests.engine.test_engine import GERMAN, decoded, engine_for, load, run, text_of

NAMES = "Please send the quarterly report to Jaxon and Siobhan before the meeting on Friday."
NUMBERS = "The invoice total is 250 dollars, due on March 3rd, with a 15 percent discount."


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def settings_hash(**flags: Any) -> str:
    settings = load_settings(flags, environ={})
    return sections(settings, {}, RuntimeOptions("cpu", "int8", 1, 16)).settings_hash


@pytest.fixture(scope="module")
def names_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(NAMES, tmp_path_factory.mktemp("names") / "names.wav")


@pytest.fixture(scope="module")
def german(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return load(speak(GERMAN, tmp_path_factory.mktemp("de") / "de.wav", voice="de"))


# --- spelling: hotwords and the initial prompt ------------------------------------------------------------------


def test_hotwords_spell_rare_names_as_given(tiny_en: str, names_wav: Path) -> None:
    audio = load(names_wav)
    plain = text_of(run(engine_for(tiny_en), [decoded("call", audio)])["call"])
    hinted = text_of(run(engine_for(tiny_en, hotwords="Jaxon, Siobhan"), [decoded("call", audio)])["call"])
    assert "Jaxon" not in plain and "Siobhan" not in plain, plain  # tiny.en hears "Jackson", "Shimon"
    assert "Jaxon" in hinted and "Siobhan" in hinted, hinted


def test_an_initial_prompt_in_the_config_file_spells_rare_names(
    cli, names_wav: Path, tmp_path: Path, tiny_en: str
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(names_wav, source / "call.wav")
    config = tmp_path / "job.toml"
    config.write_text(
        f'model = "{tiny_en}"\nalign = false\n'
        'initial_prompt = "Notes from the call with Jaxon and Siobhan."\nbeam_size = 4\nlength_penalty = 0.9\n'
    )
    result = cli("run", source, "--out", tmp_path / "out", "--config", config)
    assert result.exit_code == 0, result.stderr
    text = " ".join(s["text"] for s in json.loads((tmp_path / "out/call.wav.json").read_text())["segments"])
    assert "Jaxon" in text and "Siobhan" in text, text
    manifest = json.loads((tmp_path / "out/call.wav.manifest.json").read_text())
    assert manifest["settings"]["initial_prompt"] == "Notes from the call with Jaxon and Siobhan."
    assert manifest["settings"]["beam_size"] == 4 and manifest["settings"]["length_penalty"] == 0.9
    # Without the prompt the settings differ: the file is redone, and tiny.en spells the names its own way.
    result = cli("run", source, "--out", tmp_path / "out", "--model", tiny_en, "--no-align")
    assert result.exit_code == 0, result.stderr
    text = " ".join(s["text"] for s in json.loads((tmp_path / "out/call.wav.json").read_text())["segments"])
    assert "Jaxon" not in text and "Siobhan" not in text, text


# --- translation and languages -----------------------------------------------------------------------------------


def test_translate_gives_english_and_keeps_the_spoken_language(base_multilingual: str, german: np.ndarray) -> None:
    spoken = run(engine_for(base_multilingual), [decoded("de", german)])["de"]
    translated = run(engine_for(base_multilingual, task="translate"), [decoded("de", german)])["de"]
    assert {"guten", "morgen", "freitag"} <= words(text_of(spoken)), text_of(spoken)
    # Whisper base hears parts of espeak's German differently from one library release to the next ("Freitag" came
    # back as "a free day" once): the greeting is the part it always translates, and no German word may remain.
    assert {"good", "morning"} <= words(text_of(translated)), text_of(translated)
    assert len(words(text_of(translated))) >= 6, text_of(translated)
    assert not {"guten", "morgen", "freitag"} & words(text_of(translated))
    assert translated.language == spoken.language == "de"


def test_translation_is_not_aligned(base_multilingual: str) -> None:
    settings = load_settings({"model": base_multilingual, "task": "translate"}, environ={})
    assert settings.align and not sections(settings, {}).pipeline.align.enabled


def test_detection_picks_the_likeliest_of_the_set(base_multilingual: str, german: np.ndarray) -> None:
    outside = run(engine_for(base_multilingual, languages="en,es"), [decoded("de", german)])["de"]
    inside = run(engine_for(base_multilingual, languages=["English", "de"]), [decoded("de", german)])["de"]
    assert outside.language in ("en", "es")
    assert inside.language == "de" and inside.language_probability > 0.5
    assert outside.language_probability < 0.5  # Whisper's own probability, over every language


def test_a_language_the_model_does_not_know_is_refused_before_any_file(base_multilingual: str) -> None:
    from batch.common.errors import ConfigError

    with pytest.raises(ConfigError, match="languages: the model .* does not know yue"):
        engine_for(base_multilingual, languages="en,yue").load()  # Cantonese came with large-v3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "translate"], "task: the model .* is English-only: it cannot translate"),
        (["--languages", "es,de"], "languages: the model .* is English-only: it detects no language"),
    ],
)
def test_an_english_only_model_is_refused_before_it_loads(
    cli, tmp_path: Path, tiny_en: str, names_wav: Path, args: list[str], message: str
) -> None:
    """The folder's vocabulary tells: its model.bin is broken, so a check after loading would exit 3."""
    model = tmp_path / "tiny-en-copy"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(Path(tiny_en) / name, model / name)
    (model / "model.bin").write_bytes(b"not a model")
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(names_wav, source / "call.wav")
    result = cli("run", source, "--out", tmp_path / "out", "--model", model, "--no-align", *args)
    assert result.exit_code == 2 and re.search(message, result.stderr), result.stderr


# --- numerals, silence and the temperature fallback ---------------------------------------------------------------


@pytest.fixture(scope="module")
def numbers(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return load(speak(NUMBERS, tmp_path_factory.mktemp("numbers") / "numbers.wav"))


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(16000 * 5) * 0.01).astype(np.float32)


def test_suppressed_numerals_are_written_as_words(tiny_en: str, numbers: np.ndarray) -> None:
    plain = load_recognizer(tiny_en, "cpu", "int8", 2, None, True).recognize([Chunk(numbers, None)])[0].text
    spelled = load_recognizer(tiny_en, "cpu", "int8", 2, None, True, DecodingOptions(suppress_numerals=True))
    text = spelled.recognize([Chunk(numbers, None)])[0].text
    assert re.search(r"[0-9%$]", plain), plain
    assert not re.search(r"[0-9%$£€¥]", text), text
    # "250" is heard as "two hundred fifty" or "...fifteen" depending on the CPU's int8 kernels: both are words
    assert {"hundred", "fifteen", "percent"} <= words(text), text


def test_no_speech_threshold_drops_what_whisper_finds_silent(tiny_en: str, noise: np.ndarray) -> None:
    kept = load_recognizer(tiny_en, "cpu", "int8", 2, None, True).recognize([Chunk(noise, None)])[0]
    quiet = load_recognizer(tiny_en, "cpu", "int8", 2, None, True, DecodingOptions(no_speech_threshold=0.6))
    assert kept.text.strip()  # tiny.en reads something into noise ...
    assert quiet.recognize([Chunk(noise, None)])[0].text == ""  # ... that it finds more likely silence


class GenerateSpy:
    """The real CTranslate2 model, with every generate call's batch size and temperature noted."""

    def __init__(self, model: Any):
        self.model, self.calls = model, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, features: Any, prompts: list, **options: Any) -> Any:
        self.calls.append((len(prompts), options.get("sampling_temperature", 0.0), options["beam_size"]))
        return self.model.generate(features, prompts, **options)


def test_only_chunks_that_fail_are_read_again_hotter(tiny_en: str, numbers: np.ndarray, noise: np.ndarray) -> None:
    options = DecodingOptions(temperatures=(0.0, 0.5, 1.0), best_of=2)
    recognizer = load_recognizer(tiny_en, "cpu", "int8", 2, None, True, options)
    beam_only = load_recognizer(tiny_en, "cpu", "int8", 2, None, True).recognize([Chunk(noise, None)])[0]
    assert beam_only.avg_logprob < options.log_prob_threshold  # the noise's reading fails; the speech's passes
    recognizer.model.model = spy = GenerateSpy(recognizer.model.model)
    speech, reread = recognizer.recognize([Chunk(numbers, None), Chunk(noise, None)])
    assert spy.calls[:2] == [(2, 0.0, 5), (1, 0.5, 1)]  # both by beam search, then the noise alone, sampled
    assert len(spy.calls) in (2, 3) and all(call[:2] == (1, 1.0) for call in spy.calls[2:])
    assert reread.avg_logprob >= beam_only.avg_logprob  # the likeliest reading of those made
    assert speech.text.strip().startswith("The invoice total is")


def test_the_temperature_schedule_follows_whisperx() -> None:
    settings = load_settings({"temperature": 0, "temperature_increment_on_fallback": "0.2"}, environ={})
    assert settings.temperatures() == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert load_settings(
        {"temperature": 0.5, "temperature_increment_on_fallback": 0.25}, environ={}
    ).temperatures() == (0.5, 0.75, 1.0)
    assert load_settings({"temperature": 0.3}, environ={}).temperatures() == (0.3,)
    off = load_settings({"temperature_increment_on_fallback": "None"}, environ={})
    assert off.temperature_increment_on_fallback is None and off.temperatures() == (0.0,)


# --- settings: the hash, the sections, the errors ----------------------------------------------------------------

CHANGED = {
    "task": "translate",
    "languages": "en,es",
    "initial_prompt": "Jaxon and Siobhan",
    "hotwords": "Jaxon",
    "beam_size": 3,
    "best_of": 2,
    "patience": 2.0,
    "length_penalty": 0.5,
    "temperature": 0.2,
    "temperature_increment_on_fallback": 0.2,
    "compression_ratio_threshold": 2.0,
    "log_prob_threshold": -0.5,
    "no_speech_threshold": 0.6,
    "suppress_numerals": True,
}


def test_every_decoding_option_changes_the_settings_hash() -> None:
    assert set(CHANGED) == set(DECODING_SHAPING)
    base = settings_hash()
    hashes = {name: settings_hash(**{name: value}) for name, value in CHANGED.items()}
    assert base not in hashes.values() and len(set(hashes.values())) == len(CHANGED)


def test_default_decoding_keeps_the_settings_hash_of_earlier_runs() -> None:
    """Runs made before these options existed recorded no decoding keys; a default run records none either,
    so its hash, and every file it did, stays as it was. Given at their defaults, they change nothing."""
    settings = load_settings({}, environ={})
    assert not set(DECODING_SHAPING) & set(sections(settings, {}).shaping)
    defaults = {
        "task": "transcribe",
        "beam_size": 5,
        "best_of": 5,
        "patience": 1,
        "length_penalty": 1,
        "temperature": 0,
        "compression_ratio_threshold": 2.4,
        "log_prob_threshold": -1,
        "suppress_numerals": False,
        "languages": "",
        "initial_prompt": " ",
    }
    assert settings_hash(**defaults) == settings_hash()


def test_every_decoding_option_reaches_the_recognizer_section() -> None:
    settings = load_settings({**CHANGED, "task": "transcribe", "languages": "de, Spanish"}, environ={})
    asr = sections(settings, {}).pipeline.asr
    assert asr.languages == ("de", "es")
    assert asr.decoding == DecodingOptions(
        task="transcribe",
        initial_prompt="Jaxon and Siobhan",
        hotwords="Jaxon",
        beam_size=3,
        best_of=2,
        patience=2.0,
        length_penalty=0.5,
        temperatures=(0.2, 0.4, 0.6, 0.8, 1.0),
        compression_ratio_threshold=2.0,
        log_prob_threshold=-0.5,
        no_speech_threshold=0.6,
        suppress_numerals=True,
        no_speech_probability=True,  # the hallucination guard (on by default) reads it
    )


def test_environment_variables_set_decoding_options() -> None:
    environ = {
        "WHISPERX_BATCH_LANGUAGES": "en,de",
        "WHISPERX_BATCH_SUPPRESS_NUMERALS": "true",
        "WHISPERX_BATCH_NO_SPEECH_THRESHOLD": "0.5",
        "WHISPERX_BATCH_TASK": "translate",
    }
    settings = load_settings({}, environ=environ)
    assert (settings.languages, settings.suppress_numerals, settings.no_speech_threshold, settings.task) == (
        ("de", "en"),
        True,
        0.5,
        "translate",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beam-size", "0"], "beam_size: Input should be greater than or equal to 1 (from --beam-size)"),
        (["--best-of", "0"], "best_of: Input should be greater than or equal to 1"),
        (["--patience", "0"], "patience: Input should be greater than 0"),
        (["--length-penalty", "-1"], "length_penalty: Input should be greater than or equal to 0"),
        (["--temperature", "1.5"], "temperature: Input should be less than or equal to 1"),
        (["--temperature-increment-on-fallback", "0"], "temperature_increment_on_fallback: Input should be greater"),
        (["--temperature-increment-on-fallback", "hot"], "temperature_increment_on_fallback: Input should be a valid"),
        (["--compression-ratio-threshold", "0"], "compression_ratio_threshold: Input should be greater than 0"),
        (["--log-prob-threshold", "0.5"], "log_prob_threshold: Input should be less than or equal to 0"),
        (["--no-speech-threshold", "1"], "no_speech_threshold: Input should be less than 1"),
        (["--task", "summarize"], "task: Input should be 'transcribe' or 'translate'"),
        (["--languages", "en,xx"], "languages: unknown language 'xx'"),
        (["--languages", "auto"], "languages: 'auto' is not a language"),
        (["--languages", "en,de", "--language", "fr"], "languages: a set to detect among needs language auto"),
        (["--task", "translate", "--highlight-words"], "highlight_words: a translation is not aligned"),
    ],
)
def test_bad_decoding_values_exit_2_with_one_line(cli_process, tmp_path: Path, args: list[str], message: str) -> None:
    result = cli_process("run", tmp_path, "--out", tmp_path / "out", "--model", "tiny", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("whisperx-batch: error: ")
    assert message in result.stderr, result.stderr


def test_a_prompt_longer_than_half_the_context_is_refused_before_any_file(tiny_en: str) -> None:
    from batch.common.errors import ConfigError

    engine = engine_for(tiny_en, initial_prompt=" ".join(["Jaxon and Siobhan met."] * 60))
    with pytest.raises(ConfigError, match=r"initial_prompt: the prompt and hotwords take \d+ tokens; at most 223"):
        engine.load()


def test_the_guards_second_reading_stops_at_what_its_audio_could_hold(tiny_en: str) -> None:
    """A second reading of hold music looped to the model's longest output at every temperature and sample (311 s
    for 15 recordings of non-speech against 4 s without the guard); bounded, no reading runs past what fast speech
    would say in the chunk's length, and a first reading keeps the model's full length."""
    from batch.engine.asr.decoding import FALLBACK_TEMPERATURES
    from batch.engine.asr.recognizer import MIN_READING_TOKENS, READING_TOKENS_PER_SECOND

    recognizer = load_recognizer(tiny_en, "cpu", "int8", 2, None, True)
    asked: list[int] = []

    class Recording:  # CTranslate2's model, its generate calls recorded (the C++ object takes no new attribute)
        def __init__(self, model: Any):
            self.model = model

        def __getattr__(self, name: str) -> Any:
            return getattr(self.model, name)

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            asked.append(kwargs["max_length"])
            return self.model.generate(*args, **kwargs)

    recognizer.model.model = Recording(recognizer.model.model)
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(3 * 16_000)).astype(np.float32)  # 3 s
    recognizer.recognize([Chunk(noise, None)])
    assert asked and set(asked) == {recognizer.model.max_length}
    asked.clear()
    recognizer.recognize([Chunk(noise, None)], FALLBACK_TEMPERATURES, bounded=True)
    prompt = len(recognizer._prompt(None))
    assert asked and set(asked) == {prompt + MIN_READING_TOKENS + 3 * READING_TOKENS_PER_SECOND}
