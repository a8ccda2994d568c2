"""Settings: precedence flag > environment > config file > default, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.common.errors import EXIT_USAGE, ConfigError
from batch.settings.options import Settings, load_settings
from tests.conftest import sections


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_defaults_apply_when_nothing_is_given() -> None:
    settings = load_settings({}, environ={})
    assert settings.model == "large-v3"
    assert settings.language == "auto"
    assert settings.device == "auto"
    assert settings.batch_size == 16
    assert settings.formats == ("json",)


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'batch_size = 4\nlanguage = "de"\nvad_onset = 0.4\nformats = ["srt"]\n')
    environ = {"WHISPERX_BATCH_BATCH_SIZE": "8", "WHISPERX_BATCH_LANGUAGE": "fr"}
    settings = load_settings({"batch_size": 2}, environ=environ, config_path=config)
    assert settings.batch_size == 2  # flag
    assert settings.language == "fr"  # environment over file
    assert settings.vad_onset == 0.4  # file over default
    assert settings.formats == ("json", "srt")  # json always kept
    assert settings.chunk_size == 30  # default


def test_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, "batch_size = 3\n")
    assert load_settings({}, environ={"WHISPERX_BATCH_CONFIG": str(config)}).batch_size == 3


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parents[2] / "jobs.example.toml"
    load_settings({}, environ={}, config_path=example)
    text = example.read_text()
    for key in Settings.model_fields:
        assert f"\n{key} =" in text or f"\n# {key} =" in text, f"jobs.example.toml does not document {key}"


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, "batchsize = 4\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={}, config_path=config)
    assert caught.value.key == "batchsize"
    assert "unknown config key" in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE


def test_bad_value_names_key_and_source(tmp_path: Path) -> None:
    config = write_config(tmp_path, "batch_size = 0\n")
    with pytest.raises(ConfigError, match=r"batch_size: .*greater than or equal to 1.*config file"):
        load_settings({}, environ={}, config_path=config)
    with pytest.raises(ConfigError, match=r"device: .*WHISPERX_BATCH_DEVICE"):
        load_settings({}, environ={"WHISPERX_BATCH_DEVICE": "tpu"})
    with pytest.raises(ConfigError, match=r"formats: unknown format pdf.*--formats"):
        load_settings({"formats": ("srt,pdf",)}, environ={})


def test_unknown_environment_variable_is_an_error_not_a_silent_typo() -> None:
    with pytest.raises(ConfigError, match="WHISPERX_BATCH_BATCHSIZE"):
        load_settings({}, environ={"WHISPERX_BATCH_BATCHSIZE": "4"})


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "batch_size = = 4\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({}, environ={}, config_path=config)


@pytest.mark.parametrize(
    ("given", "expected"), [("Russian", "ru"), ("ru", "ru"), ("EN", "en"), ("auto", "auto"), ("castilian", "es")]
)
def test_language_accepts_codes_and_names(given: str, expected: str) -> None:
    assert load_settings({"language": given}, environ={}).language == expected


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ConfigError, match="language: unknown language 'klingon'"):
        load_settings({"language": "klingon"}, environ={})


def test_model_accepts_names_repo_ids_and_folders(tmp_path: Path) -> None:
    assert load_settings({"model": "tiny.en"}, environ={}).model == "tiny.en"
    assert load_settings({"model": "Systran/faster-whisper-small"}, environ={}).model == "Systran/faster-whisper-small"
    assert load_settings({"model": str(tmp_path)}, environ={}).model == str(tmp_path.resolve())
    with pytest.raises(ConfigError, match="model: unknown model 'large-v9'"):
        load_settings({"model": "large-v9"}, environ={})


def test_environment_lists_and_booleans_parse() -> None:
    settings = load_settings(
        {},
        environ={
            "WHISPERX_BATCH_FORMATS": "vtt, srt",
            "WHISPERX_BATCH_FORCE": "true",
            "WHISPERX_BATCH_EXCLUDE": "drafts/*,*.tmp.wav",
        },
    )
    assert settings.formats == ("json", "srt", "vtt")
    assert settings.force is True
    assert settings.exclude == ("drafts/*", "*.tmp.wav")


def settings_hash(settings, compute_type: str) -> str:  # noqa: ANN001
    from batch.engine.config import RuntimeOptions
    from tests.conftest import sections

    runtime = RuntimeOptions("cpu", compute_type, threads=1, batch_size=settings.batch_size)
    return sections(settings, {}, runtime).settings_hash


def test_settings_hash_follows_output_shaping_settings_only() -> None:
    base = load_settings({}, environ={})
    same_output = load_settings({"batch_size": 2, "device": "cpu", "threads": 1, "quiet": True}, environ={})
    other_language = load_settings({"language": "en"}, environ={})
    other_formats = load_settings({"formats": ("srt",)}, environ={})
    coarser_vad = load_settings({"vad_step": 0.5}, environ={})
    assert settings_hash(base, "int8") == settings_hash(same_output, "int8")
    assert settings_hash(base, "int8") != settings_hash(other_language, "int8")
    assert settings_hash(base, "int8") != settings_hash(other_formats, "int8")
    assert settings_hash(base, "int8") != settings_hash(base, "float16")
    assert settings_hash(base, "int8") != settings_hash(coarser_vad, "int8")
    # The step is pyannote's: with silero it shapes nothing, so changing it redoes nothing.
    silero = load_settings({"vad_method": "silero"}, environ={})
    silero_step = load_settings({"vad_method": "silero", "vad_step": 0.5}, environ={})
    assert settings_hash(silero, "int8") == settings_hash(silero_step, "int8")


def test_sections_hold_parsed_values() -> None:
    from tests.conftest import sections

    settings = load_settings(
        {
            "source": "in",
            "out": "out",
            "shard": "1/3",
            "max_input_size": "2GiB",
            "align_model": ("en=WAV2VEC2_ASR_BASE_960H", "fr=some/model"),
            "diarize": True,
            "num_speakers": 2,
        },
        environ={},
    )
    config = sections(settings, {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_" + "x" * 30})
    assert config.storage.max_input_bytes == 2 * 1024**3
    assert (config.selection.shard.index, config.selection.shard.count) == (1, 3)
    assert dict(config.pipeline.align.per_language) == {"en": "WAV2VEC2_ASR_BASE_960H", "fr": "some/model"}
    assert config.pipeline.hub.offline and config.pipeline.hub.token_source == "HF_TOKEN"
    assert "hf_" not in repr(config)  # the token's value never shows
    assert config.pipeline.diarize.num_speakers == 2


def test_auto_and_en_are_one_setting_on_an_english_only_model_only(tiny_en: str, base_multilingual: str) -> None:
    for english_only in (tiny_en, "tiny.en", "Systran/faster-whisper-small.en"):
        auto = load_settings({"model": english_only, "language": "auto"}, environ={})
        english = load_settings({"model": english_only, "language": "English"}, environ={})
        assert settings_hash(auto, "int8") == settings_hash(english, "int8")
    auto = load_settings({"model": base_multilingual, "language": "auto"}, environ={})
    english = load_settings({"model": base_multilingual, "language": "en"}, environ={})
    assert settings_hash(auto, "int8") != settings_hash(english, "int8")  # there auto detects


def test_english_only_is_told_from_the_files_as_ctranslate2_tells_it(tiny_en: str, base_multilingual: str) -> None:
    import ctranslate2

    from batch.engine.loading import english_only

    for folder in (tiny_en, base_multilingual):
        model = ctranslate2.models.Whisper(folder, device="cpu", compute_type="int8")
        assert english_only(folder) is (not model.is_multilingual)
    assert english_only(tiny_en) is True and english_only("large-v3") is False
    assert english_only("someone/whisper-ct2") is None  # neither its name nor a local folder tells


def test_formats_all_is_every_format_the_run_can_write() -> None:
    assert load_settings({"formats": ("all",)}, environ={}).formats == ("json", "srt", "vtt", "txt", "tsv", "turns")
    with_speakers = load_settings({}, environ={"WHISPERX_BATCH_FORMATS": "all", "WHISPERX_BATCH_DIARIZE": "1"})
    assert with_speakers.formats == ("json", "srt", "vtt", "txt", "tsv", "turns", "rttm")
    with pytest.raises(ConfigError, match="formats: unknown format every; choose from .*, or all"):
        load_settings({"formats": ("every",)}, environ={})


def test_keep_run_reports_is_a_count(tmp_path: Path) -> None:
    assert load_settings({}, environ={}).keep_run_reports == 50
    assert load_settings({}, environ={"WHISPERX_BATCH_KEEP_RUN_REPORTS": "0"}).keep_run_reports == 0
    with pytest.raises(ConfigError, match="keep_run_reports"):
        load_settings({}, environ={}, config_path=write_config(tmp_path, "keep_run_reports = -1\n"))


def test_problems_from_the_file_and_the_environment_are_reported_together(tmp_path: Path) -> None:
    from batch.common.errors import ConfigErrors

    config = write_config(tmp_path, "batch_size = 0\nthreds = 2\n")
    with pytest.raises(ConfigErrors) as caught:
        load_settings({}, environ={"WHISPERX_BATCH_QUIETT": "1"}, config_path=config)
    assert [problem.key for problem in caught.value.problems] == ["threds", "WHISPERX_BATCH_QUIETT", "batch_size"]
    assert caught.value.exit_code == EXIT_USAGE


def test_the_hallucination_guard_is_on_by_default_and_set_like_every_option(tmp_path: Path) -> None:
    assert load_settings({}, environ={}).hallucinations == "drop"
    config = tmp_path / "job.toml"
    config.write_text('hallucinations = "flag"\n')
    assert load_settings({}, environ={}, config_path=config).hallucinations == "flag"
    environ = {"WHISPERX_BATCH_HALLUCINATIONS": "off"}
    assert load_settings({}, environ=environ, config_path=config).hallucinations == "off"
    assert load_settings({"hallucinations": "drop"}, environ=environ).hallucinations == "drop"
    with pytest.raises(ConfigError, match="hallucinations"):
        load_settings({"hallucinations": "maybe"}, environ={})


def test_the_guard_off_keeps_the_settings_hash_of_runs_before_it(tmp_path: Path) -> None:
    def shaping(**flags: object) -> dict:
        return dict(sections(load_settings(flags, environ={})).shaping)

    assert "hallucinations" not in shaping(hallucinations="off")
    assert shaping()["hallucinations"] == "drop" and shaping(hallucinations="flag")["hallucinations"] == "flag"
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("thanks for watching\n")
    configured = sections(load_settings({"hallucination_phrases": str(phrases)}, environ={}))
    assert configured.pipeline.quality.phrases.matches("Thanks for watching!", "en")
    assert configured.pipeline.asr.decoding.no_speech_probability
    assert not sections(
        load_settings({"hallucinations": "off"}, environ={})
    ).pipeline.asr.decoding.no_speech_probability


def test_the_phrases_file_enters_the_settings_hash_by_its_phrases_not_its_path(tmp_path: Path) -> None:
    def hashed(path: Path) -> str:
        return sections(load_settings({"hallucination_phrases": str(path)}, environ={})).settings_hash

    phrases = tmp_path / "phrases.txt"
    phrases.write_text("thanks for watching\n")
    before = hashed(phrases)
    phrases.write_text("thanks for watching\nsubscribe to my channel\n")  # edited in place: a new phrase
    assert hashed(phrases) != before
    moved = tmp_path / "elsewhere" / "mine.txt"
    moved.parent.mkdir()
    moved.write_text("# ours\nSubscribe to my channel!\n\nthanks for watching\n")  # the same phrases, elsewhere
    assert hashed(moved) == hashed(phrases)


def test_a_phrases_file_needs_the_guard_and_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hallucination_phrases"):
        load_settings({"hallucinations": "off", "hallucination_phrases": str(tmp_path / "p.txt")}, environ={})
    with pytest.raises(ConfigError, match="hallucination_phrases"):
        sections(load_settings({"hallucination_phrases": str(tmp_path / "missing.txt")}, environ={}))
