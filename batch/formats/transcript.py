"""The transcript document (WhisperX's JSON field names), its RTTM, and how its words are joined."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from whisperx.utils import LANGUAGES_WITHOUT_SPACES as WHISPERX_UNSPACED  # light module: tables only

# Bump when the transcript JSON changes shape: outputs made under another version are redone.
TRANSCRIPT_SCHEMA_VERSION = 2  # 2: segments carry their language


# whisperx's list (Chinese, Japanese: whisperx aligns them a character at a time), and Cantonese, written in
# Chinese characters too. Thai, Lao, Khmer and Burmese do not space words either, but do space phrases and
# sentences, and whisperx's alignment splits them at those spaces: their pieces are joined with a space.
LANGUAGES_WITHOUT_SPACES = (*WHISPERX_UNSPACED, "yue")


class Word(TypedDict):
    word: str
    start: NotRequired[float]
    end: NotRequired[float]
    score: NotRequired[float]
    speaker: NotRequired[str]


class OtherLanguage(TypedDict):
    language: str
    probability: float


class Segment(TypedDict):
    start: float
    end: float
    text: str
    avg_logprob: NotRequired[float]
    score: NotRequired[float]  # mean of its words' alignment scores
    speaker: NotRequired[str]
    words: NotRequired[list[Word]]
    language: NotRequired[str | None]  # the language its text is in (its speech chunk's detection, or the file's)
    language_probability: NotRequired[float | None]
    other_language: NotRequired[OtherLanguage]  # detected with confidence in another language than a forced one


class Turn(TypedDict):
    start: float
    end: float
    speaker: str


class Channel(TypedDict):
    channel: int  # 0-based, in the file's order
    speaker: str
    language: str | None
    language_probability: float | None


class Transcript(TypedDict):
    schema_version: int
    language: str | None
    language_probability: float | None
    duration: float
    segments: list[Segment]
    word_segments: list[Word]
    speakers: NotRequired[list[str]]
    speaker_turns: NotRequired[list[Turn]]
    channels: NotRequired[list[Channel]]


def build_transcript(
    language: str | None,
    language_probability: float | None,
    duration: float,
    segments: list[Segment],
    turns: list[Turn] | None = None,
    channels: list[Channel] | None = None,
) -> Transcript:
    """The transcript of one file; `word_segments` lists every word that has a time, in time order."""
    timed = [word for segment in segments for word in segment.get("words", []) if "start" in word]
    words = sorted(timed, key=lambda word: word["start"])  # stable; only channels split by speaker overlap
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
    if channels is not None:
        transcript["channels"] = channels
    return transcript


def rttm(transcript: Transcript, file_id: str) -> str:
    """Speaker turns (diarization's, or the channels' segments) in RTTM, for scoring with standard tools
    (pyannote.metrics, dscore)."""
    uri = "".join(c if c.isalnum() or c in "-_." else "_" for c in file_id)
    return "".join(
        f"SPEAKER {uri} 1 {t['start']:.3f} {t['end'] - t['start']:.3f} <NA> <NA> {t['speaker']} <NA> <NA>\n"
        for t in transcript.get("speaker_turns", [])
    )


def has_spaces(language: str | None) -> bool:
    return language not in LANGUAGES_WITHOUT_SPACES


def join_text(pieces: list[str], language: str | None) -> str:
    """Words or sentences of one transcript as running text: with spaces between them, or without."""
    return ("" if not has_spaces(language) else " ").join(piece.strip() for piece in pieces if piece.strip())
