"""The provider guide's flat format: a list of turns {speaker_id, start_time, end_time, text, confidence}, and the
turn's `language`.

With diarization, or with channels split by speaker (batch.engine.channels), a turn is what one speaker says without
interruption in one language: consecutive words of one speaker (or consecutive segments, when words are not timed).
Without either, each segment is a turn, with `speaker_id` null: a sentence when words are aligned, a VAD chunk (up to
30 s) when they are not.

`language`: the language of the segments the turn comes from (a change of language starts a new turn).

`confidence`, in (0, 1], or null when the transcript has nothing to derive it from:
- words aligned and scored: the mean of the words' alignment scores (whisperx's word `score`, the wav2vec2
  probability of the word's characters where the aligner placed them);
- otherwise: exp(avg_logprob), Whisper's mean log-probability per decoded token of the segments the turn
  comes from, each segment weighted by its characters: the geometric mean of the token probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from batch.formats.transcript import Transcript, join_text


@dataclass(frozen=True)
class _Piece:
    group: Any  # consecutive pieces of one group make one turn
    speaker: str | None
    start: float
    end: float
    text: str
    score: float | None  # alignment score
    avg_logprob: float | None  # of the segment the piece comes from
    language: str | None = None  # of the segment the piece comes from: a turn holds one language


def speaker_turns(transcript: Transcript) -> list[dict[str, Any]]:
    diarized = "speaker_turns" in transcript
    segments = transcript["segments"]
    pieces = [
        replace(piece, language=segment.get("language") or transcript["language"])
        for index, segment in enumerate(segments)
        for piece in _pieces(index, segment, diarized)
    ]
    if diarized:  # in time order: the segments of channels split by speaker can overlap (crosstalk)
        pieces.sort(key=lambda piece: piece.start)
    turns: list[list[_Piece]] = []
    for piece in pieces:
        if turns and turns[-1][-1].group == piece.group and turns[-1][-1].language == piece.language:
            turns[-1].append(piece)
        else:
            turns.append([piece])
    return [
        {
            "speaker_id": turn[0].speaker,
            "start_time": turn[0].start,
            "end_time": turn[-1].end,
            "text": join_text([piece.text for piece in turn], turn[0].language),
            "confidence": confidence(turn),
            "language": turn[0].language,
        }
        for turn in turns
    ]


def _pieces(index: int, segment: dict[str, Any], diarized: bool) -> list[_Piece]:
    """The segment whole, or (diarized, words timed) its words, each with the speaker it was given."""
    speaker, logprob = segment.get("speaker"), segment.get("avg_logprob")
    words = segment.get("words") or []
    if not diarized or not any("start" in word for word in words):
        group = speaker if diarized else index
        start, end, text = segment["start"], segment["end"], segment["text"]
        return [_Piece(group, speaker, start, end, text, segment.get("score"), logprob)]
    pieces: list[_Piece] = []
    cursor = segment["start"]
    for word in words:  # a word alignment could not time stays in the turn of the word before it
        word_speaker = word.get("speaker", pieces[-1].speaker if pieces else speaker)
        start, end = word.get("start", cursor), word.get("end", word.get("start", cursor))
        cursor = end
        pieces.append(_Piece(word_speaker, word_speaker, start, end, word["word"], word.get("score"), logprob))
    return pieces


def confidence(turn: list[_Piece]) -> float | None:
    scores = [piece.score for piece in turn if piece.score is not None]
    if scores:
        return _three_digits(sum(scores) / len(scores))
    weighted = [(len(piece.text), piece.avg_logprob) for piece in turn if piece.avg_logprob is not None]
    total = sum(weight for weight, _ in weighted)
    if not total:
        return None
    mean_logprob = sum(weight * logprob for weight, logprob in weighted) / total
    return _three_digits(min(1.0, math.exp(mean_logprob)))


def _three_digits(value: float) -> float:
    """Three significant digits: a low confidence stays above zero."""
    return float(f"{value:.3g}")
