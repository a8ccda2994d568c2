"""Speech that left no text, end to end (issue 38 #1): the real CLI, Whisper tiny.en and espeak-ng callers.

tiny.en cannot read a Spanish caller: the guard drops the English it invents, the transcript is empty, and the
manifest must say that the VAD's speech left no text, so that `status --review` lists the call."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batch.cli import app
from tests.conftest import speak

SPANISH = (
    "Buenos días, le llamo porque este mes tengo un cargo en mi tarjeta que no reconozco, "
    "y quisiera saber qué es y cómo puedo anularlo, por favor."
)
ENGLISH = "Hello, thank you for calling the support line. Please hold while we connect you to an agent."


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def callers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    speak(SPANISH, folder / "spanish_call.wav", voice="es")
    speak(ENGLISH, folder / "english_call.wav")
    return folder


def transcribe(callers: Path, out: Path, model: str, *options: str) -> Path:
    result = invoke(
        "run", callers, "--out", out, "--model", model, "--no-align", "--threads", "2", "--formats", "json", *options
    )
    assert result.exit_code == 0, result.output
    return out


def manifest(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.manifest.json").read_text())


def transcript(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def guarded(callers: Path, tmp_path_factory: pytest.TempPathFactory, tiny_en: str) -> Path:
    return transcribe(callers, tmp_path_factory.mktemp("drop"), tiny_en)


def test_a_caller_the_model_cannot_read_is_for_review(guarded: Path) -> None:
    assert transcript(guarded, "spanish_call.wav")["segments"] == []  # the invented English was dropped
    quality = manifest(guarded, "spanish_call.wav")["quality"]
    assert quality["dropped"] and quality["review"] and "speech_without_text" in quality["reasons"]
    assert quality["speech_without_text_seconds"] > 5
    assert quality["speech_without_text_seconds"] == pytest.approx(quality["speech_seconds"], abs=0.01)


def test_a_caller_whose_words_were_written_is_not(guarded: Path) -> None:
    assert "support" in " ".join(s["text"] for s in transcript(guarded, "english_call.wav")["segments"]).lower()
    quality = manifest(guarded, "english_call.wav")["quality"]
    assert quality["reasons"] == [] and quality["speech_without_text_seconds"] == 0.0 and quality["speech_seconds"] > 3


def test_status_review_lists_the_call_that_left_no_text(guarded: Path) -> None:
    result = invoke("status", guarded, "--review")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].endswith("1 of 2 files to review")
    assert lines[1].startswith("  spanish_call.wav: ") and "speech without text" in lines[1]
    listed = json.loads(invoke("status", guarded, "--review", "--json").output)
    assert [item["key"] for item in listed["review"]] == ["spanish_call.wav"]
    assert "speech_without_text" in listed["review"][0]["reasons"]
    report = json.loads(next((guarded / "_runs").glob("*.json")).read_text())
    assert report["quality"]["review"] == ["spanish_call.wav"]


def test_without_the_guard_the_seconds_are_still_counted(callers: Path, tmp_path: Path, tiny_en: str) -> None:
    """--hallucinations off: whisperx's text as it is; Whisper's own silence rule (here asked for at 0.5) reads the
    Spanish as nothing, and the speech it left without text is for review all the same."""
    out = transcribe(callers, tmp_path / "off", tiny_en, "--hallucinations", "off", "--no-speech-threshold", "0.5")
    assert transcript(out, "spanish_call.wav")["segments"] == []
    quality = manifest(out, "spanish_call.wav")["quality"]
    assert "speech_without_text" in quality["reasons"] and quality["speech_without_text_seconds"] > 5
    assert quality["dropped"] == [] and quality["reread"] == 0  # nothing judged
    english = manifest(out, "english_call.wav")["quality"]
    assert english["reasons"] == [] and english["speech_without_text_seconds"] == 0.0


def test_a_call_whose_caller_left_no_text_beside_an_agent_who_did(callers: Path, tmp_path: Path, tiny_en: str) -> None:
    """--channels split, the agent (English) on the left, the caller (Spanish) on the right: the transcript keeps
    the agent's words, and the caller's speech, a large share of the call's, is what left no text."""
    folder = tmp_path / "in"
    folder.mkdir()
    left, right = callers / "english_call.wav", callers / "spanish_call.wav"
    subprocess.run(["sox", "-M", left, right, folder / "call.wav"], check=True)  # the shorter side padded
    out = transcribe(folder, tmp_path / "out", tiny_en, "--channels", "split", "--channel-speakers", "agent,caller")
    segments = transcript(out, "call.wav")["segments"]
    assert segments and {segment["speaker"] for segment in segments} == {"agent"}
    quality = manifest(out, "call.wav")["quality"]
    assert "speech_without_text" in quality["reasons"]
    assert 5 < quality["speech_without_text_seconds"] < quality["speech_seconds"] - 3  # the agent's is covered


def test_workers_count_it_as_one_process_does(callers: Path, tmp_path: Path, tiny_en: str, cli_process) -> None:  # type: ignore[no-untyped-def]
    """--workers 2: each file is transcribed in a worker process and its outcome comes back to the parent."""
    out = tmp_path / "out"
    args = ("run", callers, "--out", out, "--model", tiny_en, "--no-align", "--device", "cpu", "--threads", "2")
    done = cli_process(*args, "--workers", "2", "--batch-size", "2", "--formats", "json")
    assert done.returncode == 0, done.stderr
    quality = manifest(out, "spanish_call.wav")["quality"]
    assert manifest(out, "spanish_call.wav")["worker"].startswith("cpu")
    assert "speech_without_text" in quality["reasons"] and quality["speech_without_text_seconds"] > 5
    assert manifest(out, "english_call.wav")["quality"]["reasons"] == []
