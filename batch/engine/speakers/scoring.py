"""Scoring voices with cosine similarity, numpy only: centroids, same- and different-voice pairs, the equal error
rate, the threshold at a chosen false-name rate, and names that look like one voice.

A pair's score is the cosine of its two embeddings (unit vectors: their dot product). A threshold t names a voice
when its score with a name is at least t: a different-voice pair at or above t is a false name, a same-voice pair
below t a miss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from batch.engine.speakers.encoder import unit


def centroid(embeddings: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """The normalised mean of unit embeddings: one vector that stands for a voice."""
    stacked = np.asarray(embeddings, dtype=np.float32)
    return unit(stacked.mean(axis=0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))


def pair_scores(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(same, different): the cosines of every pair of embeddings of one label, and of every pair of two labels."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = vectors @ vectors.T
    names = np.asarray(labels)
    upper = np.triu(np.ones(scores.shape, dtype=bool), k=1)
    same = names[:, None] == names[None, :]
    return scores[upper & same], scores[upper & ~same]


def false_name_rate(different: np.ndarray, threshold: float) -> float:
    """Share of different-voice pairs scored at or above `threshold` (each would be a wrong name)."""
    return float(np.mean(different >= threshold)) if len(different) else 0.0


def miss_rate(same: np.ndarray, threshold: float) -> float:
    """Share of same-voice pairs scored below `threshold` (each a voice left unnamed)."""
    return float(np.mean(same < threshold)) if len(same) else 0.0


def candidate_thresholds(same: np.ndarray, different: np.ndarray) -> np.ndarray:
    """Every score where a rate can change, and one just above the highest."""
    scores = np.unique(np.concatenate([same, different]).astype(np.float64))
    return np.append(scores, np.nextafter(scores[-1], np.inf)) if len(scores) else np.array([1.0])


def _rates(same: np.ndarray, different: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-name rates, miss rates) at every threshold, from the sorted scores: n log n, not pairs x thresholds
    (a library of 100 people with 10 samples each has half a million pairs)."""
    different, same = np.sort(np.asarray(different, np.float64)), np.sort(np.asarray(same, np.float64))
    at_or_above = len(different) - np.searchsorted(different, thresholds, side="left")
    below = np.searchsorted(same, thresholds, side="left")
    false = at_or_above / len(different) if len(different) else np.zeros(len(thresholds))
    misses = below / len(same) if len(same) else np.zeros(len(thresholds))
    return false, misses


def equal_error_rate(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """(rate, threshold) where the false-name rate and the miss rate meet (the mean of the two where they cross
    between scores): the one-number summary of how well the encoder tells these voices apart."""
    thresholds = candidate_thresholds(same, different)
    false, misses = _rates(same, different, thresholds)
    best = int(np.argmin(np.abs(false - misses)))
    return float((false[best] + misses[best]) / 2), float(thresholds[best])


def threshold_at(different: np.ndarray, rate: float) -> float:
    """The lowest threshold whose false-name rate on these different-voice pairs is at most `rate`."""
    if not len(different):
        raise ValueError("no different-voice pairs: at least two names are needed")
    thresholds = candidate_thresholds(np.array([]), np.asarray(different))
    false, _ = _rates(np.array([]), different, thresholds)
    return float(thresholds[int(np.argmax(false <= rate))])  # the last threshold passes no pair: always one


@dataclass(frozen=True)
class LookAlike:
    """Two names whose centroids score at least the threshold: a voice under two names, or two voices the encoder
    cannot tell apart."""

    first: str
    second: str
    score: float


def look_alike_names(centroids: Mapping[str, np.ndarray], threshold: float) -> list[LookAlike]:
    """Every pair of names whose centroids score at least `threshold`, most alike first."""
    names = sorted(centroids)
    found = [
        LookAlike(a, b, round(cosine(centroids[a], centroids[b]), 4))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if cosine(centroids[a], centroids[b]) >= threshold
    ]
    return sorted(found, key=lambda pair: -pair.score)
