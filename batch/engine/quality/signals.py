"""Signals of one segment, as pure functions of its text, its times and the VAD's view of its audio."""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A loop: a run of 1 to LOOP_LONGEST_NGRAM words said LOOP_MIN_REPEATS times or more in a row, covering at least
# LOOP_MIN_WORDS words ("the end of the end of the end of the end", "I'm sorry, I'm sorry, I'm sorry, I'm sorry").
LOOP_LONGEST_NGRAM = 12
LOOP_MIN_REPEATS = 3
LOOP_MIN_WORDS = 8
REPEATED_NGRAM_SIZE = 4  # ngram_repetition counts repeated runs of this many words
NEIGHBOUR_MIN_WORDS = 4  # a segment repeating its neighbour counts from this many words ("yes." twice is speech)

_PUNCTUATION = re.compile(r"[^\w\s']", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, punctuation and extra spaces gone: how phrases and words are compared."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def compression_ratio(text: str) -> float:
    """faster-whisper's figure: UTF-8 bytes over zlib-compressed bytes (repetitive text compresses well)."""
    data = text.strip().encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def words_per_second(text: str, seconds: float) -> float:
    return len(text.split()) / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Loop:
    """`repeats` consecutive copies of `size` words, starting at word `first` of the segment."""

    first: int
    size: int
    repeats: int

    @property
    def words(self) -> int:
        return self.size * self.repeats


def find_loop(text: str) -> Loop | None:
    """The longest run of a repeated word sequence in `text` that makes a loop, or None."""
    words = [normalise(word) for word in text.split()]
    best: Loop | None = None
    for size in range(1, min(LOOP_LONGEST_NGRAM, len(words) // LOOP_MIN_REPEATS) + 1):
        first = 0
        while first + size * LOOP_MIN_REPEATS <= len(words):
            repeats = _repeats_from(words, first, size)
            if repeats >= LOOP_MIN_REPEATS and size * repeats >= LOOP_MIN_WORDS:
                if best is None or size * repeats > best.words:
                    best = Loop(first, size, repeats)
                first += size * repeats
            else:
                first += 1
    return best


def _repeats_from(words: Sequence[str], first: int, size: int) -> int:
    unit = words[first : first + size]
    repeats, at = 1, first + size
    while words[at : at + size] == unit:
        repeats, at = repeats + 1, at + size
    return repeats


def cut_loop(text: str, loop: Loop) -> str:
    """`text` with the loop kept to its first occurrence (the words before and after it stay, and so does the
    punctuation that ended the loop)."""
    words = text.split()
    kept = words[: loop.first + loop.size] + words[loop.first + loop.words :]
    last_of_loop = words[loop.first + loop.words - 1]
    if loop.first + loop.words == len(words) and last_of_loop[-1:] in ".!?" and kept[-1][-1:] not in ".!?":
        kept[-1] = kept[-1].rstrip(",;:") + last_of_loop[-1]
    return " ".join(kept)


def ngram_repetition(text: str, size: int = REPEATED_NGRAM_SIZE) -> float:
    """The share of the segment's word n-grams that repeat an earlier one (0: none; near 1: one phrase over and
    over, with or without small changes between the copies)."""
    words = normalise(text).split()
    grams = [tuple(words[i : i + size]) for i in range(len(words) - size + 1)]
    return round(1 - len(set(grams)) / len(grams), 4) if grams else 0.0


def repeats_neighbour(text: str, neighbour: str | None) -> bool:
    """The segment says what its neighbour says (the same words, or all of them inside the neighbour's)."""
    if not neighbour:
        return False
    mine, theirs = normalise(text), normalise(neighbour)
    return len(mine.split()) >= NEIGHBOUR_MIN_WORDS and (mine == theirs or f" {mine} " in f" {theirs} ")


@dataclass(frozen=True)
class VadView:
    """What the VAD saw in a chunk: the seconds of it inside speech regions, and its mean frame speech score."""

    speech_seconds: float
    mean_score: float | None = None  # None: the detector gives no scores (silero)


def speech_seconds_within(regions: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """How much of [start, end] the speech regions cover."""
    return sum(max(0.0, min(end, r_end) - max(start, r_start)) for r_start, r_end in regions)


def mean_score_within(scores: np.ndarray, middles: np.ndarray, start: float, end: float) -> float | None:
    """The mean speech score of the frames whose middle lies in [start, end]; None when no frame does."""
    inside = (middles >= start) & (middles <= end)
    return round(float(scores[inside].mean()), 4) if inside.any() else None


def speech_share(view: VadView | None, seconds: float) -> float | None:
    if view is None or seconds <= 0:
        return None
    return round(min(1.0, view.speech_seconds / seconds), 4)


def aligned_score(words: Sequence[dict[str, object]]) -> float | None:
    """The mean alignment score of a segment's scored words (wav2vec2's character probabilities), or None."""
    scores = [float(word["score"]) for word in words if isinstance(word.get("score"), int | float)]  # type: ignore[arg-type]
    return round(sum(scores) / len(scores), 4) if scores else None
