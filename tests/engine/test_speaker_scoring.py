"""The speaker scoring's pure functions on made-up vectors: pairs, equal error rate, thresholds, look-alike names."""

from __future__ import annotations

import numpy as np
import pytest

from batch.engine.speakers.scoring import (
    centroid,
    equal_error_rate,
    false_name_rate,
    look_alike_names,
    miss_rate,
    pair_scores,
    threshold_at,
)


def test_pairs_split_by_label() -> None:
    vectors = np.eye(3, dtype=np.float32)[[0, 0, 1]]
    same, different = pair_scores(vectors, ["a", "a", "b"])
    assert same.tolist() == [1.0] and different.tolist() == [0.0, 0.0]


def test_equal_error_rate_of_separable_scores_is_zero_between_them() -> None:
    rate, threshold = equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.3]))
    assert rate == 0.0 and 0.3 < threshold <= 0.8


def test_equal_error_rate_of_overlapping_scores() -> None:
    same, different = np.array([0.5, 0.7, 0.9, 0.95]), np.array([0.1, 0.2, 0.6, 0.3])
    rate, threshold = equal_error_rate(same, different)
    assert rate == pytest.approx(0.25) and np.isfinite(threshold)
    assert false_name_rate(different, threshold) == pytest.approx(miss_rate(same, threshold))


def test_threshold_at_a_false_name_rate() -> None:
    different = np.linspace(0.0, 0.99, 100)
    assert false_name_rate(different, threshold_at(different, 0.01)) <= 0.01
    assert false_name_rate(different, threshold_at(different, 0.0)) == 0.0
    assert threshold_at(different, 0.05) < threshold_at(different, 0.01)  # a lower rate asks a higher score
    with pytest.raises(ValueError):
        threshold_at(np.array([]), 0.01)


def test_centroid_is_a_unit_vector_and_look_alikes_are_found() -> None:
    rng = np.random.default_rng(0)
    voice = rng.standard_normal(16)
    other = rng.standard_normal(16)
    centroids = {
        "ann": centroid([voice / np.linalg.norm(voice)] * 2),
        "anne": centroid([(voice + 0.01 * other) / np.linalg.norm(voice)]),
        "bob": centroid([other / np.linalg.norm(other)]),
    }
    assert np.linalg.norm(centroids["ann"]) == pytest.approx(1.0, abs=1e-6)
    pairs = look_alike_names(centroids, 0.9)
    assert [(pair.first, pair.second) for pair in pairs] == [("ann", "anne")]


def test_the_rates_from_sorted_scores_are_those_of_every_pair_counted() -> None:
    """The equal error rate and the threshold at a rate come from sorted scores (a library of 100 people has half
    a million pairs); they are the very figures that counting every pair at every threshold gives."""
    import numpy as np

    from batch.engine.speakers import scoring

    rng = np.random.default_rng(7)
    same, different = rng.normal(0.7, 0.1, 60), np.round(rng.normal(0.4, 0.15, 400), 2)  # ties, as real scores have
    thresholds = scoring.candidate_thresholds(same, different)
    false = np.array([scoring.false_name_rate(different, t) for t in thresholds])
    misses = np.array([scoring.miss_rate(same, t) for t in thresholds])
    best = int(np.argmin(np.abs(false - misses)))
    assert scoring.equal_error_rate(same, different) == (
        float((false[best] + misses[best]) / 2),
        float(thresholds[best]),
    )
    for rate in (0.0, 0.01, 0.1, 0.5):
        counted = next(
            t
            for t in scoring.candidate_thresholds(np.array([]), different)
            if scoring.false_name_rate(different, t) <= rate
        )
        assert scoring.threshold_at(different, rate) == float(counted)
