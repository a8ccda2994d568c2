"""The transcript document (WhisperX's JSON field names) and the text formats made from it."""

from __future__ import annotations

import io
import json
from typing import Any, NotRequired, TypedDict

from batch.config import TRANSCRIPT_SCHEMA_VERSION


class Word(TypedDict):
    word: str
    start: NotRequired[float]
    end: NotRequired[float]
    score: NotRequired[float]
    speaker: NotRequired[str]


class Segment(TypedDict):
    start: float
    end: float
    text: str
    avg_logprob: NotRequired[float]
    score: NotRequired[float]  # mean of its words' alignment scores
    speaker: NotRequired[str]
    words: NotRequired[list[Word]]


class Turn(TypedDict):
    start: float
    end: float
    speaker: str


class Transcript(TypedDict):
    schema_version: int
    language: str | None
    language_probability: float | None
    duration: float
    segments: list[Segment]
    word_segments: list[Word]
    speakers: NotRequired[list[str]]
    speaker_turns: NotRequired[list[Turn]]


def build_transcript(
    language: str | None,
    language_probability: float | None,
    duration: float,
    segments: list[Segment],
    turns: list[Turn] | None = None,
) -> Transcript:
    """The transcript of one file; `word_segments` lists every word that has a time, in order."""
    words = [word for segment in segments for word in segment.get("words", []) if "start" in word]
    transcript: Transcript = {
        "schema_version": TRANSCRIPT_SCHEMA_VERSION,
        "language": language,
        "language_probability": language_probability,
        "duration": round(duration, 3),
        "segments": segments,
        "word_segments": words,
    }
    if turns is not None:
        transcript["speakers"] = sorted({s["speaker"] for s in segments if "speaker" in s})
        transcript["speaker_turns"] = turns
    return transcript


def speaker_turns(transcript: Transcript) -> list[dict[str, Any]]:
    """The flat turn list some users already consume: consecutive words of one speaker form a turn.

    Without timed words, each segment is a turn. `confidence` is the mean alignment score of its words
    (null when no word was scored).
    """
    pieces: list[tuple[str, float, float, str, float | None]] = []
    for segment in transcript["segments"]:
        timed = [w for w in segment.get("words", []) if "start" in w]
        if timed:
            pieces += [(w.get("speaker", ""), w["start"], w["end"], w["word"], w.get("score")) for w in timed]
        else:
            pieces.append(
                (segment.get("speaker", ""), segment["start"], segment["end"], segment["text"], segment.get("score"))
            )
    turns: list[dict[str, Any]] = []
    scores: list[list[float]] = []
    for speaker, start, end, text, score in pieces:
        if turns and turns[-1]["speaker_id"] == speaker:
            turns[-1]["end_time"], turns[-1]["text"] = end, f"{turns[-1]['text']} {text}"
        else:
            turns.append({"speaker_id": speaker, "start_time": start, "end_time": end, "text": text})
            scores.append([])
        if score is not None:
            scores[-1].append(score)
    for turn, turn_scores in zip(turns, scores, strict=True):
        turn["confidence"] = round(sum(turn_scores) / len(turn_scores), 3) if turn_scores else None
    return turns


def rttm(transcript: Transcript, file_id: str) -> str:
    """Diarization turns in RTTM, for scoring with standard tools (pyannote.metrics, dscore)."""
    uri = "".join(c if c.isalnum() or c in "-_." else "_" for c in file_id)
    return "".join(
        f"SPEAKER {uri} 1 {t['start']:.3f} {t['end'] - t['start']:.3f} <NA> <NA> {t['speaker']} <NA> <NA>\n"
        for t in transcript.get("speaker_turns", [])
    )


_WRITER_OPTIONS = {"max_line_width": None, "max_line_count": None, "highlight_words": False}


def render(transcript: Transcript, fmt: str, file_id: str = "audio") -> bytes:
    """One output format as UTF-8 bytes: json, turns, rttm, or srt/vtt/txt/tsv through whisperx's writers."""
    if fmt == "json":
        return json.dumps(transcript, ensure_ascii=False, indent=2).encode()
    if fmt == "turns":
        return json.dumps(speaker_turns(transcript), ensure_ascii=False, indent=2).encode()
    if fmt == "rttm":
        return rttm(transcript, file_id).encode("utf-8", "backslashreplace")
    from whisperx.utils import WriteSRT, WriteTSV, WriteTXT, WriteVTT

    writers: dict[str, Any] = {"srt": WriteSRT, "vtt": WriteVTT, "txt": WriteTXT, "tsv": WriteTSV}
    buffer = io.StringIO()
    result = {"segments": transcript["segments"], "language": transcript["language"] or ""}
    writers[fmt](output_dir="").write_result(result, file=buffer, options=_WRITER_OPTIONS)
    return buffer.getvalue().encode()
