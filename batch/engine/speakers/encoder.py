"""The seam every speaker encoder fits: what it is (name, revision, dimension, normalisation) and `embed`.

A library of voices keeps the identity of the encoder that made its embeddings: two encoders' vectors live in
different spaces, so a library is only ever compared with embeddings of the same identity (batch.run.speakers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

SAMPLE_RATE = 16_000

#: embed() returns unit vectors (L2 norm 1): the cosine of two embeddings is their dot product.
L2 = "l2"


class SpeakerEncoder(Protocol):
    """Speech of one voice in, one vector out.

    name: the model, as a person would name it (`pyannote/WeSpeakerResNet34`); revision: which weights (a digest
    of the weights file, so that the same weights agree wherever they are stored); dimension: the vector's length;
    normalisation: what embed() guarantees of its vectors (L2: unit length, cosine = dot product);
    default_threshold: the cosine at or above which two embeddings are taken as one voice when no library has
    measured its own (batch.engine.speakers.scoring, `speakers calibrate`).
    """

    name: str
    revision: str
    dimension: int
    normalisation: str
    default_threshold: float

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 samples of one voice -> (dimension,) float32 vector, normalised as said."""
        ...


@dataclass(frozen=True)
class EncoderIdentity:
    """What makes two encoders' embeddings comparable: all four must agree."""

    name: str
    revision: str
    dimension: int
    normalisation: str

    @classmethod
    def of(cls, encoder: SpeakerEncoder) -> EncoderIdentity:
        return cls(encoder.name, encoder.revision, int(encoder.dimension), encoder.normalisation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: EncoderIdentity) -> list[str]:
        """`field: mine vs other's` for every field that differs; empty when comparable."""
        return [
            f"{field} {getattr(self, field)!r} vs {getattr(other, field)!r}"
            for field in ("name", "revision", "dimension", "normalisation")
            if getattr(self, field) != getattr(other, field)
        ]


def unit(vector: np.ndarray) -> np.ndarray:
    """`vector` scaled to length 1 (float32); a zero vector stays zero (it matches nothing)."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
