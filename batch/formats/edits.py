"""A person's decisions applied to a transcript: a dropped segment restored, a segment removed, a text edited.

Pure functions of the transcript and the guard's record of what it dropped; no I/O. Each decision names the
segment it was made on by its times and its text, and is refused (EditDoesNotFit) unless the transcript still
holds exactly that: a decision is never applied to another text. A segment is one of the transcript's, or a run
of consecutive ones inside the times given whose joined text is the text given (a VAD chunk the guard judged,
which alignment split into sentences). Times match to the millisecond the outputs are written with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from batch.formats.transcript import Segment, Transcript, build_transcript, has_spaces, join_text

TIME_TOLERANCE = 0.0015  # seconds: times are written rounded to the millisecond

Action = Literal["keep", "remove", "edit"]

LANGUAGE_KEYS = ("language", "language_probability", "other_language")  # what a segment says of its language


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Edit:
    """keep: restore the segment the guard dropped (quality.dropped); remove: take it out; edit: new text."""

    action: Action
    segment: Span
    new_text: str | None = None


class EditDoesNotFit(ValueError):
    """The transcript no longer holds what the decision was made on; the message says what is missing."""


def one_line(text: str) -> str:
    """A text a person typed, as a segment holds text: one line, single spaces (every text format writes a segment
    on one line; TSV and TXT would break on a newline or a tab)."""
    return " ".join(text.split())


def apply_edits(transcript: Transcript, edits: list[Edit], dropped: list[dict[str, Any]]) -> Transcript:
    """A new transcript with every decision applied, or EditDoesNotFit naming the first that does not fit. The
    words of a segment removed or edited leave `word_segments` too; an edited or restored segment has no words
    (its words are not timed: the subtitles share its span among them)."""
    segments = transcript["segments"]
    language = transcript["language"]
    claimed: dict[int, Edit] = {}
    replaced: dict[int, list[Segment]] = {}
    restored: list[Segment] = []
    for edit in edits:
        if edit.action == "keep":
            restored.append(_restored(transcript, edit.segment, dropped))
            continue
        first, last = _find(segments, edit.segment, language)
        for index in range(first, last + 1):
            if index in claimed:
                raise EditDoesNotFit(f"two decisions name the segment at {segments[index]['start']:.3f} s")
            claimed[index] = edit
        replaced[first] = [] if edit.action == "remove" else [_edited(segments[first : last + 1], edit)]
    kept: list[Segment] = []
    for index, segment in enumerate(segments):
        if index in replaced:
            kept += replaced[index]
        elif index not in claimed:
            kept.append(copy.deepcopy(segment))
    for segment in restored:
        at = next((i for i, other in enumerate(kept) if other["start"] > segment["start"]), len(kept))
        kept.insert(at, segment)
    return _rebuilt(transcript, kept)


def _find(segments: list[Segment], span: Span, language: str | None) -> tuple[int, int]:
    """The first and last index of the segments `span` names: one segment at those times with that text, else
    the consecutive segments inside those times whose joined text is that text."""
    wanted = _comparable(span.text, language)
    for index, segment in enumerate(segments):
        if _same_times(segment, span) and _comparable(segment["text"], language) == wanted:
            return index, index
    inside = [index for index, segment in enumerate(segments) if _within(segment, span)]
    for at, first in enumerate(inside):
        for count, last in enumerate(inside[at:]):
            if last != first + count:
                break  # not consecutive: a segment outside the times lies between
            texts = [segments[index]["text"] for index in range(first, last + 1)]
            if _comparable(join_text(texts, language), language) == wanted:
                return first, last
    raise EditDoesNotFit(
        f"no segment {span.start:.3f}-{span.end:.3f} s reading {span.text.strip()!r} in the transcript"
    )


def _restored(transcript: Transcript, span: Span, dropped: list[dict[str, Any]]) -> Segment:
    language = transcript["language"]
    entry = next(
        (
            entry
            for entry in dropped
            if _same_times(entry, span)
            and _comparable(entry.get("text", ""), language) == _comparable(span.text, language)
        ),
        None,
    )
    if entry is None:
        raise EditDoesNotFit(f"no dropped segment {span.start:.3f}-{span.end:.3f} s reading {span.text.strip()!r}")
    for segment in transcript["segments"]:
        if _same_times(segment, span) and _comparable(segment["text"], language) == _comparable(span.text, language):
            raise EditDoesNotFit(f"the dropped segment {span.start:.3f}-{span.end:.3f} s is in the transcript already")
    segment: Segment = {"start": entry["start"], "end": entry["end"], "text": entry["text"]}
    avg_logprob = (entry.get("signals") or {}).get("avg_logprob")
    if avg_logprob is not None:
        segment["avg_logprob"] = avg_logprob
    language = entry.get("language") or transcript.get("language")
    if language:  # as every segment says its language: the subtitles' spans and the turns read it
        segment["language"] = language
    speaker = _speaker_over(transcript.get("speaker_turns", []), entry["start"], entry["end"])
    if speaker is not None:
        segment["speaker"] = speaker
    return segment


def _edited(segments: list[Segment], edit: Edit) -> Segment:
    text = one_line(edit.new_text or "")
    if not text:
        raise EditDoesNotFit("an edit to no text: remove the segment instead")
    segment: Segment = {"start": segments[0]["start"], "end": segments[-1]["end"], "text": text}
    for key in ("speaker", *LANGUAGE_KEYS):  # a person's text keeps who said it and the language it was said in
        if key in segments[0]:
            segment[key] = segments[0][key]  # type: ignore[literal-required]  (a key of Segment, by name)
    return segment


def _speaker_over(turns: list[Any], start: float, end: float) -> str | None:
    """The speaker whose turns cover most of start..end (None: no turns over it)."""
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn["end"]) - max(start, turn["start"])
        if shared > 0:
            overlap[turn["speaker"]] = overlap.get(turn["speaker"], 0.0) + shared
    return max(overlap, key=lambda speaker: overlap[speaker]) if overlap else None


def _rebuilt(transcript: Transcript, segments: list[Segment]) -> Transcript:
    """The transcript around new segments, made as a run makes it (word_segments and speakers from them)."""
    rebuilt = build_transcript(
        transcript["language"],
        transcript["language_probability"],
        transcript["duration"],
        segments,
        transcript.get("speaker_turns"),
        transcript.get("channels"),
    )
    rebuilt["schema_version"] = transcript["schema_version"]
    return rebuilt


def _same_times(segment: Any, span: Span) -> bool:
    return abs(segment["start"] - span.start) <= TIME_TOLERANCE and abs(segment["end"] - span.end) <= TIME_TOLERANCE


def _within(segment: Segment, span: Span) -> bool:
    return segment["start"] >= span.start - TIME_TOLERANCE and segment["end"] <= span.end + TIME_TOLERANCE


def _comparable(text: str, language: str | None) -> str:
    return one_line(text) if has_spaces(language) else "".join(text.split())
