"""Recordings in which nobody says a word, made with sox and espeak-ng: the sounds Whisper writes text over.

Music (chords, plucked notes, hold music with vibrato), tones (a sine, a sweep, a buzzing square wave), ringing,
DTMF digits, mains hum, pink noise (steady, and beating at a syllable rate), reversed speech (one voice, two
voices over each other, a crowd of three, speech reversed under chords). Most are shaped so that the VAD takes
them for speech, which is when Whisper hallucinates: a steady tone finds no speech and reaches no model.

`make_set(folder, seed)` writes one recording of each kind; the seed picks the sentences, voices, speeds and
pitches, so the sets that built the phrase bag (seeds 1, 3, 5, 7, 9: bench/hallucination_phrases.py) and the set
that measures the guard (seed 2: bench/bench_hallucinations.py) differ. sox runs in its repeatable mode (-R): a
seed makes the same recordings every time, noise included.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from pathlib import Path

SENTENCES = [
    "The quarterly numbers are in and they look better than we expected for the northern region.",
    "Could you send me the file before the meeting tomorrow morning, please, I need to review it.",
    "We are closing early on Friday because of the holiday, so plan your deliveries accordingly.",
    "The engineer will come by on Tuesday afternoon to look at the heating in the basement.",
    "Thank you for calling, all of our agents are busy, please stay on the line.",
    "Your order has been shipped and should arrive within three working days.",
    "I left my umbrella in the taxi, can you call the company for me?",
    "The board approved the new budget after a long discussion about travel costs.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+m1", "en-gb-x-rp"]
NOTES = ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5", "D5", "E5"]
SAMPLE_RATE = "16000"


# A North American ring cadence: 440 + 480 Hz for 1 s, then 2 s of silence.
RING_CADENCE = ("synth", "1", "sine", "440", "sine", "480", "remix", "-", ":", "synth", "2", "sine", "0")


def sox(*args: str) -> None:
    subprocess.run(["sox", "-R", *args], check=True, capture_output=True)  # -R: the same noise every time


def synth(path: Path, *effects: str) -> Path:
    sox("-n", "-r", SAMPLE_RATE, "-c", "1", str(path), *effects)
    return path


def reversed_speech(path: Path, rng: random.Random, work: Path) -> Path:
    spoken = work / f"{path.stem}.spoken.wav"
    sentence, voice, rate = rng.choice(SENTENCES), rng.choice(VOICES), rng.choice([140, 160, 180])
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(spoken), sentence], check=True)
    sox(str(spoken), "-r", SAMPLE_RATE, "-c", "1", str(path), "reverse")
    return path


def chords(path: Path, rng: random.Random, seconds: int = 8, pluck: bool = False) -> Path:
    """A chord progression, each chord 2 s: plucked, or held with a slow vibrato (hold music)."""
    effects: list[str] = []
    for index in range(seconds // 2):
        root = rng.randrange(len(NOTES) - 4)
        wave = "pluck" if pluck else "sine"
        chord = [item for step in (0, 2, 4) for item in (wave, NOTES[root + step])]
        effects += [*([":"] if index else []), "synth", "2", *chord, "remix", "-"]
    synth(path, *effects)
    if not pluck:
        shaped = path.with_name(path.stem + ".held.wav")
        sox(str(path), str(shaped), "tremolo", "5", "40", "vol", "0.6")
        shaped.replace(path)
    return path


def make_set(folder: Path, seed: int) -> list[Path]:
    """One recording of each kind in `folder` (made anew); the paths, in name order."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pitch = rng.choice([180, 220, 260])
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        made = [
            synth(folder / "tone.wav", "synth", "6", "sine", str(2 * pitch)),
            chords(folder / "chords.wav", rng),
            chords(folder / "plucked.wav", rng, pluck=True),
            synth(
                folder / "vibrato.wav",
                "synth",
                "8",
                "sine",
                str(pitch),
                "sine",
                str(2 * pitch),
                "remix",
                "-",
                "tremolo",
                "5",
                "60",
            ),
            synth(folder / "sweep.wav", "synth", "8", "sine", f"{pitch}-{4 * pitch}", "tremolo", "3", "90"),
            synth(
                folder / "buzz.wav", "synth", "8", "square", str(pitch // 2 + 40), "tremolo", "4", "90", "vol", "0.3"
            ),
            synth(folder / "ringing.wav", *RING_CADENCE, ":", *RING_CADENCE),  # two rings
            synth(folder / "dtmf.wav", *_dtmf(rng)),
            synth(folder / "hum.wav", "synth", "8", "sine", "50", "sine", "100", "remix", "-", "vol", "0.5"),
            synth(folder / "noise.wav", "synth", "8", "pinknoise", "vol", "0.3"),
            synth(
                folder / "noise_beating.wav",
                "synth",
                "8",
                "pinknoise",
                "tremolo",
                str(rng.choice([3, 4, 5])),
                "100",
                "vol",
                "0.5",
            ),
        ]
        voices = [reversed_speech(work / f"reversed{index}.wav", rng, work) for index in range(3)]
        for index, voice in enumerate(voices[:2]):
            target = folder / f"reversed_speech{index}.wav"
            target.write_bytes(voice.read_bytes())
            made.append(target)
        made.append(folder / "crowd.wav")
        sox("-m", *map(str, voices), str(made[-1]))
        chords_under = chords(work / "under.wav", rng)
        made.append(folder / "reversed_over_music.wav")
        sox("-m", str(voices[2]), str(chords_under), str(made[-1]), "trim", "0", "7")
    return sorted(made)


def _dtmf(rng: random.Random) -> list[str]:
    """Eight key presses of 0.3 s with 0.2 s between them, as a phone sends digits."""
    rows, columns = (697, 770, 852, 941), (1209, 1336, 1477)
    effects: list[str] = []
    for index in range(8):
        tone = ["sine", str(rng.choice(rows)), "sine", str(rng.choice(columns))]
        effects += [*([":"] if index else []), "synth", "0.3", *tone, "remix", "-", ":", "synth", "0.2", "sine", "0"]
    return effects
