"""The guard over one file's readings: judge each segment, read the judged ones again with the temperature
fallback, then drop (or flag) what still fails and cut loops inside real speech.

`drop`: a hallucinated segment is read again first (unless Whisper itself finds it silent, faster-whisper's rule,
under which reading it hotter would not help); still hallucinated, or read as nothing the second time, it leaves
the transcript and is kept in the file's quality record (times, text, reasons, the signals' figures), so a person
can restore it. A second reading judged sound replaces the first, which is kept in the record too (`replaced`).
`flag`: no text changes; the judgements are recorded (and nothing is read again). A segment of real speech holding
a loop keeps the loop's first occurrence; the cut is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from batch.engine.quality.judge import ALIGNED_SCORE_WEAK, SegmentSignals, Verdict, judge
from batch.engine.quality.phrases import PhraseBag
from batch.engine.quality.signals import (
    VadView,
    aligned_score,
    compression_ratio,
    cut_loop,
    find_loop,
    ngram_repetition,
    repeats_neighbour,
    speech_share,
    words_per_second,
)

Mode = Literal["drop", "flag", "off"]


@dataclass(frozen=True)
class QualityOptions:
    """--hallucinations and --hallucination-phrases. `off` is whisperx's output exactly: nothing is judged."""

    mode: Mode = "off"
    phrases: PhraseBag = field(default_factory=PhraseBag)
    min_speakers: int | None = None  # asked for: a file with fewer is for review

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class Reading:
    """One segment as Whisper read it: its chunk's times, its text and figures, what the VAD saw in it."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float | None = None
    vad: VadView | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


Reread = Callable[[list[int]], list[Reading]]  # indices of readings -> their second readings


@dataclass
class QualityRecord:
    """What the guard did to one file (or channel)."""

    speech_seconds: float = 0.0
    dropped: list[dict[str, Any]] = field(default_factory=list)
    flagged: list[dict[str, Any]] = field(default_factory=list)  # judged hallucinated, kept (--hallucinations flag)
    doubtful: list[dict[str, Any]] = field(default_factory=list)  # kept, but the signals disagree
    cut: list[dict[str, Any]] = field(default_factory=list)  # loops cut to their first occurrence
    replaced: list[dict[str, Any]] = field(default_factory=list)  # first readings a sound second one replaced
    reread: int = 0  # segments read again with the temperature fallback
    recovered: int = 0  # of those, read well the second time (their new text kept)
    guard_error: str | None = None  # the guard broke on this file: its transcript is whisperx's, unguarded
    speech_without_text_seconds: float = 0.0  # no kept text covers: set once the text is final (quality.coverage)

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "speech_seconds": round(self.speech_seconds, 3),
            "dropped": self.dropped,
            "flagged": self.flagged,
            "doubtful": self.doubtful,
            "cut": self.cut,
            "replaced": self.replaced,
            "reread": self.reread,
            "recovered": self.recovered,
            "speech_without_text_seconds": round(self.speech_without_text_seconds, 3),
        }
        if self.guard_error is not None:
            record["guard_error"] = self.guard_error
        return record


def signals_of(reading: Reading, previous: str | None, bag: PhraseBag, language: str | None) -> SegmentSignals:
    text = reading.text.strip()
    speech = reading.vad
    return SegmentSignals(
        text=text,
        seconds=reading.seconds,
        avg_logprob=reading.avg_logprob,
        no_speech_prob=reading.no_speech_prob,
        compression_ratio=compression_ratio(text),
        ngram_repetition=ngram_repetition(text),
        loop=find_loop(text),
        words_per_second=words_per_second(text, reading.seconds),
        speech_share=speech_share(speech, reading.seconds),
        vad_score=speech.mean_score if speech is not None else None,
        known_phrase=bag.matches(text, language),
        repeats_neighbour=repeats_neighbour(text, previous),
    )


def guard(
    readings: Sequence[Reading], options: QualityOptions, language: str | None, reread: Reread
) -> tuple[list[Reading], QualityRecord]:
    """The readings to write (a dropped one with empty text), and the record of what was judged and done."""
    record = QualityRecord(speech_seconds=sum(_speech_seconds(reading) for reading in readings))
    kept = list(readings)
    verdicts = _judged(kept, options, language)
    # Read again what Whisper may have read wrong; not what it says holds no speech (faster-whisper's silence rule).
    suspects = [
        i for i, verdict in enumerate(verdicts) if verdict is not None and verdict.hallucinated and not verdict.silent
    ]
    if suspects and options.mode == "drop":
        record.reread = len(suspects)
        for index, second in zip(suspects, reread(suspects), strict=True):
            kept[index] = second
        again = _judged(kept, options, language)
        for index in suspects:
            first, verdict = verdicts[index], again[index]
            assert first is not None
            if verdict is not None and not verdict.hallucinated:  # read well: the new text, the old on record
                record.recovered += 1
                record.replaced.append({**_entry(readings[index], first), "kept": kept[index].text.strip()})
                verdicts[index] = verdict
            else:  # hallucinated again, or read as nothing (no verdict): the first reading is dropped, on record
                kept[index] = readings[index]
    for index, verdict in enumerate(verdicts):
        if verdict is not None:
            kept[index] = _act(kept[index], verdict, options.mode, record)
    return kept, record


def _judged(readings: Sequence[Reading], options: QualityOptions, language: str | None) -> list[Verdict | None]:
    verdicts: list[Verdict | None] = []
    previous: str | None = None
    for reading in readings:
        text = reading.text.strip()
        verdicts.append(judge(signals_of(reading, previous, options.phrases, language)) if text else None)
        previous = text or previous
    return verdicts


def _entry(reading: Reading, verdict: Verdict) -> dict[str, Any]:
    return {
        "start": round(reading.start, 3),
        "end": round(reading.end, 3),
        "text": reading.text.strip(),
        "reasons": list(verdict.reasons),
        "signals": verdict.figures,
    }


def _act(reading: Reading, verdict: Verdict, mode: Mode, record: QualityRecord) -> Reading:
    entry = _entry(reading, verdict)
    if verdict.hallucinated:
        if mode == "drop":
            record.dropped.append(entry)
            return replace(reading, text="")
        record.flagged.append(entry)
        return reading
    if verdict.review:
        record.doubtful.append(entry)
    if verdict.loop is not None:
        if mode == "flag":  # no text changes: the loop is recorded for a person to see
            if not verdict.review:
                record.doubtful.append(entry)
            return reading
        shorter = cut_loop(reading.text.strip(), verdict.loop)
        record.cut.append({**entry, "kept": shorter})
        return replace(reading, text=shorter)
    return reading


def recheck_aligned(segments: list[dict[str, Any]], quality: dict[str, Any], mode: Mode) -> list[dict[str, Any]]:
    """After alignment, the character scores of the words are one more signal: a sentence that aligns poorly
    (the audio does not carry its text) inside a segment already doubtful (one signal weak or strong) has two
    signals against it, and is dropped (`drop`) or flagged (`flag`). The segments kept; `quality` updated."""
    doubtful = quality["doubtful"]
    kept = []
    for segment in segments:
        score = aligned_score(segment.get("words", []))
        chunk = next((entry for entry in doubtful if _within(segment, entry)), None)
        if chunk is None or score is None or score >= ALIGNED_SCORE_WEAK:
            kept.append(segment)
            continue
        entry = {
            "start": segment["start"],
            "end": segment["end"],
            "text": segment["text"],
            "reasons": [*chunk["reasons"], "poorly_aligned"],
        }
        if mode == "drop":
            quality["dropped"].append(entry)
        else:
            quality["flagged"].append(entry)
            kept.append(segment)
    quality["doubtful"] = [entry for entry in doubtful if any(_within(segment, entry) for segment in kept)]
    quality["dropped"].sort(key=lambda entry: entry["start"])
    return kept


def _within(segment: dict[str, Any], chunk: dict[str, Any]) -> bool:
    """A segment (a sentence once aligned) inside a chunk's span, to the millisecond its times are rounded to."""
    return chunk["start"] - 1e-3 <= segment["start"] and segment["end"] <= chunk["end"] + 1e-3


def _speech_seconds(reading: Reading) -> float:
    if reading.vad is None:
        return reading.seconds
    return reading.vad.speech_seconds


def merge_records(records: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One file's record from its channels' (--channels split), entries in time order."""
    present = [record for record in records if record is not None]
    if not present:
        return None
    merged: dict[str, Any] = {
        name: round(sum(r[name] for r in present), 3) for name in ("speech_seconds", "speech_without_text_seconds")
    }
    for name in ("dropped", "flagged", "doubtful", "cut", "replaced"):
        merged[name] = sorted((entry for r in present for entry in r[name]), key=lambda entry: entry["start"])
    for name in ("reread", "recovered"):
        merged[name] = sum(r[name] for r in present)
    errors = sorted({r["guard_error"] for r in present if r.get("guard_error")})
    if errors:
        merged["guard_error"] = "; ".join(errors)
    return merged
