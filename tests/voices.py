"""Real voices and a real pretrained speaker encoder for the speaker tests.

ResemblyzerEncoder: Resemblyzer's GE2E voice encoder (its pretrained weights ship in its wheel: the `Resemblyzer`
test extra) at the project's encoder seam (batch.engine.speakers.encoder.SpeakerEncoder). For tests only: the product
uses the diarization pipeline's own WeSpeaker model.
Voices: pyannote's sample.wav holds two people (its .rttm says who speaks when): each one's turns, overlaps left out,
are cut from it; espeak-ng's female voice is a third, clearly different one.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import numpy as np

from batch.engine.audio import decode
from batch.engine.speakers.encoder import L2, unit
from tests.conftest import SITE

SAMPLE_RATE = 16_000
#: Measured on the voices below: one person's halves score 0.93-0.95, the sample's two people 0.80-0.84.
RESEMBLYZER_THRESHOLD = 0.88


class ResemblyzerEncoder:
    name = "resemblyzer/VoiceEncoder"
    revision = "0.1.4"
    dimension = 256
    normalisation = L2
    default_threshold = RESEMBLYZER_THRESHOLD

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder("cpu", verbose=False)
        self.calls: list[int] = []  # samples per embed() call

    def embed(self, audio: np.ndarray) -> np.ndarray:
        self.calls.append(len(audio))
        return unit(self._encoder.embed_utterance(np.asarray(audio, dtype=np.float32)))


@cache
def resemblyzer() -> ResemblyzerEncoder:
    return ResemblyzerEncoder()


def rttm_turns() -> list[tuple[float, float, str]]:
    rows = [line.split() for line in (SITE / "sample" / "sample.rttm").read_text().splitlines() if line.strip()]
    return [(float(row[3]), float(row[3]) + float(row[4]), row[7]) for row in rows]


@cache
def sample_speech(speaker: str) -> np.ndarray:
    """Everything `speaker` (speaker90 or speaker91) says alone in sample.wav, joined."""
    with open(SITE / "sample" / "sample.wav", "rb") as stream:
        audio = decode(stream)
    turns = rttm_turns()
    keep = np.zeros(len(audio), dtype=bool)
    for start, end, who in turns:
        if who == speaker:
            keep[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] = True
    for start, end, who in turns:
        if who != speaker:
            keep[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] = False
    return audio[keep]


def write_wav(path: Path, audio: np.ndarray) -> Path:
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def espeak(path: Path, text: str, voice: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
    return path


def decoded(path: Path) -> np.ndarray:
    with open(path, "rb") as stream:
        return decode(stream)


CAROL_LINES = (
    "The quarterly report is ready. Please review the numbers before the meeting on Friday.",
    "Send me your notes by noon, and we will go through the budget together next week.",
)


def build_voices(folder: Path) -> Path:
    """FOLDER/NAME/*.wav: alice and bob (sample.wav's two people, two samples each of about 5 s), carol (espeak-ng's
    en+f2, two sentences)."""
    for name, speaker in (("alice", "speaker90"), ("bob", "speaker91")):
        speech = sample_speech(speaker)
        half = len(speech) // 2
        write_wav(folder / name / f"{name}_1.wav", speech[:half])
        write_wav(folder / name / f"{name}_2.wav", speech[half:])
    for index, line in enumerate(CAROL_LINES, 1):
        espeak(folder / "carol" / f"carol_{index}.wav", line, "en+f2")
    return folder
