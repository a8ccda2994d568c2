"""The hallucination guard end to end: the real CLI, Whisper tiny.en, non-speech made with sox and espeak-ng
(bench/nonspeech.py: tones, chords, ringing, DTMF, hum, noise, reversed and crowd speech) and real speech."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ctranslate2
import pytest
from typer.testing import CliRunner

from batch.cli import app
from bench.nonspeech import make_set
from tests.conftest import speak

SPEECH = {
    "speech_call.wav": "Hello, thank you for calling the support line. Please hold while we connect you to an agent.",
    "speech_note.wav": "Could you send me the file before the meeting tomorrow morning, please.",
}
# Of the set, the recordings the VAD takes for speech and tiny.en writes text over (with --hallucinations off),
# and some it finds no speech in at all.
HALLUCINATED = ("buzz.wav", "crowd.wav", "reversed_speech0.wav", "reversed_speech1.wav", "sweep.wav", "vibrato.wav")
SILENT = ("tone.wav", "hum.wav", "dtmf.wav", "chords.wav")
TEXT_FORMATS = ("srt", "vtt", "txt", "tsv", "turns")


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = make_set(tmp_path_factory.mktemp("made"), seed=2)
    folder = tmp_path_factory.mktemp("in")
    for path in made:
        if path.name in HALLUCINATED + SILENT:
            shutil.copy(path, folder / path.name)
    for name, text in SPEECH.items():
        speak(text, folder / name)
    return folder


def run(recordings: Path, out: Path, model: str, mode: str, *names: str, options: tuple[str, ...] = ()) -> Path:
    include = [arg for name in names for arg in ("--include", name)]
    result = invoke(
        "run", recordings, "--out", out, "--model", model, "--no-align", "--threads", "2",
        "--formats", ",".join(TEXT_FORMATS), "--hallucinations", mode, *include, *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def dropped(recordings: Path, tmp_path_factory: pytest.TempPathFactory, tiny_en: str) -> Path:
    return run(recordings, tmp_path_factory.mktemp("drop"), tiny_en, "drop")


def manifest(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.manifest.json").read_text())


def transcript(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.parametrize("name", HALLUCINATED)
def test_text_written_over_non_speech_leaves_every_output_and_stays_in_the_manifest(dropped: Path, name: str) -> None:
    assert transcript(dropped, name)["segments"] == []
    assert json.loads((dropped / f"{name}.turns.json").read_text()) == []
    for fmt in ("srt", "vtt", "txt", "tsv"):
        lines = (dropped / f"{name}.{fmt}").read_text().splitlines()
        assert [line for line in lines if line.strip() and line not in ("WEBVTT", "start\tend\ttext")] == []
    quality = manifest(dropped, name)["quality"]
    assert quality["dropped"] and quality["reread"] <= len(quality["dropped"])  # silent ones are not read again
    for entry in quality["dropped"]:
        assert entry["text"] and entry["end"] > entry["start"] and entry["reasons"]
        assert {"no_speech_probability", "low_log_probability"} & set(entry["reasons"])
    assert quality["speech_seconds"] > 0 and quality["segments"] == 0
    # what the VAD took for speech left no text: a person may listen (issue 38 #1)
    assert quality["speech_without_text_seconds"] == quality["speech_seconds"] > 3
    assert quality["reasons"] == ["speech_without_text"]


@pytest.mark.parametrize("name", SILENT)
def test_a_recording_without_speech_is_for_review(dropped: Path, name: str) -> None:
    quality = manifest(dropped, name)["quality"]
    assert quality["review"] and quality["reasons"] == ["no_speech_found"] and quality["speech_seconds"] == 0


@pytest.mark.parametrize("name", SPEECH)
def test_speech_keeps_its_segments(dropped: Path, name: str) -> None:
    segments = transcript(dropped, name)["segments"]
    words = " ".join(segment["text"] for segment in segments).lower()
    assert "meeting" in words or "support" in words
    quality = manifest(dropped, name)["quality"]
    assert quality["dropped"] == [] and not quality["review"] and quality["reasons"] == []
    assert 0.5 < quality["confidence"] <= 1 and quality["language"] == "en"
    turns = json.loads((dropped / f"{name}.turns.json").read_text())
    assert all(0 < turn["confidence"] <= 1 for turn in turns) and turns


def test_the_run_report_counts_what_was_dropped_and_what_to_review(dropped: Path) -> None:
    report = json.loads(next((dropped / "_runs").glob("*.json")).read_text())
    quality = report["quality"]
    assert quality["segments_dropped"] >= len(HALLUCINATED)
    assert sorted(quality["review"]) == sorted(SILENT + HALLUCINATED)
    assert quality["files_to_review"] == len(SILENT + HALLUCINATED)


def test_status_review_lists_the_files_to_look_at(dropped: Path) -> None:
    text = invoke("status", dropped, "--review")
    assert text.exit_code == 0
    lines = text.output.splitlines()
    to_review = len(SILENT) + len(HALLUCINATED)
    assert lines[0].endswith(f"{to_review} of {to_review + len(SPEECH)} files to review")
    heard = [line for line in lines[1:] if ": speech without text; " in line]
    assert sorted(line for line in lines[1:] if line not in heard) == sorted(f"  {n}: no speech found" for n in SILENT)
    assert sorted(line.split(":")[0].strip() for line in heard) == sorted(HALLUCINATED)
    listed = json.loads(invoke("status", dropped, "--review", "--json").output)
    assert listed["files_to_review"] == to_review
    assert {item["key"]: item["reasons"] for item in listed["review"]} == {
        **{name: ["no_speech_found"] for name in SILENT},
        **{name: ["speech_without_text"] for name in HALLUCINATED},
    }
    summary = json.loads(invoke("status", dropped, "--json").output)
    assert summary["files_to_review"] == to_review and summary["segments_dropped"] >= len(HALLUCINATED)


def test_flag_keeps_whisperx_text_and_off_writes_it_as_before(recordings: Path, tmp_path: Path, tiny_en: str) -> None:
    names = ("vibrato.wav", "speech_note.wav")
    flagged = run(recordings, tmp_path / "flag", tiny_en, "flag", *names)
    off = run(recordings, tmp_path / "off", tiny_en, "off", *names)
    for name in names:
        assert transcript(flagged, name) == transcript(off, name)
        for fmt in TEXT_FORMATS:
            suffix = "turns.json" if fmt == "turns" else fmt
            assert (flagged / f"{name}.{suffix}").read_bytes() == (off / f"{name}.{suffix}").read_bytes()
        nothing_judged = manifest(off, name)["quality"]  # the speech, and what left no text: nothing judged
        assert all(nothing_judged[entry] == [] for entry in ("dropped", "flagged", "doubtful", "cut", "replaced"))
        assert nothing_judged["speech_seconds"] > 0 and nothing_judged["speech_without_text_seconds"] == 0.0
    assert transcript(off, "vibrato.wav")["segments"]  # whisperx's text over a tone
    quality = manifest(flagged, "vibrato.wav")["quality"]
    assert quality["review"] and quality["reasons"] == ["hallucinations_kept"] and quality["flagged"]
    assert quality["dropped"] == [] and quality["reread"] == 0
    assert not manifest(flagged, "speech_note.wav")["quality"]["review"]
    assert manifest(off, "vibrato.wav")["settings_hash"] != manifest(flagged, "vibrato.wav")["settings_hash"]


def test_a_second_reading_of_nothing_is_a_drop_kept_in_the_manifest(
    recordings: Path, tmp_path: Path, tiny_en: str
) -> None:
    # Over crowd.wav tiny.en writes "Thank you very much." (no-speech probability 0.55, log-probability -0.97);
    # read hotter, the chunk falls under --no-speech-threshold 0.3 and reads as nothing: a drop, not a recovery.
    out = run(recordings, tmp_path / "out", tiny_en, "drop", "crowd.wav", options=("--no-speech-threshold", "0.3"))
    assert transcript(out, "crowd.wav")["segments"] == []
    quality = manifest(out, "crowd.wav")["quality"]
    assert quality["reread"] == 1 and quality["recovered"] == 0 and quality["replaced"] == []
    assert [entry["text"] for entry in quality["dropped"]] == ["Thank you very much."]


class SamplingFails(ctranslate2.models.Whisper):
    """CTranslate2's Whisper, failing whenever it samples: only the guard's second reading does (the first
    reading is beam search at temperature 0)."""

    def generate(self, *args: Any, **options: Any) -> Any:
        if options.get("sampling_temperature", 0) > 0:
            raise RuntimeError("sampling failed (injected)")
        return super().generate(*args, **options)


def test_a_guard_that_breaks_keeps_the_unguarded_transcript_for_review(
    recordings: Path, tmp_path: Path, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ("crowd.wav", "speech_note.wav")
    off = run(recordings, tmp_path / "off", tiny_en, "off", *names)
    monkeypatch.setattr(ctranslate2.models, "Whisper", SamplingFails)
    broken = tmp_path / "broken"
    result = invoke(
        "run", recordings, "--out", broken, "--model", tiny_en, "--no-align", "--threads", "2",
        "--include", names[0], "--include", names[1],
    )  # fmt: skip
    assert result.exit_code == 0 and "2 succeeded, 0 skipped, 0 failed" in result.stderr, result.output
    crowd = manifest(broken, "crowd.wav")
    assert crowd["status"] == "succeeded"
    assert transcript(broken, "crowd.wav") == transcript(off, "crowd.wav")  # whisperx's text, unguarded
    assert transcript(off, "crowd.wav")["segments"]
    quality = crowd["quality"]
    assert quality["review"] and quality["reasons"] == ["guard_failed"]
    assert quality["guard_error"] == "RuntimeError: sampling failed (injected)" and quality["dropped"] == []
    assert "crowd.wav: the hallucination guard failed (RuntimeError: sampling failed (injected))" in result.stderr
    assert not manifest(broken, "speech_note.wav")["quality"]["review"]  # nothing to read again: guarded as ever
    listed = invoke("status", broken, "--review")
    assert listed.exit_code == 0 and "  crowd.wav: guard failed" in listed.output.splitlines()


def test_a_first_reading_a_second_one_replaced_stays_in_the_manifest(tmp_path: Path, tiny_en: str) -> None:
    # Over "Sorry, sorry, ..." (en-gb) tiny.en's first reading is repetitive, with a weak no-speech figure:
    # judged hallucinated, it is read again by sampling. CTranslate2's seed makes each sample repeatable; some
    # read it well (the new text kept: seed 1 here), some do not (dropped). Either way the first reading is on
    # record; seeds are tried until one takes the replacing path.
    speak("Sorry, sorry, sorry, sorry, sorry, sorry, sorry, sorry.", tmp_path / "in" / "sorry.wav", voice="en-gb")
    first = transcript(run(tmp_path / "in", tmp_path / "off", tiny_en, "off"), "sorry.wav")["segments"][0]["text"]
    for seed in range(1, 7):
        ctranslate2.set_random_seed(seed)
        out = run(tmp_path / "in", tmp_path / f"seed{seed}", tiny_en, "drop")
        quality, segments = manifest(out, "sorry.wav")["quality"], transcript(out, "sorry.wav")["segments"]
        assert quality["reread"] == 1
        if quality["recovered"]:
            assert [entry["text"] for entry in quality["replaced"]] == [first] and not quality["dropped"]
            assert [segment["text"] for segment in segments] == [quality["replaced"][0]["kept"]] != [first]
            assert {"no_speech_probability"} <= set(quality["replaced"][0]["reasons"])
            return
        assert [entry["text"] for entry in quality["dropped"]] == [first] and segments == []
        assert quality["replaced"] == []
    pytest.fail("no seed read the segment well the second time: the test proves nothing")
