"""Speech in another language, through the real command line, the multilingual Whisper base model and espeak-ng's
voices: a language per segment, a forced language's other-language check (transcribed in its own language, or
flagged), the cost where detection can change nothing, and bad language settings refused before any file."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENGLISH, SPANISH, speak

SPANISH_WORDS = {"buenos", "días", "informe", "trimestral", "viernes"}
# Each language its own speech chunk: the check is per chunk (docs/languages.md), and two sentences of 5-6 s with a
# pause between them would otherwise make one chunk of up to 30 s.
CHUNKS = ("--chunk-size", "8")


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text.lower()))


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A caller who speaks English then Spanish (a second of silence between), and one who speaks Spanish only."""
    folder = tmp_path_factory.mktemp("callers")
    english = speak(ENGLISH, folder / "parts" / "en.wav", voice="en")
    spanish = speak(SPANISH, folder / "parts" / "es.wav", voice="es")
    silence = folder / "parts" / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(silence), "trim", "0", "1"], check=True)
    switch = folder / "switch" / "switch.wav"
    switch.parent.mkdir()
    subprocess.run(["nice", "-n", "19", "sox", str(english), str(silence), str(spanish), str(switch)], check=True)
    caller = folder / "spanish" / "caller.wav"
    caller.parent.mkdir()
    spanish.rename(caller)
    return {"switch": switch, "spanish": caller}


def transcribe(cli, source: Path, out: Path, model: str, *args: str) -> tuple[dict, dict, dict]:  # noqa: ANN001
    result = cli("run", source, "--out", out, "--model", model, "--no-align", "--threads", "2", *args)
    assert result.exit_code == 0, result.stderr
    name = source.name if source.is_file() else next(source.iterdir()).name
    report = read(next((out / "_runs").glob("*.json")))
    return read(out / f"{name}.json"), read(out / f"{name}.manifest.json"), report


def test_a_recording_that_switches_language_has_a_language_per_segment(
    cli, calls: dict[str, Path], base_multilingual: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    transcript, manifest, report = transcribe(
        cli, calls["switch"], out, base_multilingual, *CHUNKS, "--formats", "vtt,srt,turns"
    )
    segments = transcript["segments"]
    assert [segment["language"] for segment in segments] == ["en", "es"], segments
    assert all(segment["language_probability"] > 0.5 for segment in segments), segments
    assert "quarterly" in words(segments[0]["text"]) and SPANISH_WORDS & words(segments[1]["text"]), segments
    assert not any("other_language" in segment for segment in segments)
    # The file's language is the one spoken longest; the manifest has the seconds of each.
    assert set(manifest["languages"]) == {"en", "es"}
    assert transcript["language"] == manifest["language"] == max(manifest["languages"], key=manifest["languages"].get)
    assert "other_language" not in manifest["quality"]["reasons"]
    assert report["asr"]["detected"] == 2 and "language" in manifest["timings"]
    # VTT marks the cue in the other language; SRT has no such markup; a turn holds one language.
    other = next(code for code in ("en", "es") if code != transcript["language"])
    vtt = (out / "switch.wav.vtt").read_text()
    cues = vtt.split("\n\n")[1:-1]
    assert all(("<lang " in cue) is (other == "en") for cue in cues if "quarterly" in cue or "Friday" in cue), vtt
    assert set(re.findall(r"<lang (\w+)>", vtt)) == {other} and vtt.count("</lang>") == vtt.count("<lang "), vtt
    assert "<lang" not in (out / "switch.wav.srt").read_text()
    turns = read(out / "switch.wav.turns.json")
    assert [turn["language"] for turn in turns] == ["en", "es"], turns


def test_languages_read_each_segment_in_the_likeliest_of_the_set(
    cli, calls: dict[str, Path], base_multilingual: str, tmp_path: Path
) -> None:
    transcript, _, _ = transcribe(
        cli, calls["switch"], tmp_path / "out", base_multilingual, *CHUNKS, "--languages", "en,fr,es"
    )
    assert [segment["language"] for segment in transcript["segments"]] == ["en", "es"]


def test_a_forced_language_flags_another_and_transcribes_it_in_its_own_language(
    cli, calls: dict[str, Path], base_multilingual: str, tmp_path: Path
) -> None:
    """The call-centre case: --language en on a Spanish caller. The record says what was said, in Spanish, flagged."""
    transcript, manifest, _ = transcribe(cli, calls["spanish"], tmp_path / "out", base_multilingual, "--language", "en")
    segments = transcript["segments"]
    assert segments and all(segment["language"] == "es" for segment in segments), segments
    assert all(segment["other_language"]["language"] == "es" for segment in segments)
    assert all(segment["other_language"]["probability"] >= 0.5 for segment in segments)
    assert len(SPANISH_WORDS & words(" ".join(segment["text"] for segment in segments))) >= 3, segments
    assert manifest["quality"]["review"] and "other_language" in manifest["quality"]["reasons"]
    assert manifest["languages"] == {"es": pytest.approx(segments[-1]["end"] - segments[0]["start"], abs=0.01)}


def test_other_languages_flag_reads_the_forced_language_and_still_flags(
    cli, calls: dict[str, Path], base_multilingual: str, tmp_path: Path
) -> None:
    """Read with the English prompt as asked (base then writes English or, as here with espeak's Spanish, what it
    hears: the words are the model's), and flagged all the same."""
    transcript, manifest, _ = transcribe(
        cli, calls["spanish"], tmp_path / "out", base_multilingual, "--language", "en", "--other-languages", "flag"
    )
    segments = transcript["segments"]
    assert segments and all(segment["language"] == "en" for segment in segments), segments
    assert all(segment["other_language"]["language"] == "es" for segment in segments)
    assert "other_language" in manifest["quality"]["reasons"] and transcript["language"] == "en"


@pytest.mark.parametrize(
    ("args", "detected"),
    [(["--task", "translate"], False), (["--languages", "es"], False), (["--language", "en"], True), ([], True)],
)
def test_detection_runs_only_where_it_can_change_something(
    cli, calls: dict[str, Path], base_multilingual: str, tiny_en: str, tmp_path: Path, args: list[str], detected: bool
) -> None:
    """An English-only model, a translation and a choice of one language detect nothing per chunk (the run report's
    count, the files' timings)."""
    for model in (tiny_en, base_multilingual) if detected else (base_multilingual,):
        out = tmp_path / Path(model).name
        transcript, manifest, report = transcribe(cli, calls["switch"], out, model, *CHUNKS, *args)
        checked = detected and model == base_multilingual
        assert (report["asr"]["detected"] > 0) is checked, report["asr"]
        assert ("language" in manifest["timings"]) is (checked or "translate" in args), manifest["timings"]
        if not checked:
            assert not any("other_language" in segment for segment in transcript["segments"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--language", "xx"], "language: unknown language 'xx'"),
        (["--languages", "en,zz"], "languages: unknown language 'zz'"),
        (["--other-languages", "flag"], "other_languages: says how speech in another language than a forced"),
        (["--other-languages", "translate"], "other_languages: Input should be 'transcribe' or 'flag'"),
    ],
)
def test_bad_language_settings_exit_2_before_any_file(
    cli_process, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli_process("run", tmp_path, "--out", tmp_path / "out", "--model", "base", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--languages", "en,es"], "languages: the model .* is English-only: it detects no language"),
        (["--language", "es"], "language: the model .* is English-only; use en or auto"),
    ],
)
def test_an_english_only_model_refuses_languages_before_any_file(
    cli, calls: dict[str, Path], tiny_en: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli("run", calls["switch"], "--out", tmp_path / "out", "--model", tiny_en, "--no-align", *args)
    assert result.exit_code == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out" / "switch.wav.manifest.json").exists()


def test_other_languages_flag_is_in_the_settings_hash(base_multilingual: str) -> None:
    from batch.settings.options import load_settings
    from tests.conftest import sections

    def digest(**flags: str) -> str:
        return sections(
            load_settings({"model": base_multilingual, "language": "en", **flags}, environ={})
        ).settings_hash

    assert digest(other_languages="flag") != digest() == digest(other_languages="transcribe")


def test_each_language_is_aligned_with_its_own_model(
    cli, calls: dict[str, Path], base_multilingual: str, tmp_path: Path
) -> None:
    """Alignment splits segments into sentences: each keeps the language of the segment it came from, and each
    language's segments are timed by that language's model."""
    from tests.tiny_models import build_tiny_align_model

    align_en = str(build_tiny_align_model(tmp_path / "align-en"))
    align_es = str(
        build_tiny_align_model(tmp_path / "align-es", chars=list("abcdefghijklmnopqrstuvwxyzáéíóúñü'"), seed=1)
    )
    out = tmp_path / "out"
    result = cli(
        "run", calls["switch"], "--out", out, "--model", base_multilingual, "--threads", "2", *CHUNKS,
        "--align-model", f"en={align_en}", "--align-model", f"es={align_es}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    transcript, manifest = read(out / "switch.wav.json"), read(out / "switch.wav.manifest.json")
    alignment = manifest["alignment"]
    assert alignment["status"] == "aligned" and set(alignment["languages"]) == {"en", "es"}, alignment
    assert {code: entry["model"] for code, entry in alignment["languages"].items()} == {"en": align_en, "es": align_es}
    languages = [segment["language"] for segment in transcript["segments"]]
    assert languages == sorted(languages, key=["en", "es"].index) and set(languages) == {"en", "es"}, languages
    assert all(segment["words"] for segment in transcript["segments"])
    starts = [segment["start"] for segment in transcript["segments"]]
    assert starts == sorted(starts)


def test_a_stretch_in_a_language_whose_alignment_model_is_not_here_keeps_the_file_recorded(
    cli, calls: dict[str, Path], base_multilingual: str, tmp_path: Path
) -> None:
    """An air-gapped job has the main language's alignment model only (Spanish: the longer part): the English
    stretch keeps its segment timings, says why, and the file is recorded (it was not: no manifest, and a run of
    such files stopped)."""
    from tests.tiny_models import build_tiny_align_model

    align_es = str(
        build_tiny_align_model(tmp_path / "align-es", chars=list("abcdefghijklmnopqrstuvwxyzáéíóúñü'"), seed=1)
    )
    out = tmp_path / "out"
    result = cli(
        "run", calls["switch"], "--out", out, "--model", base_multilingual, "--threads", "2", *CHUNKS,
        "--align-model", f"es={align_es}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    manifest = read(out / "switch.wav.manifest.json")
    assert manifest["status"] == "succeeded" and manifest["language"] == "es"
    languages = manifest["alignment"]["languages"]
    assert languages["es"]["status"] == "aligned" and languages["en"]["status"] == "unavailable", languages
    assert "could not be loaded" in languages["en"]["reason"]
    english = [s for s in read(out / "switch.wav.json")["segments"] if s["language"] == "en"]
    assert english and all(s["end"] > s["start"] and "words" not in s for s in english)
