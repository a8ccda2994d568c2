"""The recordings of a scenario: short speech that says one code word (so a transcript tells which version of a
file it was made from), and the inputs that are their file's own fault (empty, corrupt), or a burden (very long).

Clips are made with espeak-ng and FFmpeg and cached by word and container, so a soak of hundreds of scenarios
makes each clip once.
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

# Words Whisper tiny.en reads back from espeak-ng's voice in every container here (island, kitten, lemon and
# pepper did not), each distinct from the others.
WORDS = (
    "apple river mountain yellow garden window orange pencil candle tiger rocket silver thunder button coffee "
    "dragon forest guitar hammer jacket marble needle rabbit saddle tomato wagon castle doctor engine falcon "
    "harbor ladder"
).split()
SPEECH_CONTAINERS = ("wav", "mp3", "flac", "ogg", "m4a")
MEDIA_OWN_FAULTS = ("empty", "garbage", "text")  # inputs that fail for their own reason, every time


def sentence(word: str) -> str:
    return f"The code word is {word}. I repeat, {word}."


def words_in(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


class Clips:
    """Clips made once per (word, container, length), kept in `cache`."""

    def __init__(self, cache: Path):
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)

    def speech(self, word: str, container: str) -> bytes:
        target = self.cache / f"{word}.{container}"
        if not target.exists():
            raw = self._raw(word)
            _ffmpeg(["-i", str(raw), "-ac", "1", *_codec(container)], target)
        return target.read_bytes()

    def long(self, word: str, minutes: float) -> bytes:
        """The code word, then `minutes` of near silence: long to decode, cheap to store (Opus at 24 kbit/s: at
        6 kbit/s tiny.en no longer reads the word)."""
        target = self.cache / f"{word}-long-{minutes:g}-24k.ogg"
        if not target.exists():
            raw = self._raw(word)
            filler = ["-f", "lavfi", "-i", f"anoisesrc=a=0.0005:c=pink:r=16000:d={minutes * 60:g}"]
            mix = ["-filter_complex", "[0:a]aresample=16000[s];[s][1:a]concat=n=2:v=0:a=1[out]", "-map", "[out]"]
            _ffmpeg(["-i", str(raw), *filler, *mix, "-ac", "1", "-c:a", "libopus", "-b:a", "24k"], target)
        return target.read_bytes()

    def _raw(self, word: str) -> Path:
        raw = self.cache / f"{word}.raw.wav"
        if not raw.exists():
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), sentence(word)], check=True)
        return raw


def own_fault(kind: str, rng: random.Random) -> bytes:
    """The content of an input that can never be transcribed: its failure is its own."""
    if kind == "empty":
        return b""
    if kind == "garbage":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(200, 4000)))
    if kind == "text":
        return b"this is a note, not a recording\n" * rng.randint(5, 60)
    raise ValueError(kind)


def _codec(container: str) -> list[str]:
    return {
        "wav": ["-c:a", "pcm_s16le"],
        "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
        "flac": ["-c:a", "flac"],
        "ogg": ["-c:a", "libopus", "-b:a", "32k"],
        "m4a": ["-c:a", "aac", "-b:a", "64k"],
    }[container]


def _ffmpeg(arguments: list[str], target: Path) -> None:
    partial = target.with_name(target.name + ".part" + target.suffix)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *arguments, str(partial)], check=True)
    partial.rename(target)
