"""A file's quality summary, for its manifest: whether a person should look at it, and why.

`review` is true when text remains where the signals disagree, when hallucinations were kept (`flag`), when the
language was found with a low probability, when the VAD found no speech at all, when speech left no text (long,
and much of the file's: batch.engine.quality.coverage), when diarization found fewer speakers than asked for, when
aligned words fit the audio poorly, or when the guard itself broke on the file (its transcript is then whisperx's,
unguarded); `reasons` names each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from batch.engine.quality.coverage import speech_left_no_text
from batch.engine.quality.judge import ALIGNED_SCORE_WEAK
from batch.engine.quality.signals import aligned_score

LOW_LANGUAGE_PROBABILITY = 0.5


def confidence(segments: Sequence[dict[str, Any]]) -> float | None:
    """exp of the segments' mean log-probability per token, weighted by their characters: the model's own
    figure (the geometric mean of its tokens' probabilities), in (0, 1]; None without a segment that has one."""
    weighted = [(len(s["text"]), s["avg_logprob"]) for s in segments if s.get("avg_logprob") is not None]
    characters = sum(weight for weight, _ in weighted)
    if not characters:
        return None
    return round(math.exp(sum(weight * value for weight, value in weighted) / characters), 3)


def summarize(
    record: dict[str, Any],
    segments: Sequence[dict[str, Any]],
    language: str | None,
    language_probability: float | None,
    speakers: int | None = None,
    min_speakers: int | None = None,
) -> dict[str, Any]:
    reasons = []
    if record.get("guard_error"):
        reasons.append("guard_failed")
    if record["doubtful"]:
        reasons.append("signals_disagree")
    if record["flagged"]:
        reasons.append("hallucinations_kept")
    if language_probability is not None and language_probability < LOW_LANGUAGE_PROBABILITY:
        reasons.append("low_language_probability")
    if record["speech_seconds"] <= 0:
        reasons.append("no_speech_found")
    if speech_left_no_text(record["speech_without_text_seconds"], record["speech_seconds"]):
        reasons.append("speech_without_text")
    if any("other_language" in segment for segment in segments):  # detected in another language than the forced one
        reasons.append("other_language")
    if min_speakers is not None and speakers is not None and speakers < min_speakers:
        reasons.append("fewer_speakers_than_asked")
    scores = [aligned_score(segment.get("words", [])) for segment in segments]
    if any(score is not None and score < ALIGNED_SCORE_WEAK for score in scores):
        reasons.append("text_poorly_aligned")
    return {
        "review": bool(reasons),
        "reasons": reasons,
        "dropped": record["dropped"],
        "speech_seconds": record["speech_seconds"],
        "speech_without_text_seconds": record["speech_without_text_seconds"],
        "language": language,
        "language_probability": language_probability,
        "confidence": confidence(segments),
        "segments": len(segments),
        **{name: record[name] for name in ("flagged", "doubtful", "cut", "reread", "recovered")},
        "replaced": record.get("replaced", []),
        **({"guard_error": record["guard_error"]} if record.get("guard_error") else {}),
    }
