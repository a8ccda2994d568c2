"""Speech that left no text: the seconds of the VAD's speech that no kept text covers.

A call whose caller spoke a language the model cannot read (Spanish to tiny.en), or whose words the guard dropped
as invented, comes out with an empty transcript: the speech is gone without a trace unless someone looks. So each
file counts the seconds of its VAD speech regions overlapped by no kept segment, once its text is final (after
the guard dropped what it dropped; with alignment a segment is a sentence timed by its words, else a VAD chunk).

Every second the VAD took for speech counts, whatever Whisper thought of it: its no-speech probability does not
tell a language it cannot read from music (tiny.en on espeak-ng callers in Spanish, German, French, Italian and
Portuguese: 0.41 to 0.76; on music, sweeps and buzzing the VAD took for speech: 0.67 to 0.87), and a call that
vanished costs more than a look at hold music. A recording in which the VAD found no speech at all is
`no_speech_found` instead.

A file is for review when the speech without text is both long and a large share of the file's speech: at least
`SPEECH_WITHOUT_TEXT_MIN_SECONDS` (a sentence: a laugh or a cough the VAD takes for speech is shorter) and at least
`SPEECH_WITHOUT_TEXT_MIN_SHARE` of it. So a call whose 8 s of speech left an empty transcript is, and so is one
where the agent's English was written and the caller's Spanish was not; an hour's meeting where a stretch of
laughter left no text is not.

Plain values in and out: (start, end) spans in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPEECH_WITHOUT_TEXT_MIN_SECONDS = 3.0
SPEECH_WITHOUT_TEXT_MIN_SHARE = 0.3

Span = tuple[float, float]


def speech_without_text(speech: Iterable[Span], kept: Iterable[Span]) -> float:
    """The seconds of the `speech` regions (the VAD's) that no `kept` span (a kept segment's) overlaps."""
    return _length(_subtract(_union(speech), _union(kept)))


def speech_left_no_text(speech_without_text_seconds: float, speech_seconds: float) -> bool:
    """The rule for review: long enough, and a large enough share of the file's speech."""
    if speech_seconds <= 0 or speech_without_text_seconds < SPEECH_WITHOUT_TEXT_MIN_SECONDS:
        return False
    return speech_without_text_seconds / speech_seconds >= SPEECH_WITHOUT_TEXT_MIN_SHARE


def _union(spans: Iterable[Span]) -> list[Span]:
    """The spans merged into disjoint ones in time order (empty ones left out)."""
    merged: list[Span] = []
    for start, end in sorted(span for span in spans if span[1] > span[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _subtract(spans: Sequence[Span], holes: Sequence[Span]) -> list[Span]:
    """The parts of disjoint, ordered `spans` outside disjoint, ordered `holes`."""
    left: list[Span] = []
    for start, end in spans:
        for hole_start, hole_end in holes:
            if hole_end <= start or hole_start >= end:
                continue
            if hole_start > start:
                left.append((start, hole_start))
            start = hole_end
            if start >= end:
                break
        if start < end:
            left.append((start, end))
    return left


def _length(spans: Iterable[Span]) -> float:
    return sum((end - start for start, end in spans), 0.0)
