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
