"""--channels split: call recordings with one speaker per channel, transcribed a channel at a time and merged by
time, each word labelled with its channel's speaker, with no diarization model and no token.

The recordings are real speech from two espeak-ng voices placed by sox in the left and right channels at
alternating times, run through the real CLI with Whisper tiny.en."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batch.common.errors import ConfigError
from batch.engine.align.aligner import AlignmentUnavailable
from batch.engine.audio import SAMPLE_RATE, decode
from batch.engine.channels import merge_channels, speaker_names
from batch.engine.config import RuntimeOptions
from batch.engine.pipeline import DecodedFile, FileOutcome, Stopwatch
from batch.settings.options import load_settings
from tests.conftest import sections, speak
from tests.tiny_models import build_tiny_align_model

AGENT, CUSTOMER = "en-us", "en-gb+f3"
# (voice, words, where it starts in the call, a word it must be heard as)
LINES = [
    (AGENT, "Thank you for calling the help desk. How can I help you today?", 0.5, "desk"),
    (CUSTOMER, "My internet connection stopped working this morning.", 6.0, "internet"),
    (AGENT, "I am sorry to hear that. Let me check your account.", 10.5, "sorry"),
    (CUSTOMER, "Thank you very much for your help.", 15.5, "much"),
]
# VAD padding, and where espeak's own leading silence puts the first word.
SLACK = 0.6
# Without aligned words a segment is a whole VAD chunk: one short enough that each line is a chunk of its own.
CHUNK = "6"


def seconds(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=True).stdout)


def channel(lines: list[tuple[Path, float]], target: Path) -> Path:
    """One mono track holding each clip from its start time (sox pads each clip, then mixes them unscaled)."""
    padded = []
    for index, (clip, start) in enumerate(lines):
        padded.append(target.with_name(f"{target.stem}.{index}.wav"))
        subprocess.run(["sox", str(clip), str(padded[-1]), "pad", str(start), "0"], check=True)
    if len(padded) == 1:
        padded[0].rename(target)
    else:
        subprocess.run(
            ["sox", "-m", *[arg for path in padded for arg in ("-v", "1", str(path))], str(target)], check=True
        )
    return target


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """SOURCE with call.wav (agent left, customer right, taking turns), mono.wav (the agent's first line),
    three.wav (three channels, one line each) and broken.wav (not audio); and when each line is said."""
    work, source = tmp_path_factory.mktemp("lines"), tmp_path_factory.mktemp("calls")
    clips = [speak(text, work / f"line{index}.wav", voice) for index, (voice, text, _, _) in enumerate(LINES)]
    spans = [(start, start + seconds(clip)) for clip, (_, _, start, _) in zip(clips, LINES, strict=True)]
    left = channel([(clips[0], LINES[0][2]), (clips[2], LINES[2][2])], work / "left.wav")
    right = channel([(clips[1], LINES[1][2]), (clips[3], LINES[3][2])], work / "right.wav")
    subprocess.run(["sox", "-M", str(left), str(right), str(source / "call.wav")], check=True)
    channel([(clips[0], 0.5)], source / "mono.wav")
    tracks = [channel([(clips[index], LINES[index][2])], work / f"only{index}.wav") for index in (0, 1, 2)]
    subprocess.run(["sox", "-M", *map(str, tracks), str(source / "three.wav")], check=True)
    (source / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    return {"source": source, "spans": spans}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def run_split(source: Path, out: Path, model: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own (as the cli_process fixture runs it), with no Hugging Face token."""
    args = [
        "run",
        source,
        "--out",
        out,
        "--model",
        model,
        "--device",
        "cpu",
        "--chunk-size",
        CHUNK,
        "--channels",
        "split",
        "--channel-speakers",
        "agent,customer",
        "--formats",
        "json,turns,rttm",
        *extra,
    ]
    environ = {name: value for name, value in os.environ.items() if name not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "batch", *map(str, args)], capture_output=True, text=True, timeout=600, env=environ
    )


def assert_turns_alternate(turns: list[dict], spans: list[tuple[float, float]]) -> None:
    assert [turn["speaker_id"] for turn in turns] == ["agent", "customer", "agent", "customer"]
    for turn, (start, end), (_, _, _, heard) in zip(turns, spans, LINES, strict=True):
        assert start - SLACK <= turn["start_time"] < turn["end_time"] <= end + SLACK, (turn, start, end)
        assert heard in turn["text"].lower()
        assert 0 < turn["confidence"] <= 1
    assert all(one["end_time"] <= two["start_time"] for one, two in zip(turns, turns[1:], strict=False))


def rttm_rows(path: Path) -> list[tuple[str, float, float]]:
    """(speaker, start, end) of each RTTM line."""
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(row[0] == "SPEAKER" and row[1] == path.stem and len(row) == 10 for row in rows)
    return [(row[7], float(row[3]), float(row[3]) + float(row[4])) for row in rows]


def assert_rttm_matches_the_lines(path: Path, spans: list[tuple[float, float]]) -> None:
    rows = rttm_rows(path)
    assert {speaker for speaker, _, _ in rows} == {"agent", "customer"}
    owners = ["agent", "customer", "agent", "customer"]
    for speaker, start, end in rows:  # every row lies in a line that speaker said
        assert any(
            owner == speaker and low - SLACK <= start < end <= high + SLACK
            for owner, (low, high) in zip(owners, spans, strict=True)
        ), (speaker, start, end)


# --- the real CLI -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unaligned(calls: dict, tiny_en: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("split-unaligned")
    return {"out": out, "done": run_split(calls["source"], out, tiny_en, "--no-align")}


def test_each_channel_is_one_speaker_and_turns_alternate_by_time(calls: dict, unaligned: dict) -> None:
    out, done = unaligned["out"], unaligned["done"]
    assert done.returncode == 1, done.stderr  # broken.wav, and only it, failed
    transcript = read(out / "call.wav.json")
    assert transcript["speakers"] == ["agent", "customer"]
    assert [(c["channel"], c["speaker"], c["language"]) for c in transcript["channels"]] == [
        (0, "agent", "en"),
        (1, "customer", "en"),
    ]
    starts = [segment["start"] for segment in transcript["segments"]]
    assert starts == sorted(starts)
    assert [segment["speaker"] for segment in transcript["segments"]] == ["agent", "customer", "agent", "customer"]
    assert transcript["duration"] == pytest.approx(calls["spans"][3][1], abs=0.1)
    assert_turns_alternate(read(out / "call.wav.turns.json"), calls["spans"])
    assert_rttm_matches_the_lines(out / "call.wav.rttm", calls["spans"])
    manifest = read(out / "call.wav.manifest.json")
    assert manifest["status"] == "succeeded" and manifest["speakers"] == ["agent", "customer"]
    assert manifest["audio_seconds"] == transcript["duration"]  # the call's length, not the channels' sum
    assert manifest["settings"]["channels"] == "split"
    assert manifest["settings"]["channel_speakers"] == ["agent", "customer"]
    assert {"decode", "vad", "asr", "write"} <= set(manifest["timings"])


def test_a_mono_file_is_one_channel_named_by_the_first_name(unaligned: dict) -> None:
    transcript = read(unaligned["out"] / "mono.wav.json")
    assert transcript["speakers"] == ["agent"]
    assert [c["speaker"] for c in transcript["channels"]] == ["agent"]
    assert "desk" in " ".join(segment["text"] for segment in transcript["segments"]).lower()
    assert {speaker for speaker, _, _ in rttm_rows(unaligned["out"] / "mono.wav.rttm")} == {"agent"}


def test_channels_beyond_the_names_given_are_named_by_number(unaligned: dict) -> None:
    transcript = read(unaligned["out"] / "three.wav.json")
    assert [c["speaker"] for c in transcript["channels"]] == ["agent", "customer", "CHANNEL_2"]
    assert [segment["speaker"] for segment in transcript["segments"]] == ["agent", "customer", "CHANNEL_2"]
    assert "sorry" in transcript["segments"][2]["text"].lower()


def test_a_broken_file_fails_alone_and_a_rerun_skips_what_is_done(calls: dict, unaligned: dict, tiny_en: str) -> None:
    failed = read(unaligned["out"] / "broken.wav.manifest.json")
    assert failed["status"] == "failed" and failed["error"]["type"] == "AudioDecodeError"
    rerun = run_split(calls["source"], unaligned["out"], tiny_en, "--no-align", "--exclude", "broken.wav")
    assert rerun.returncode == 0, rerun.stderr
    report = read(max((unaligned["out"] / "_runs").glob("*.json"), key=lambda path: path.stat().st_mtime))
    assert sorted(report["skipped"]) == ["call.wav", "mono.wav", "three.wav"]


def test_aligned_words_carry_their_channel_speaker_in_time_order(calls: dict, tiny_en: str, tmp_path: Path) -> None:
    aligner = build_tiny_align_model(tmp_path / "align")
    out = tmp_path / "out"
    done = run_split(calls["source"], out, tiny_en, "--align-model", aligner, "--include", "call.wav")
    assert done.returncode == 0, done.stderr
    transcript = read(out / "call.wav.json")
    words = transcript["word_segments"]
    assert [word["start"] for word in words] == sorted(word["start"] for word in words)
    owners = ["agent", "customer", "agent", "customer"]
    for word in words:  # each word lies in a line its speaker said
        assert any(
            owner == word["speaker"] and low - SLACK <= word["start"] <= high + SLACK
            for owner, (low, high) in zip(owners, calls["spans"], strict=True)
        ), word
    for segment in transcript["segments"]:
        assert all(word["speaker"] == segment["speaker"] for word in segment["words"])
    assert {word["speaker"] for word in words} == {"agent", "customer"}
    assert read(out / "call.wav.manifest.json")["alignment"]["status"] == "aligned"
    assert [turn["speaker_id"] for turn in read(out / "call.wav.turns.json")] == owners
    assert_rttm_matches_the_lines(out / "call.wav.rttm", calls["spans"])


def test_mix_is_the_default_and_reads_both_channels_as_one(
    cli_process, calls: dict, tiny_en: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = cli_process(
        "run",
        calls["source"],
        "--out",
        out,
        "--model",
        tiny_en,
        "--device",
        "cpu",
        "--no-align",
        "--include",
        "call.wav",
        "--formats",
        "json,turns",
    )
    assert done.returncode == 0, done.stderr
    transcript = read(out / "call.wav.json")
    assert "speakers" not in transcript and "channels" not in transcript
    assert not any("speaker" in segment for segment in transcript["segments"])
    text = " ".join(segment["text"] for segment in transcript["segments"]).lower()
    assert all(heard in text for _, _, _, heard in LINES)
    assert {turn["speaker_id"] for turn in read(out / "call.wav.turns.json")} == {None}
    assert "channels" not in read(out / "call.wav.manifest.json")["settings"]


# --- decoding -----------------------------------------------------------------------------------------------


def test_decoding_keeps_every_channel_apart_in_the_files_order(tmp_path: Path) -> None:
    tones = []
    for frequency in (300, 700, 1500, 2500):
        tones.append(tmp_path / f"{frequency}.wav")
        subprocess.run(
            ["sox", "-n", "-r", "44100", "-c", "1", str(tones[-1]), "synth", "2", "sine", str(frequency)], check=True
        )
    four = tmp_path / "four.flac"
    subprocess.run(["sox", "-M", *map(str, tones), str(four)], check=True)
    with four.open("rb") as stream:
        audio = decode(stream, split_channels=True)
    assert audio.shape == (4, 2 * SAMPLE_RATE) and audio.dtype == np.float32
    loudest = [round(np.argmax(np.abs(np.fft.rfft(row))) * SAMPLE_RATE / audio.shape[1]) for row in audio]
    assert loudest == [300, 700, 1500, 2500]
    with tones[0].open("rb") as stream:
        assert decode(stream, split_channels=True).shape == (1, 2 * SAMPLE_RATE)
    with four.open("rb") as stream:
        assert decode(stream).shape == (2 * SAMPLE_RATE,)


# --- merging channels ---------------------------------------------------------------------------------------


def channel_outcome(file: DecodedFile, segments: list[dict], **fields: object) -> FileOutcome:
    return FileOutcome(file, transcribed=True, segments=segments, **{"language": "en", **fields})  # type: ignore[arg-type]


def test_merged_segments_are_in_time_order_and_the_file_fails_with_any_channel() -> None:
    file = DecodedFile("call.wav", np.zeros((2, SAMPLE_RATE), dtype=np.float32), Stopwatch())
    left = channel_outcome(
        file,
        [{"start": 0.0, "end": 2.0, "text": "a", "words": [{"word": "a"}]}, {"start": 5.0, "end": 6.0, "text": "c"}],
        alignment={"status": "aligned"},
    )
    right = channel_outcome(
        file,
        [{"start": 2.5, "end": 4.0, "text": "b"}],
        language="de",
        alignment={"status": "failed", "reason": "x"},
        error=AlignmentUnavailable("x"),
    )
    merged = merge_channels(file, [left, right], ("agent",))
    assert [(s["text"], s["speaker"]) for s in merged.segments] == [("a", "agent"), ("b", "CHANNEL_1"), ("c", "agent")]
    assert merged.segments[0]["words"] == [{"word": "a", "speaker": "agent"}]  # untimed: the channel still says who
    assert merged.turns == [{"start": s["start"], "end": s["end"], "speaker": s["speaker"]} for s in merged.segments]
    assert merged.language == "en"  # the channel with the most speech
    assert merged.alignment == {"status": "failed", "reason": "x"} and isinstance(merged.error, AlignmentUnavailable)
    assert merged.transcribed  # words untimed on one channel: the transcript is still written, the file fails
    undecoded = FileOutcome(file, error=RuntimeError("ASR broke"))
    assert not merge_channels(file, [left, undecoded], ()).transcribed


def test_speaker_names_default_to_the_channel_number() -> None:
    assert speaker_names(("agent", "customer"), 3) == ["agent", "customer", "CHANNEL_2"]
    assert speaker_names(("agent", "customer"), 1) == ["agent"]
    assert speaker_names((), 2) == ["CHANNEL_0", "CHANNEL_1"]


# --- settings -----------------------------------------------------------------------------------------------


def settings_hash(**flags: object) -> str:
    settings = load_settings(flags, environ={})
    return sections(settings, {}, RuntimeOptions("cpu", "int8", 1, 16)).settings_hash


def test_split_and_its_names_are_in_the_settings_hash_and_mix_leaves_it_as_it_was() -> None:
    mix = settings_hash()
    assert settings_hash(channels="mix") == mix
    assert settings_hash(channels="split") != mix
    assert settings_hash(channels="split", channel_speakers=("agent", "customer")) != settings_hash(channels="split")
    assert settings_hash(channels="split", channel_speakers="a,b") != settings_hash(
        channels="split", channel_speakers="b,a"
    )
    shaping = sections(load_settings({}, environ={}), {}, RuntimeOptions("cpu", "int8", 1, 16)).shaping
    assert "channels" not in shaping and "channel_speakers" not in shaping


def test_channel_settings_from_the_environment_and_a_config_file(tmp_path: Path) -> None:
    environ = {"WHISPERX_BATCH_CHANNELS": "split", "WHISPERX_BATCH_CHANNEL_SPEAKERS": "agent, customer"}
    settings = load_settings({}, environ=environ)
    assert (settings.channels, settings.channel_speakers) == ("split", ("agent", "customer"))
    config = tmp_path / "job.toml"
    config.write_text('channels = "split"\nchannel-speakers = ["left", "right"]\nformats = ["rttm"]\n')
    settings = load_settings({}, environ={}, config_path=config)
    assert settings.channel_speakers == ("left", "right") and "rttm" in settings.formats
    assert sections(settings, {}).channels.split


@pytest.mark.parametrize(
    ("flags", "key", "words"),
    [
        ({"channels": "split", "diarize": True}, "channels", "--diarize"),
        ({"channels": "both"}, "channels", "mix"),
        ({"channel_speakers": "agent,customer"}, "channel_speakers", "--channels split"),
        ({"channels": "split", "channel_speakers": "agent,agent"}, "channel_speakers", "agent"),
        ({"channels": "split", "channel_speakers": ("the agent",)}, "channel_speakers", "spaces"),
        ({"channels": "split", "channel_speakers": "agent,,customer"}, "channel_speakers", "empty"),
        ({"formats": "rttm"}, "formats", "--channels split"),
    ],
)
def test_channel_setting_mistakes_are_config_errors(flags: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, environ={})
    assert caught.value.key == key and words in str(caught.value)
    assert caught.value.exit_code == 2


def test_split_with_diarize_stops_the_cli_before_any_model(cli, tmp_path: Path) -> None:
    result = cli("run", tmp_path, "--out", tmp_path / "out", "--channels", "split", "--diarize")
    assert result.exit_code == 2
    assert "channels" in result.stderr and "--diarize" in result.stderr and "Traceback" not in result.stderr
