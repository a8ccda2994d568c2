"""The language of each speech chunk: Whisper's own detection, run on the encoder output the ASR decodes from.

Whisper detects a language per 30 s window; each ASR chunk (up to 30 s of one file's speech) is such a window, so
each gets its own language, and a file that switches from English to Spanish is read in English, then in Spanish.
What is done with the detection is a `LanguageRule`:
- `--language auto` (every language the model knows) or `--languages en,es,de` (those only): each chunk is read in
  its likeliest language (code-switching), never translated;
- `--language X` (forced): each chunk is read as X, unless it is detected with at least OTHER_LANGUAGE_PROBABILITY in
  another language: then it is flagged (`other_language`) and, with `--other-languages transcribe` (the default), read
  in its own language, so that the record says what was said in the words said; with `flag`, read as X all the same.
No rule (no detection) where it cannot change anything: an English-only model, `--task translate` (English text on
purpose, the file's language found once as before), or a single language to choose from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

# A chunk is taken for another language than the forced one when Whisper gives that language at least this
# probability (over every language it knows). Above one half the other language is likelier than every other
# language together, the forced one included; 0.5 is also the level below which a file's detected language is a
# reason for review (quality.summary.LOW_LANGUAGE_PROBABILITY). Measured on short segments: docs/languages.md.
OTHER_LANGUAGE_PROBABILITY = 0.5

OtherLanguages = Literal["transcribe", "flag"]

# The keys a segment carries from the detection of the chunk it came from.
SEGMENT_LANGUAGE_KEYS = ("language", "language_probability", "other_language")


@dataclass(frozen=True)
class Detected:
    """What a chunk is read in (`language`, with Whisper's probability for it), and the other language it was
    detected in with confidence when a forced language was asked for (`other`: code and probability)."""

    language: str
    probability: float
    other: tuple[str, float] | None = None


@dataclass(frozen=True)
class LanguageRule:
    """How a chunk's language is chosen from Whisper's guesses: `forced` (with the other-language check), or the
    likeliest of `among` (every language when empty)."""

    forced: str | None = None
    among: tuple[str, ...] = ()
    other_languages: OtherLanguages = "transcribe"

    def choose(self, guesses: Sequence[tuple[str, float]]) -> Detected:
        """`guesses`: (code, probability), likeliest first, as CTranslate2's detect_language gives them."""
        probabilities = {code: round(float(probability), 4) for code, probability in guesses}
        if self.forced is None:
            code = next(code for code, _ in guesses if not self.among or code in self.among)
            return Detected(code, probabilities[code])
        top, probability = guesses[0][0], probabilities[guesses[0][0]]
        forced = Detected(self.forced, probabilities.get(self.forced, 0.0))
        if top == self.forced or probability < OTHER_LANGUAGE_PROBABILITY:
            return forced
        read_in = top if self.other_languages == "transcribe" else self.forced
        return Detected(read_in, probabilities.get(read_in, 0.0), (top, probability))


def language_rule(
    language: str, languages: tuple[str, ...], other_languages: OtherLanguages, task: str, multilingual: bool
) -> LanguageRule | None:
    """The rule for each chunk, or None where a detection per chunk could change nothing."""
    if not multilingual or task != "transcribe" or len(languages) == 1:
        return None
    if language != "auto":
        return LanguageRule(forced=language, other_languages=other_languages)
    return LanguageRule(among=languages)


def segment_language(detected: Detected) -> dict[str, Any]:
    """A segment's language fields from its chunk's detection."""
    fields: dict[str, Any] = {"language": detected.language, "language_probability": detected.probability}
    if detected.other is not None:
        fields["other_language"] = {"language": detected.other[0], "probability": detected.other[1]}
    return fields


def spoken_languages(segments: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds of segments per language they are written in, most first."""
    seconds: dict[str, float] = {}
    for segment in segments:
        if segment.get("language"):
            seconds[segment["language"]] = seconds.get(segment["language"], 0.0) + segment["end"] - segment["start"]
    ranked = sorted(seconds.items(), key=lambda item: -item[1])
    return {code: round(value, 3) for code, value in ranked}


def main_language(segments: Sequence[dict[str, Any]]) -> tuple[str | None, float | None]:
    """The language spoken most (by seconds of segments), with its segments' probability weighted by their seconds;
    (None, None) without a segment that has a language."""
    seconds = spoken_languages(segments)
    if not seconds:
        return None, None
    language = next(iter(seconds))
    weighted = [
        (segment["end"] - segment["start"], segment["language_probability"])
        for segment in segments
        if segment.get("language") == language and segment.get("language_probability") is not None
    ]
    total = sum(weight for weight, _ in weighted)
    if not weighted:
        return language, None
    if total <= 0:
        return language, round(sum(p for _, p in weighted) / len(weighted), 4)
    return language, round(sum(weight * p for weight, p in weighted) / total, 4)


def carry_languages(aligned: list[dict[str, Any]], sources: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The language fields of each source segment put back on the aligned segments cut from it (alignment keeps
    only times, text and scores): the source whose span holds the aligned segment's middle, else the nearest."""
    if not sources:
        return aligned
    labelled = []
    for segment in aligned:
        middle = (segment["start"] + segment["end"]) / 2
        source = min(sources, key=lambda s: 0.0 if s["start"] <= middle <= s["end"] else abs(s["start"] - middle))
        fields = {key: source[key] for key in SEGMENT_LANGUAGE_KEYS if key in source}
        labelled.append({**segment, **fields})
    return labelled
