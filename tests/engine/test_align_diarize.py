"""Word alignment and speaker diarization in the same pipeline, with small models of the real classes
loaded through the real loading code (no PyPI package carries their weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batch.common.errors import EnvironmentProblem
from batch.engine.align.aligner import Aligner, AlignmentModelNotLoaded
from batch.engine.diarize.diarizer import diarization_failure_message, load_diarization
from tests.conftest import ENGLISH, SPANISH, speak
from tests.tiny_models import build_tiny_align_model, build_tiny_diarization_pipeline

SPANISH_CHARS = list("abcdefghijklmnopqrstuvwxyzáéíóúñü'")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def last_report(out: Path) -> dict:
    return read(max((out / "_runs").glob("*.json"), key=os.path.getmtime))


@pytest.fixture(scope="session")
def align_en(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_align_model(tmp_path_factory.mktemp("align-en")))


@pytest.fixture(scope="session")
def align_es(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_align_model(tmp_path_factory.mktemp("align-es"), chars=SPANISH_CHARS, seed=1))


@pytest.fixture(scope="session")
def diarization(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A pyannote pipeline folder whose segmentation is whisperx's trained checkpoint."""
    folder = tmp_path_factory.mktemp("diarization")
    return str(build_tiny_diarization_pipeline(folder, segmentation="whisperx", min_duration_off=0.5))


@pytest.fixture
def call_folder(tmp_path: Path, sample_wav: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(sample_wav, source / "call.wav")
    speak(ENGLISH, source / "memo.wav")
    return source


def assert_words_inside_segments(transcript: dict) -> None:
    previous = 0.0
    timed = 0
    for segment in transcript["segments"]:
        assert previous <= segment["start"] <= segment["end"]
        word_start = segment["start"]
        for word in segment["words"]:
            if "start" not in word:
                continue
            timed += 1
            assert segment["start"] <= word["start"] <= word["end"] <= segment["end"]
            assert word["start"] >= word_start
            word_start = word["start"]
        previous = segment["start"]
    assert timed and timed == len(transcript["word_segments"])


def test_every_word_is_timed_inside_its_segment_and_scored(
    cli, call_folder: Path, tmp_path: Path, tiny_en: str, align_en: str
) -> None:
    out = tmp_path / "out"
    result = cli("run", call_folder, "--out", out, "--model", tiny_en, "--align-model", align_en)
    assert result.exit_code == 0, result.stderr
    for key in ("call.wav", "memo.wav"):
        transcript = read(out / f"{key}.json")
        assert_words_inside_segments(transcript)
        for segment in transcript["segments"]:
            scores = [w["score"] for w in segment["words"] if "score" in w]
            assert segment["score"] == pytest.approx(sum(scores) / len(scores), abs=0.002)
        manifest = read(out / f"{key}.manifest.json")
        assert manifest["alignment"] == {"status": "aligned", "model": align_en}
        assert "align" in manifest["timings"]
    scores = {s["score"] for s in read(out / "call.wav.json")["segments"]}
    assert len(scores) > 1  # derived from the words, not a constant
    assert last_report(out)["alignment_models_loaded"] == [align_en]


def test_alignment_runs_with_no_network_at_all(tmp_path: Path, call_folder: Path, tiny_en: str, align_en: str) -> None:
    """In a network namespace with no interface; sentence data comes from the cache, made from a package."""
    cache, home = tmp_path / "models", tmp_path / "home"
    home.mkdir()
    command = [
        "unshare",
        "--net",
        sys.executable,
        "-m",
        "batch",
        "run",
        str(call_folder),
        "--out",
        str(tmp_path / "out"),
        "--model",
        tiny_en,
        "--align-model",
        align_en,
        "--model-dir",
        str(cache),
    ]
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "0", "NLTK_DATA": str(home / "nltk")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "2 succeeded" in done.stderr
    assert sorted(p.name for p in (cache / "nltk_data/tokenizers/punkt_tab/english").iterdir()) == [
        "abbrev_types.txt",
        "collocations.tab",
        "ortho_context.tab",
        "sent_starters.txt",
    ]
    assert_words_inside_segments(read(tmp_path / "out/call.wav.json"))


def test_language_without_alignment_model_keeps_segments_and_says_why(
    cli, tmp_path: Path, base_multilingual: str
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    speak(ENGLISH, source / "memo.wav")
    # English speech read as Hawaiian, as asked (flagged; transcribed, it would be read in English: docs/languages.md).
    result = cli(
        "run", source, "--out", out, "--model", base_multilingual, "--language", "haw", "--other-languages", "flag"
    )
    assert result.exit_code == 0, result.stderr
    manifest = read(out / "memo.wav.manifest.json")
    assert manifest["status"] == "succeeded"
    assert manifest["alignment"]["status"] == "unavailable"
    assert "no alignment model for language 'haw'" in manifest["alignment"]["reason"]
    transcript = read(out / "memo.wav.json")
    assert transcript["segments"] and all("words" not in s for s in transcript["segments"])
    assert last_report(out)["words_untimed"] == [{"key": "memo.wav", "reason": manifest["alignment"]["reason"]}]
    assert "words not timed in memo.wav" in result.stderr


def test_an_alignment_model_that_will_not_load_is_the_machines_fault_and_tried_again_for_each_file(
    cli, call_folder: Path, tmp_path: Path, tiny_en: str, align_en: str
) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "align-model"  # not there yet: a volume not mounted, a model not pulled
    result = cli("run", call_folder, "--out", out, "--model", tiny_en, "--align-model", str(missing))
    assert result.exit_code == 3  # every file failed, none for a reason of its own
    assert "every file failed, none for a reason of its own" in result.stderr
    assert not list(out.glob("*.manifest.json"))  # not the files' failure: nothing recorded against them
    failed = {f["key"]: f["error"] for f in last_report(out)["failed"]}
    assert sorted(failed) == ["call.wav", "memo.wav"]
    for error in failed.values():
        assert error["type"] == "AlignmentModelNotLoaded" and error["file_problem"] is False
        assert str(missing) in error["message"] and "models pull" in error["message"]
    # The failure is not remembered: the second file tried the load again.
    assert result.stderr.count(f"alignment model '{missing}' for 'en' could not be loaded") >= 2

    shutil.copytree(align_en, missing)  # the model is there now: the next run does both files
    again = cli("run", call_folder, "--out", out, "--model", tiny_en, "--align-model", str(missing))
    assert again.exit_code == 0, again.stderr
    assert "2 succeeded, 0 skipped, 0 failed" in again.stderr
    assert read(out / "memo.wav.manifest.json")["alignment"]["status"] == "aligned"


def test_an_aligner_tries_a_failed_load_again(tmp_path: Path, align_en: str) -> None:
    folder = tmp_path / "align-model"
    aligner = Aligner("cpu", str(tmp_path / "cache"), True, str(folder))
    with pytest.raises(AlignmentModelNotLoaded, match="could not be loaded"):
        aligner.load("en", str(folder))
    shutil.copytree(align_en, folder)
    model, metadata = aligner.load("en", str(folder))
    assert model is not None and metadata["language"] == "en" and aligner.loads == [str(folder)]


def test_mixed_languages_load_each_alignment_model_once(
    cli, tmp_path: Path, base_multilingual: str, align_en: str, align_es: str
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    voices = ["en-us", "es", "en-us", "es"]
    for index, voice in enumerate(voices):
        speak(ENGLISH if voice == "en-us" else SPANISH, source / f"{index}-{voice}.wav", voice=voice)
    result = cli(
        "run",
        source,
        "--out",
        out,
        "--model",
        base_multilingual,
        "--align-model",
        f"en={align_en}",
        "--align-model",
        f"es={align_es}",
    )
    assert result.exit_code == 0, result.stderr
    assert last_report(out)["alignment_models_loaded"] == [align_en, align_es]
    manifests = [read(out / f"{index}-{voice}.wav.manifest.json") for index, voice in enumerate(voices)]
    assert [m["language"] for m in manifests] == ["en", "es", "en", "es"]
    assert [m["alignment"]["model"] for m in manifests] == [align_en, align_es, align_en, align_es]


def test_diarization_labels_every_segment_and_word(
    cli, call_folder: Path, tmp_path: Path, tiny_en: str, align_en: str, diarization: str
) -> None:
    out = tmp_path / "out"
    result = cli(
        "run",
        call_folder,
        "--out",
        out,
        "--model",
        tiny_en,
        "--align-model",
        align_en,
        "--diarize",
        "--diarize-model",
        diarization,
        "--max-speakers",
        "2",
        "--formats",
        "turns,rttm,srt",
    )
    assert result.exit_code == 0, result.stderr
    transcript = read(out / "call.wav.json")
    assert_words_inside_segments(transcript)
    labels = {s["speaker"] for s in transcript["segments"]}
    labels |= {w["speaker"] for s in transcript["segments"] for w in s["words"] if "start" in w}
    assert transcript["speakers"] == sorted(labels) and 1 <= len(labels) <= 2
    assert all("speaker" in w for w in transcript["word_segments"])
    turn_speakers = sorted({t["speaker"] for t in transcript["speaker_turns"]})
    assert read(out / "call.wav.manifest.json")["speakers"] == turn_speakers

    turns = read(out / "call.wav.turns.json")
    assert turns and set(turns[0]) == {"speaker_id", "start_time", "end_time", "text", "confidence", "language"}
    assert all(a["end_time"] <= b["start_time"] + 1e-6 for a, b in zip(turns, turns[1:], strict=False))
    assert all(a["speaker_id"] != b["speaker_id"] for a, b in zip(turns, turns[1:], strict=False))
    assert " ".join(t["text"] for t in turns).split() == [w["word"] for s in transcript["segments"] for w in s["words"]]

    lines = (out / "call.wav.rttm").read_text().splitlines()
    assert len(lines) == len(transcript["speaker_turns"])
    for line, turn in zip(lines, transcript["speaker_turns"], strict=True):
        fields = line.split()
        assert fields[0] == "SPEAKER" and fields[1] == "call.wav" and len(fields) == 10
        assert float(fields[3]) == pytest.approx(turn["start"]) and float(fields[4]) >= 0
        assert fields[7] == turn["speaker"]
    assert "[SPEAKER_" in (out / "call.wav.srt").read_text()


def test_diarize_without_a_token_stops_before_any_file(cli, call_folder: Path, tmp_path: Path, tiny_en: str) -> None:
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    result = cli("run", call_folder, "--out", out, "--model", tiny_en, "--no-align", "--diarize", env=env)
    assert result.exit_code == 2
    assert "needs a Hugging Face token" in result.stderr and "HF_TOKEN" in result.stderr
    assert "pyannote/speaker-diarization-community-1" in result.stderr
    assert not out.exists()


def test_offline_diarization_model_not_cached_is_named(cli, call_folder: Path, tmp_path: Path, tiny_en: str) -> None:
    out = tmp_path / "out"
    result = cli(
        "run",
        call_folder,
        "--out",
        out,
        "--model",
        tiny_en,
        "--no-align",
        "--diarize",
        "--model-dir",
        tmp_path / "empty-cache",
    )
    assert result.exit_code == 3
    assert "diarization model 'pyannote/speaker-diarization-community-1' is not in the model cache" in result.stderr
    assert "models pull" in result.stderr
    assert not list(out.glob("*.manifest.json"))  # stopped before any file, not failed one by one


def test_token_never_reaches_outputs_or_logs(
    cli, call_folder: Path, tmp_path: Path, tiny_en: str, diarization: str
) -> None:
    token = "hf_" + "T0k3n" * 7
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    out = tmp_path / "out"
    result = cli(
        "run",
        call_folder,
        "--out",
        out,
        "--model",
        tiny_en,
        "--no-align",
        "--diarize",
        "--diarize-model",
        diarization,
        "--hf-token-file",
        token_file,
        "--log-format",
        "json",
        "--formats",
        "turns,rttm",
    )
    assert result.exit_code == 0, result.stderr
    texts = [result.stdout, result.stderr] + [p.read_text() for p in out.rglob("*") if p.is_file()]
    assert not any(token in text for text in texts)
    assert all("speaker" in s for s in read(out / "memo.wav.json")["segments"])


def test_refused_token_message_says_what_to_do() -> None:
    refused = RuntimeError("401 Client Error: Cannot access gated repo for url https://huggingface.co/x")
    message = diarization_failure_message("pyannote/speaker-diarization-community-1", refused, offline=False)
    assert "Accept the model's terms at https://hf.co/pyannote/speaker-diarization-community-1" in message


def test_pyannote_telemetry_is_off_for_the_python_api_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Loading the diarization pipeline (as a Job does, no command line involved) turns pyannote's telemetry off,
    as pyannote itself reads it, unless the user opted in."""
    from pyannote.audio.telemetry.metrics import is_metrics_enabled

    for opted_in, expected in ((None, False), ("1", True)):
        if opted_in is None:
            monkeypatch.delenv("PYANNOTE_METRICS_ENABLED", raising=False)
        else:
            monkeypatch.setenv("PYANNOTE_METRICS_ENABLED", opted_in)
        with pytest.raises(EnvironmentProblem, match="not in the model cache"):
            load_diarization("pyannote/no-such-pipeline", "cpu", None, str(tmp_path), offline=True)
        assert is_metrics_enabled() is expected


def test_models_pull_caches_everything_named_and_reports_failures(
    cli, tmp_path: Path, tiny_en: str, align_en: str, diarization: str
) -> None:
    cache = tmp_path / "cache"
    result = cli(
        "models",
        "pull",
        "--model",
        tiny_en,
        "--model-dir",
        cache,
        "--align-model",
        f"en={align_en}",
        "--align-languages",
        "en",
        "--diarize",
        "--diarize-model",
        diarization,
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    kinds = [line.split()[:2] for line in result.stdout.splitlines()]
    assert kinds == [["ok", "asr"], ["ok", "align"], ["ok", "diarize"]]
    assert (cache / "nltk_data/tokenizers/punkt_tab/english/sent_starters.txt").stat().st_size > 0
    missing = cli("models", "pull", "--model", "large-v3", "--model-dir", cache, "--no-align")
    assert missing.exit_code == 3
    assert "ASR model 'large-v3' is not in the model cache" in missing.stdout


def test_on_the_cpu_words_and_speakers_get_every_core_and_the_vad_one(
    cli, call_folder: Path, tmp_path: Path, tiny_en: str, align_en: str, diarization: str, monkeypatch
) -> None:
    """torch is held to one thread on the CPU for the VAD; wav2vec2 and pyannote run while nothing else does, on
    every thread the run has (the whisperx command line gives them every core too)."""
    import torch

    from batch.engine.align.aligner import Aligner
    from batch.engine.diarize.diarizer import Diarizer
    from batch.engine.vad.speech import PyannoteDetector

    seen: dict[str, set[int]] = {"align": set(), "diarize": set(), "vad": set()}

    def spy(cls: type, method: str, stage: str) -> None:
        real = getattr(cls, method)

        def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen[stage].add(torch.get_num_threads())
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, counted)

    spy(Aligner, "align", "align")
    spy(Diarizer, "turns", "diarize")
    spy(PyannoteDetector, "speech_chunks", "vad")
    args = ("--model", tiny_en, "--align-model", align_en, "--diarize", "--diarize-model", diarization)
    result = cli("run", call_folder, "--out", tmp_path / "out", *args, "--device", "cpu", "--threads", "2")
    assert result.exit_code == 0, result.stderr
    assert seen == {"align": {2}, "diarize": {2}, "vad": {1}}
