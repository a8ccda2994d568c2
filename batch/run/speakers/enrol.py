"""Enrolling voices: each sample decoded with the run's own decoder, its speech found by the run's VAD, judged
(batch.engine.speakers.samples) and, when it can stand for one voice, its embedding added under the name."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from batch.common.errors import AudioDecodeError, AudioTooLong
from batch.engine.audio import decode
from batch.engine.speakers.encoder import EncoderIdentity, SpeakerEncoder
from batch.engine.speakers.samples import check_sample
from batch.engine.vad.speech import SpeechDetector, VadOptions, load_vad
from batch.run.speakers.library import Library, LibraryProblem, Sample, refuse_another_encoder
from batch.run.speakers.store import LibraryPlace

log = logging.getLogger(__name__)

#: The VAD's regions joined into pieces of at most this length (VadOptions.chunk_size): a gap inside a piece is
#: shorter still, so the speech an embedding is made of holds little silence.
SPEECH_PIECE_SECONDS = 1.0
#: A sample longer than this is refused before it is decoded whole: an enrolment sample is seconds to minutes of
#: one voice, not a recording of a meeting.
MAX_SAMPLE_SECONDS = 600.0
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".wma", ".webm", ".mp4"})


@dataclass(frozen=True)
class SampleOutcome:
    name: str
    source: str
    status: str  # enrolled | already_enrolled | refused
    reason: str | None = None
    seconds: float | None = None
    speech_seconds: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def enrolment_vad(device: str) -> SpeechDetector:
    return load_vad(VadOptions(chunk_size=SPEECH_PIECE_SECONDS), device)


def folder_samples(folder: Path) -> list[tuple[str, Path]]:
    """(name, file) for every audio file of FOLDER/NAME/, names and files in order."""
    if not folder.is_dir():
        raise LibraryProblem(f"{folder} is not a folder (expected FOLDER/NAME/*.wav)")
    found = [
        (person.name, audio)
        for person in sorted(folder.iterdir())
        if person.is_dir() and not person.name.startswith(".")
        for audio in sorted(person.iterdir())
        if audio.is_file() and audio.suffix.lower() in AUDIO_SUFFIXES
    ]
    if not found:
        raise LibraryProblem(f"{folder} holds no FOLDER/NAME/ audio files")
    return found


class Enroller:
    """Turns audio files into library samples with one encoder and one VAD."""

    def __init__(self, encoder: SpeakerEncoder, detector: SpeechDetector):
        self.encoder = encoder
        self.detector = detector
        self.identity = EncoderIdentity.of(encoder)

    def enrol(self, place: LibraryPlace, samples: Sequence[tuple[str, Path]]) -> list[SampleOutcome]:
        """Judge every (name, file) and add the accepted ones to the library at `place`, refused ones left out with
        their reason. A library of another encoder is refused before any file is read."""
        for name, _ in samples:
            check_name(name)
        found = place.read()
        threshold = self.encoder.default_threshold
        if found is not None:
            refuse_another_encoder(found[0], self.identity, place.location)
            threshold = found[0].naming_threshold(threshold)
        judged = [self.judge(name, path, threshold) for name, path in samples]
        accepted = [(outcome, sample) for outcome, sample in judged if sample is not None]

        def add(library: Library) -> tuple[Library, list[SampleOutcome]]:
            outcomes = [outcome for outcome, _ in judged]
            for index, (outcome, sample) in enumerate(judged):
                if sample is None:
                    continue
                if any(have.audio_sha256 == sample.audio_sha256 for have in library.names.get(outcome.name, ())):
                    outcomes[index] = SampleOutcome(outcome.name, outcome.source, "already_enrolled")
                    continue
                library = library.with_samples(outcome.name, [sample])
            return library, outcomes

        if not accepted:
            return [outcome for outcome, _ in judged]
        return place.update(add, self.identity)

    def judge(self, name: str, path: Path, threshold: float) -> tuple[SampleOutcome, Sample | None]:
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return SampleOutcome(name, source, "refused", f"cannot be read: {exc.strerror or exc}"), None
        try:
            audio = decode(io.BytesIO(data), max_seconds=MAX_SAMPLE_SECONDS)
        except (AudioDecodeError, AudioTooLong) as exc:
            return SampleOutcome(name, source, "refused", str(exc)), None
        spans = [(chunk.start, chunk.end) for chunk in self.detector.speech_chunks(audio)]
        check = check_sample(audio, spans, self.encoder, threshold)
        outcome = SampleOutcome(name, source, "enrolled", check.reason, check.seconds, check.speech_seconds)
        if check.embedding is None:
            log.info("%s: refused for %s: %s", source, name, check.reason)
            return SampleOutcome(name, source, "refused", check.reason, check.seconds, check.speech_seconds), None
        sample = Sample(
            source,
            hashlib.sha256(data).hexdigest(),
            check.seconds,
            check.speech_seconds,
            datetime.now(UTC).isoformat(timespec="seconds"),
            check.embedding,
        )
        return outcome, sample


def check_name(name: str) -> None:
    if not name.strip() or name != name.strip() or any(ord(char) < 32 for char in name):
        raise LibraryProblem(f"{name!r} is not a name: no leading or trailing spaces, no control characters")


def enrolled(outcomes: Iterable[SampleOutcome]) -> int:
    return sum(outcome.status == "enrolled" for outcome in outcomes)
