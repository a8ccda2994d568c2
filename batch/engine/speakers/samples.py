"""Whether an enrolment sample can stand for one voice, and its embedding when it can.

A sample is refused, with the reason, when it is
- too short: under MIN_SPEECH_SECONDS of audio;
- silent, or nearly: the VAD finds under MIN_SPEECH_SECONDS of speech in it;
- two voices: its speech, cut into windows and split into the two groups that differ most, gives two groups whose
  embeddings score below the two-voice threshold (the naming threshold less TWO_VOICES_MARGIN).
The embedding is made of the speech alone (the VAD's spans), so pauses and room noise do not shape the voice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batch.engine.speakers.encoder import SAMPLE_RATE, SpeakerEncoder
from batch.engine.speakers.scoring import centroid, cosine

#: Under 3 s of speech a speaker embedding is unreliable: WeSpeaker is trained on 2-3 s crops and VoxCeleb's
#: test utterances are 4 s and longer; managed services ask for more (Speechmatics 5-30 s, pyannoteAI up to 30 s).
MIN_SPEECH_SECONDS = 3.0
#: Speech is cut into windows of about this length to look for a second voice: long enough for each window's
#: embedding to say whose voice it is, short enough for a turn of a second speaker to fill one.
WINDOW_SECONDS = 2.0
#: At most this many windows: enough to find a second voice that speaks a sixth of the sample.
MAX_WINDOWS = 6
#: Windows are shorter than whole samples, so their scores spread more for one voice: the two-voice test refuses
#: only below the naming threshold less this margin. Measured with Resemblyzer (threshold 0.88) on 5 s samples cut in
#: two windows: one voice's windows 0.75-0.87 (pyannote's sample.wav, espeak-ng), a person then an espeak voice
#: about 0.5; whole samples of one person 0.93-0.95, of the sample's two people 0.80-0.84.
TWO_VOICES_MARGIN = 0.15


@dataclass(frozen=True)
class SampleCheck:
    """An accepted sample's embedding and speech seconds, or the reason it is refused (embedding None)."""

    seconds: float
    speech_seconds: float
    embedding: np.ndarray | None = None
    reason: str | None = None
    two_voice_score: float | None = None  # the least alike two groups of windows scored this (None: not tested)

    @property
    def accepted(self) -> bool:
        return self.embedding is not None


def speech_of(audio: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """The samples of `audio` inside `spans` (seconds), joined in time order."""
    pieces = [audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] for start, end in sorted(spans)]
    pieces = [piece for piece in pieces if len(piece)]
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, dtype=np.float32)


def check_sample(
    audio: np.ndarray, spans: Sequence[tuple[float, float]], encoder: SpeakerEncoder, threshold: float
) -> SampleCheck:
    """Judge one sample: `audio` 16 kHz mono float32, `spans` where the VAD found speech, `threshold` the naming
    threshold in force (the library's calibrated one, else the encoder's default)."""
    seconds = round(len(audio) / SAMPLE_RATE, 3)
    if seconds < MIN_SPEECH_SECONDS:
        return SampleCheck(seconds, 0.0, reason=f"too short: {seconds:.1f} s, at least {MIN_SPEECH_SECONDS:g} s needed")
    speech = speech_of(audio, spans)
    speech_seconds = round(len(speech) / SAMPLE_RATE, 3)
    if speech_seconds < MIN_SPEECH_SECONDS:
        said = "silent" if speech_seconds == 0 else f"too little speech: {speech_seconds:.1f} s"
        return SampleCheck(
            seconds, speech_seconds, reason=f"{said} in {seconds:.1f} s (at least {MIN_SPEECH_SECONDS:g} s of speech)"
        )
    score = two_voice_score(speech, encoder)
    floor = threshold - TWO_VOICES_MARGIN
    if score is not None and score < floor:
        return SampleCheck(
            seconds,
            speech_seconds,
            reason=f"two voices: parts of it score {score:.2f} against each other, under {floor:.2f}",
            two_voice_score=score,
        )
    return SampleCheck(seconds, speech_seconds, encoder.embed(speech), two_voice_score=score)


def windows_of(speech: np.ndarray) -> list[np.ndarray]:
    """The speech cut into 2..MAX_WINDOWS windows of equal length, about WINDOW_SECONDS each."""
    count = int(np.clip(len(speech) // int(WINDOW_SECONDS * SAMPLE_RATE), 2, MAX_WINDOWS))
    return [window for window in np.array_split(speech, count) if len(window)]


def two_voice_score(speech: np.ndarray, encoder: SpeakerEncoder) -> float | None:
    """How alike the two least alike groups of the speech's windows are: the two windows that score lowest seed
    two groups, every other window joins the seed it is nearer, and the groups' centroids are scored. One voice
    scores high however it is split; two voices (one after the other, or taking turns) score low."""
    windows = windows_of(speech)
    if len(windows) < 2:
        return None
    embeddings = np.stack([encoder.embed(window) for window in windows])
    scores = embeddings @ embeddings.T
    first, second = np.unravel_index(int(np.argmin(scores)), scores.shape)
    nearer_first = scores[:, first] >= scores[:, second]
    nearer_first[first], nearer_first[second] = True, False
    return round(cosine(centroid(embeddings[nearer_first]), centroid(embeddings[~nearer_first])), 4)
