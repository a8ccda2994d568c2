"""`speakers calibrate`: the library's threshold measured on its own samples, and names that look like one voice.

Every pair of samples of one name is a same-voice pair, every pair of two names a different-voice pair. The threshold
kept is the lowest score whose false-name rate on the different-voice pairs is at most the rate asked for: at that
threshold, about that share of voices that are not a name would be given it. The equal error rate says how well the
encoder tells these voices apart at all. Two names are reported as one voice when their centroids score at least the
threshold, or at least the median same-voice score (a voice enrolled twice raises the threshold past itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from batch.engine.speakers.scoring import (
    LookAlike,
    equal_error_rate,
    look_alike_names,
    miss_rate,
    pair_scores,
    threshold_at,
)
from batch.run.speakers.library import Library, LibraryProblem, Threshold
from batch.run.speakers.store import LibraryPlace

DEFAULT_FALSE_NAME_RATE = 0.01


@dataclass(frozen=True)
class Calibration:
    threshold: Threshold
    miss_rate: float  # share of same-voice pairs under the threshold: voices that would stay unnamed
    look_alikes: list[LookAlike] = field(default_factory=list)
    version: str = ""  # the library's version once the threshold is stored

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": dict(vars(self.threshold)),
            "miss_rate": self.miss_rate,
            "look_alike_names": [dict(vars(pair)) for pair in self.look_alikes],
            "version": self.version,
        }


def measure(library: Library, false_name_rate: float) -> Calibration:
    """The threshold and figures for `library`; LibraryProblem when its samples cannot give them."""
    if not 0 <= false_name_rate < 1:
        raise LibraryProblem(f"false-name rate {false_name_rate}: give a share between 0 and 1 (0.01 is 1 %)")
    labels = [name for name, samples in library.names.items() for _ in samples]
    if len(library.names) < 2:
        raise LibraryProblem("calibrating needs at least two names (different-voice pairs)")
    embeddings = np.stack([sample.embedding for samples in library.names.values() for sample in samples])
    same, different = pair_scores(embeddings, labels)
    if not len(same):
        raise LibraryProblem("calibrating needs a name with at least two samples (same-voice pairs)")
    cosine = round(threshold_at(different, false_name_rate), 4)
    eer, eer_threshold = equal_error_rate(same, different)
    threshold = Threshold(
        cosine=cosine,
        false_name_rate=false_name_rate,
        equal_error_rate=round(eer, 4),
        equal_error_threshold=round(eer_threshold, 4),
        same_pairs=int(len(same)),
        different_pairs=int(len(different)),
        samples_digest=library.samples_digest(),
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    # Two names of one voice put same-voice pairs among the different-voice ones and so push the threshold up past
    # their own score: names are also flagged when their centroids are as alike as a name's own samples typically are.
    look_alike_floor = min(cosine, float(np.median(same)))
    look_alikes = look_alike_names(library.centroids(), look_alike_floor)
    return Calibration(threshold, round(miss_rate(same, cosine), 4), look_alikes)


def calibrate(place: LibraryPlace, false_name_rate: float = DEFAULT_FALSE_NAME_RATE) -> Calibration:
    """Measure the library at `place` and store its threshold (measured again if it changed meanwhile)."""

    def store(library: Library) -> tuple[Library, Calibration]:
        calibration = measure(library, false_name_rate)
        updated = Library(library.encoder, library.names, calibration.threshold)
        return updated, Calibration(
            calibration.threshold, calibration.miss_rate, calibration.look_alikes, updated.version
        )

    return place.update(store)
