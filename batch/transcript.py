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


class Segment(TypedDict):
    start: float
    end: float
    text: str
    avg_logprob: NotRequired[float]
    words: NotRequired[list[Word]]


class Transcript(TypedDict):
    schema_version: int
    language: str | None
    language_probability: float | None
    duration: float
    segments: list[Segment]
    word_segments: list[Word]


def build_transcript(
    language: str | None, language_probability: float | None, duration: float, segments: list[Segment]
) -> Transcript:
    """The transcript of one file; `word_segments` lists every word that has a time, in order."""
    words = [word for segment in segments for word in segment.get("words", []) if "start" in word]
    return {
        "schema_version": TRANSCRIPT_SCHEMA_VERSION,
        "language": language,
        "language_probability": language_probability,
        "duration": round(duration, 3),
        "segments": segments,
        "word_segments": words,
    }


_WRITER_OPTIONS = {"max_line_width": None, "max_line_count": None, "highlight_words": False}


def render(transcript: Transcript, fmt: str) -> bytes:
    """One output format as UTF-8 bytes: json, or srt/vtt/txt/tsv through whisperx's own writers."""
    if fmt == "json":
        return json.dumps(transcript, ensure_ascii=False, indent=2).encode()
    from whisperx.utils import WriteSRT, WriteTSV, WriteTXT, WriteVTT

    writers: dict[str, Any] = {"srt": WriteSRT, "vtt": WriteVTT, "txt": WriteTXT, "tsv": WriteTSV}
    buffer = io.StringIO()
    result = {"segments": transcript["segments"], "language": transcript["language"] or ""}
    writers[fmt](output_dir="").write_result(result, file=buffer, options=_WRITER_OPTIONS)
    return buffer.getvalue().encode()
