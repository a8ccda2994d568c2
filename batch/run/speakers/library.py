"""The speaker library file: one JSON document, readable and diffable, that a folder or S3 holds whole.

{"format": "whisperx-batch speaker library", "schema": 1, "version": "sha256:…",
 "encoder": {name, revision, dimension, normalisation},
 "threshold": null | {cosine, false_name_rate, equal_error_rate, equal_error_threshold, same_pairs,
                      different_pairs, samples_digest, calibrated_at},
 "names": {NAME: {"centroid": [...], "samples": [{source, audio_sha256, seconds, speech_seconds, added_at,
                                                  embedding: [...]}]}}}

One file (not JSON beside a .npy) so that one conditional write changes the whole library at once: two files
could be read between their two writes. Each vector is written on one line, as the shortest decimals that give back
its float32 values, so a diff shows which samples and names changed. `version` is a digest of everything else: it
changes whenever the library changes (a sample, a name, the threshold), and only then.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from batch.common.errors import EXIT_USAGE, BatchError
from batch.engine.speakers.encoder import EncoderIdentity
from batch.engine.speakers.scoring import centroid

FORMAT = "whisperx-batch speaker library"
SCHEMA = 1


class LibraryProblem(BatchError):
    """A library that cannot be used: damaged, not a library, of another encoder, or a name it does not hold."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Sample:
    source: str  # where the audio came from, as given (a path, an s3:// URL)
    audio_sha256: str  # the audio file's bytes: the same file is not enrolled twice under one name
    seconds: float
    speech_seconds: float
    added_at: str
    embedding: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Threshold:
    """What `speakers calibrate` measured on the library's own samples."""

    cosine: float  # names a voice at or above this score
    false_name_rate: float  # the rate asked for
    equal_error_rate: float
    equal_error_threshold: float
    same_pairs: int
    different_pairs: int
    samples_digest: str  # the samples it was measured on: another set calls for calibrating again
    calibrated_at: str


@dataclass(frozen=True)
class Library:
    encoder: EncoderIdentity
    names: dict[str, tuple[Sample, ...]] = field(default_factory=dict)
    threshold: Threshold | None = None

    def centroid(self, name: str) -> np.ndarray:
        return centroid([sample.embedding for sample in self.names[name]])

    def centroids(self) -> dict[str, np.ndarray]:
        """Each name's centroid (normalised mean of its samples): what a voice is matched against."""
        return {name: self.centroid(name) for name in self.names}

    @property
    def version(self) -> str:
        return version_of(self.content())

    def samples_digest(self) -> str:
        return version_of({"names": self.content()["names"]})

    def calibration_is_current(self) -> bool:
        return self.threshold is not None and self.threshold.samples_digest == self.samples_digest()

    def naming_threshold(self, default: float) -> float:
        """The calibrated threshold when there is one, else `default` (the encoder's)."""
        return self.threshold.cosine if self.threshold is not None else default

    def with_samples(self, name: str, samples: Iterable[Sample]) -> Library:
        names = dict(self.names)
        names[name] = (*names.get(name, ()), *samples)
        return replace(self, names=names)

    def without(self, name: str, source: str | None = None) -> tuple[Library, int]:
        """The library less `name` (or only its samples from `source`), and how many samples went."""
        if name not in self.names:
            raise LibraryProblem(f"no name {name!r} in the library (names: {', '.join(sorted(self.names)) or 'none'})")
        kept = tuple(sample for sample in self.names[name] if source is not None and sample.source != source)
        removed = len(self.names[name]) - len(kept)
        if source is not None and removed == 0:
            raise LibraryProblem(f"{name!r} has no sample from {source!r}")
        names = {key: value for key, value in self.names.items() if key != name}
        if kept:
            names[name] = kept
        return replace(self, names=names), removed

    def content(self) -> dict[str, Any]:
        """Everything but the version, as written (vectors as lists of float32 values)."""
        return {
            "format": FORMAT,
            "schema": SCHEMA,
            "encoder": self.encoder.to_dict(),
            "threshold": None if self.threshold is None else dict(vars(self.threshold)),
            "names": {
                name: {
                    "centroid": vector_list(self.centroid(name)),
                    "samples": [sample_dict(sample) for sample in samples],
                }
                for name, samples in sorted(self.names.items())
            },
        }

    def encode(self) -> bytes:
        return encode_document({"version": self.version, **self.content()})


def vector_list(vector: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that give them back (0.12345679, not 0.12345679104328156)."""
    return [float(str(value)) for value in np.asarray(vector, dtype=np.float32)]


def sample_dict(sample: Sample) -> dict[str, Any]:
    fields = {key: value for key, value in vars(sample).items() if key != "embedding"}
    return {**fields, "embedding": vector_list(sample.embedding)}


def version_of(content: dict[str, Any]) -> str:
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_document(document: dict[str, Any]) -> bytes:
    """Indented JSON with each vector on one line."""
    vectors: list[list[float]] = []

    def hold(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: (hold_vector(item) if key in ("centroid", "embedding") else hold(item))
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [hold(item) for item in value]
        return value

    def hold_vector(vector: list[float]) -> str:
        vectors.append(vector)
        return f"\0vector{len(vectors) - 1}\0"

    text = json.dumps(hold(document), indent=2, ensure_ascii=False)
    text = _HELD.sub(lambda match: json.dumps(vectors[int(match[1])], separators=(",", ":")), text)
    return (text + "\n").encode()


_HELD = re.compile(r'"\\u0000vector(\d+)\\u0000"')


def empty_library(encoder: EncoderIdentity) -> Library:
    return Library(encoder)


def decode_library(data: bytes, where: str) -> Library:
    """The library `data` holds; LibraryProblem, naming `where` and what is wrong, for anything else."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LibraryProblem(f"{where} is damaged: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise LibraryProblem(f'{where} is not a speaker library (no "format": {FORMAT!r})')
    if document.get("schema") != SCHEMA:
        raise LibraryProblem(f"{where}: schema {document.get('schema')!r}, this version reads schema {SCHEMA}")
    try:
        return _library(document)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise LibraryProblem(f"{where} is damaged: {type(exc).__name__} {exc}") from None


def _library(document: dict[str, Any]) -> Library:
    raw = document["encoder"]
    encoder = EncoderIdentity(str(raw["name"]), str(raw["revision"]), int(raw["dimension"]), str(raw["normalisation"]))
    names: dict[str, tuple[Sample, ...]] = {}
    for name, entry in document["names"].items():
        samples = tuple(_sample(item, encoder.dimension, name) for item in entry["samples"])
        if not samples:
            raise ValueError(f"{name!r} has no samples")
        names[str(name)] = samples
    threshold = document.get("threshold")
    return Library(encoder, names, Threshold(**threshold) if threshold is not None else None)


def _sample(item: dict[str, Any], dimension: int, name: str) -> Sample:
    embedding = np.asarray(item["embedding"], dtype=np.float32)
    if embedding.shape != (dimension,) or not np.all(np.isfinite(embedding)):
        raise ValueError(f"a sample of {name!r} has an embedding of shape {embedding.shape}, not ({dimension},) finite")
    seconds, speech = float(item["seconds"]), float(item["speech_seconds"])
    if not (math.isfinite(seconds) and math.isfinite(speech)):
        raise ValueError(f"a sample of {name!r} has no finite duration")
    return Sample(str(item["source"]), str(item["audio_sha256"]), seconds, speech, str(item["added_at"]), embedding)


def refuse_another_encoder(library: Library, encoder: EncoderIdentity, where: str) -> None:
    """Embeddings of two encoders are not comparable: a library made by another one is refused, before any work."""
    differences = library.encoder.differences(encoder)
    if differences:
        raise LibraryProblem(
            f"{where} was made with another speaker encoder ({'; '.join(differences)}, library vs this run's): "
            "its voices cannot be compared with this encoder's. Use the encoder it was made with, or enrol the "
            "voices again into a new library"
        )
