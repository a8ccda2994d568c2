"""Subtitles a person can read and the flat turns format, on real speech through the real CLI and writers.

No Chinese or Japanese speech recognizer can be had offline (the multilingual base model in the test packages
reads espeak's Mandarin too poorly to say anything about joining), so the joining of languages written without
spaces is tested on constructed transcripts, through the same writers a run uses.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batch.cli import app
from batch.common.errors import ConfigError
from batch.formats.subtitles import SubtitleOptions, columns
from batch.run.outputs import render
from batch.settings.options import load_settings
from tests.conftest import ENGLISH, speak
from tests.tiny_models import build_tiny_align_model

PASSAGE = (
    "The harbour town wakes up early. Before the sun is over the hills, the fishing boats are already "
    "coming back with the night's catch. Buyers from the restaurants wait on the quay with their notebooks, "
    "and the auction starts at six o'clock sharp. Prices change from one day to the next, because the weather "
    "decides how many boats can go out. In winter the storms keep the fleet in the harbour for a week at a "
    "time. The children of the town learn to read the sky before they learn to read books. Tourists arrive "
    "in the summer, and the small cafes along the water fill up with visitors who want to taste the fresh "
    "fish. Most of them never see the town in the cold months, when the streets are empty and the wind "
    "blows hard from the north. The people who live here all year say that winter is the best season, "
    "because the town belongs to them again. On those evenings the harbour lights are the only lights on the coast."
)
CUE_TIME = re.compile(r"(?:(\d+):)?(\d\d):(\d\d)[,.](\d\d\d) --> (?:(\d+):)?(\d\d):(\d\d)[,.](\d\d\d)")


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]


def seconds(hours: str | None, minutes: str, secs: str, millis: str) -> float:
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(secs) + int(millis) / 1000


def parse_cues(text: str) -> list[Cue]:
    """SRT or VTT cues (a time line, then text lines up to a blank line)."""
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        index = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if index is None:
            continue  # the WEBVTT header
        times = CUE_TIME.fullmatch(lines[index])
        assert times, lines[index]
        cues.append(Cue(seconds(*times.groups()[:4]), seconds(*times.groups()[4:]), lines[index + 1 :]))
    return cues


def words(text: str) -> list[str]:
    return re.sub(r"</?u>", "", text).split()


def assert_readable(cues: list[Cue], width: int, count: int, longest: float) -> None:
    assert cues
    for previous, cue in zip([None, *cues], cues, strict=False):
        assert 0 < cue.end - cue.start <= longest + 0.001, cue
        assert 1 <= len(cue.lines) <= count, cue
        assert all(len(line) <= width or len(line.split()) == 1 for line in cue.lines), cue
        assert previous is None or previous.end <= cue.start + 0.001


def read(path: Path) -> dict | list:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def passage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("passage")
    speak(PASSAGE, folder / "harbour.wav")
    return folder


@pytest.fixture(scope="module")
def unaligned(passage: Path, tmp_path_factory: pytest.TempPathFactory, tiny_en: str) -> Path:
    """The passage transcribed without alignment, subtitles at their defaults, turns without diarization."""
    out = tmp_path_factory.mktemp("unaligned")
    result = CliRunner().invoke(
        app,
        ["run", str(passage), "--out", str(out), "--model", tiny_en, "--no-align", "--formats", "srt,vtt,turns"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return out


def test_the_passage_is_a_minute_of_speech_in_long_chunks(unaligned: Path) -> None:
    transcript = read(unaligned / "harbour.wav.json")
    assert 50 < transcript["duration"] < 80
    assert max(s["end"] - s["start"] for s in transcript["segments"]) > 20  # what a cue used to be
    assert all("words" not in s for s in transcript["segments"])


def test_unaligned_cues_keep_to_line_width_line_count_and_duration(unaligned: Path) -> None:
    transcript = read(unaligned / "harbour.wav.json")
    srt = parse_cues((unaligned / "harbour.wav.srt").read_text())
    vtt_text = (unaligned / "harbour.wav.vtt").read_text()
    assert vtt_text.startswith("WEBVTT")
    assert parse_cues(vtt_text) == srt
    assert_readable(srt, width=42, count=2, longest=7.0)
    assert len(srt) >= transcript["duration"] / 7
    said = [word for segment in transcript["segments"] for word in segment["text"].split()]
    assert [word for cue in srt for line in cue.lines for word in line.split()] == said  # nothing lost or added
    # Times are the chunks' spans shared out: each cue lies inside its segment, and each segment's first and
    # last cues start and end with it.
    for segment in transcript["segments"]:
        inside = [c for c in srt if segment["start"] - 0.001 <= c.start and c.end <= segment["end"] + 0.001]
        assert inside and inside[0].start == pytest.approx(segment["start"], abs=0.001)
        assert inside[-1].end == pytest.approx(segment["end"], abs=0.001)
    assert sum(len(c.lines) == 2 for c in srt) > len(srt) / 2  # lines are filled, not one word each


def test_turns_without_diarization_carry_a_null_speaker_and_the_recognizer_confidence(unaligned: Path) -> None:
    transcript = read(unaligned / "harbour.wav.json")
    turns = read(unaligned / "harbour.wav.turns.json")
    assert len(turns) == len(transcript["segments"])
    for turn, segment in zip(turns, transcript["segments"], strict=True):
        assert set(turn) == {"speaker_id", "start_time", "end_time", "text", "confidence", "language"}
        assert turn["speaker_id"] is None
        assert (turn["start_time"], turn["end_time"], turn["text"]) == (
            segment["start"],
            segment["end"],
            segment["text"],
        )
        assert 0 < turn["confidence"] <= 1
        assert turn["confidence"] == pytest.approx(math.exp(segment["avg_logprob"]), rel=0.01)
    manifest = read(unaligned / "harbour.wav.manifest.json")
    assert manifest["settings"]["max_line_width"] == 42 and manifest["settings"]["highlight_words"] is False


def test_line_options_from_flags_and_environment_in_a_real_process(
    cli_process, passage: Path, tmp_path: Path, tiny_en: str
) -> None:
    out = tmp_path / "out"
    done = cli_process(
        "run",
        passage,
        "--out",
        out,
        "--model",
        tiny_en,
        "--no-align",
        "--formats",
        "srt",
        "--max-line-width",
        "24",
        "--max-cue-duration",
        "3.5",
        env={"WHISPERX_BATCH_MAX_LINE_COUNT": "1"},
    )
    assert done.returncode == 0, done.stderr
    cues = parse_cues((out / "harbour.wav.srt").read_text())
    assert_readable(cues, width=24, count=1, longest=3.5)
    assert max(len(cue.lines[0]) for cue in cues) > 12  # lines are filled, not one word each
    settings = read(out / "harbour.wav.manifest.json")["settings"]
    assert (settings["max_line_width"], settings["max_line_count"], settings["max_cue_duration"]) == (24, 1, 3.5)


@pytest.fixture(scope="module")
def align_en(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_align_model(tmp_path_factory.mktemp("align-en")))


def test_highlight_words_underlines_each_aligned_word_in_turn(cli, tmp_path: Path, tiny_en: str, align_en: str) -> None:
    speak(ENGLISH, tmp_path / "in" / "memo.wav")
    out = tmp_path / "out"
    result = cli(
        "run",
        tmp_path / "in",
        "--out",
        out,
        "--model",
        tiny_en,
        "--align-model",
        align_en,
        "--formats",
        "srt,vtt",
        "--highlight-words",
    )
    assert result.exit_code == 0, result.stderr
    transcript = read(out / "memo.wav.json")
    timed = [w for w in transcript["word_segments"] if w["end"] > w["start"]]
    assert timed
    for ext in ("srt", "vtt"):
        cues = parse_cues((out / f"memo.wav.{ext}").read_text())
        underlined = [cue for cue in cues if "<u>" in "\n".join(cue.lines)]
        assert len(underlined) == len(timed)
        for cue, word in zip(underlined, timed, strict=True):
            text = "\n".join(cue.lines)
            assert re.findall(r"<u>(.*?)</u>", text) == [word["word"]]
            assert (cue.start, cue.end) == (
                pytest.approx(word["start"], abs=0.001),
                pytest.approx(word["end"], abs=0.001),
            )
        assert_readable(cues, width=42, count=2, longest=7.0)
        shown = [w for cue in cues if "<u>" not in "\n".join(cue.lines) for line in cue.lines for w in line.split()]
        assert set(shown) <= {w["word"] for w in transcript["word_segments"]}


def test_highlight_words_without_alignment_is_a_usage_error(cli, passage: Path, tmp_path: Path) -> None:
    result = cli("run", passage, "--out", tmp_path / "out", "--no-align", "--highlight-words")
    assert result.exit_code == 2
    assert "highlight_words" in result.stderr and "--align" in result.stderr


def test_turns_need_no_diarization_but_rttm_does() -> None:
    assert load_settings({"formats": ("turns",)}, environ={}).formats == ("json", "turns")
    with pytest.raises(ConfigError) as caught:
        load_settings({"formats": ("rttm",)}, environ={})
    assert caught.value.key == "formats" and "--diarize" in str(caught.value)


def settings_hash(**flags: object) -> str:
    from batch.engine.config import RuntimeOptions
    from tests.conftest import sections

    settings = load_settings(flags, environ={})
    return sections(settings, {}, RuntimeOptions("cpu", "int8", 1, 16)).settings_hash


def test_line_options_redo_files_only_where_subtitles_are_written() -> None:
    assert settings_hash(formats=("srt",)) != settings_hash(formats=("srt",), max_line_width=30)
    assert settings_hash(formats=("vtt",)) != settings_hash(formats=("vtt",), highlight_words=True)
    assert settings_hash(formats=("srt",)) != settings_hash(formats=("srt",), max_cue_duration=5)
    assert settings_hash(formats=("txt",)) == settings_hash(formats=("txt",), max_line_count=1, max_line_width=30)


# --- languages written without spaces, at the writer level ----------------------------------------------------


def transcript_of(language: str, segments: list[dict]) -> dict:
    return {
        "schema_version": 2,
        "language": language,
        "language_probability": None,
        "duration": 20.0,
        "segments": segments,
        "word_segments": [],
    }


CHINESE = [
    {"start": 0.0, "end": 6.0, "text": "今天的会议我们讨论第三季度的报告，请大家提前看一下数据。", "avg_logprob": -0.2},
    {"start": 6.5, "end": 9.0, "text": "周五上午十点开始。", "avg_logprob": -0.4},
]


@pytest.mark.parametrize("language", ["zh", "ja", "yue"])
def test_turns_and_cues_of_unspaced_languages_are_joined_without_spaces(language: str) -> None:
    words = [
        {"word": char, "start": 6.5 + i * 0.25, "end": 6.7 + i * 0.25, "score": 0.8}
        for i, char in enumerate(CHINESE[1]["text"])
    ]
    aligned = [CHINESE[0], {**CHINESE[1], "words": words}]
    diarized = transcript_of(language, [{**segment, "speaker": "SPEAKER_01"} for segment in aligned])
    diarized["speaker_turns"] = []
    turns = json.loads(render(diarized, "turns"))
    assert [t["text"] for t in turns] == [CHINESE[0]["text"] + CHINESE[1]["text"]]  # one speaker, one turn
    assert turns[0]["confidence"] == 0.8  # the aligned words' mean score wins over the log-probabilities

    srt = render(transcript_of(language, aligned), "srt", options=SubtitleOptions(max_line_width=20)).decode()
    cues = parse_cues(srt)
    assert "".join(line for cue in cues for line in cue.lines) == CHINESE[0]["text"] + CHINESE[1]["text"]
    assert all(columns(line) <= 20 for cue in cues for line in cue.lines)  # ten characters of two columns
    assert max(len(line) for cue in cues for line in cue.lines) == 10


def test_spaced_languages_keep_their_spaces() -> None:
    thai = [
        {"start": 0.0, "end": 3.0, "text": "สวัสดีครับ วันนี้อากาศดี", "avg_logprob": -0.3},
        {"start": 3.5, "end": 5.0, "text": "ไปเที่ยวกันไหม", "avg_logprob": -0.3},
    ]
    diarized = transcript_of("th", [{**s, "speaker": "SPEAKER_00"} for s in thai]) | {"speaker_turns": []}
    assert json.loads(render(diarized, "turns"))[0]["text"] == "สวัสดีครับ วันนี้อากาศดี ไปเที่ยวกันไหม"
    english = transcript_of("en", [{"start": 0.0, "end": 2.0, "text": "Hello there.", "avg_logprob": -0.1}])
    assert parse_cues(render(english, "srt").decode())[0].lines == ["Hello there."]


def test_a_speaker_label_counts_in_the_line_width_and_a_new_speaker_starts_a_cue() -> None:
    said = "one two three four five six seven eight nine ten eleven twelve".split()
    words = [
        {"word": w, "start": i * 0.3, "end": i * 0.3 + 0.25, "speaker": "SPEAKER_00" if i < 9 else "SPEAKER_01"}
        for i, w in enumerate(said)
    ]
    segment = {"start": 0.0, "end": 3.6, "text": " ".join(said), "speaker": "SPEAKER_00", "words": words}
    srt = render(transcript_of("en", [segment]), "srt", options=SubtitleOptions(max_line_width=30)).decode()
    cues = parse_cues(srt)
    assert [cue.lines[0].split(":")[0] for cue in cues] == ["[SPEAKER_00]", "[SPEAKER_01]"]
    assert all(len(line) <= 30 for cue in cues for line in cue.lines)
    assert cues[1].lines == ["[SPEAKER_01]: ten eleven", "twelve"]  # 31 columns with "twelve" on the first
