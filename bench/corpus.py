"""Benchmark corpora: real speech made with espeak-ng, with the reference text of every recording.

Each corpus is built once into a folder and reused while its recipe is unchanged:

    ROOT/NAME/corpus.json   name, recipe hash, and per recording: file name, seconds, voices, reference text
    ROOT/NAME/audio/        the recordings (the folder given to the tools)

- short: about 30 voicemail-like recordings of 3-15 s (wav at 8 or 16 kHz, mp3, m4a), one voice each;
- mixed: 13 recordings from 3 s to about 3 min, about 13 min in all, in wav, mp3, m4a (AAC), flac, ogg
  (Opus and Vorbis) and one mp4 video with an audio track; the long ones are two voices taking turns;
- talks: 8 recordings of about 1.5 min, two voices each (bench/gpu_squeeze.py).

Sentences are spoken one at a time by espeak-ng (several voices and speeds) and joined with pauses (0.3-1.2 s,
now and then 2-5 s in long recordings), then converted by FFmpeg. The references hold the words as written
for espeak-ng: numbers are spelled out, as espeak-ng speaks them. Building needs espeak-ng and ffmpeg; a CUDA
machine without them can be given corpora built elsewhere (`--corpora DIR` of bench/gpu_check).

Build ahead (e.g. to carry to a GPU machine): python -m bench.corpus [--root out/bench/corpora] [short mixed]
(bench/gpu_check reads ROOT/short and ROOT/mixed: build those at the default --scale 1.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / "out" / "bench" / "corpora"
RECIPE_VERSION = 1  # bump when the way recordings are made changes: cached corpora are rebuilt
ESPEAK_RATE = 22050  # espeak-ng writes 16-bit mono PCM at this rate
MIN_SECONDS = 3.0  # no recording is shorter

SENTENCES = [
    "Hi, this is Daniel from the accounts team.",
    "Please call me back when you get this message.",
    "The quarterly report is ready for review.",
    "Please send the slides to Maria before noon on Friday.",
    "Our customer asked for a refund on the second order.",
    "The meeting moved to Thursday at three thirty in the afternoon.",
    "We agreed to ship the new release next week.",
    "The server upgrade finished without any errors last night.",
    "Let us start with a short summary of the interview.",
    "I am calling about the invoice you sent on Monday.",
    "The delivery should arrive within five working days.",
    "Could you check whether the contract has been signed?",
    "My flight lands at ten fifteen, so I will be a little late.",
    "The new office has twenty desks and two meeting rooms.",
    "We need a decision on the budget by the end of the month.",
    "Thank you for your patience while we fix the problem.",
    "The printer on the third floor is out of paper again.",
    "She said the design review went very well.",
    "There were forty people at the workshop this morning.",
    "Remember to back up your files before the update.",
    "The train was cancelled because of the storm.",
    "I will send you the notes from our call this afternoon.",
    "The results of the survey will be published next month.",
    "Can we move our lunch to Wednesday instead?",
    "The doctor can see you at nine in the morning.",
    "Our team finished the project two weeks ahead of schedule.",
    "The password must be changed every ninety days.",
    "Please leave the keys at the front desk.",
    "The marketing plan needs a few more changes.",
    "He asked whether the parking lot will be open on Sunday.",
    "The battery lasts about twelve hours on a single charge.",
    "We are hiring two engineers and a product manager.",
    "The water in the kitchen will be turned off tomorrow.",
    "Nobody noticed the mistake until the audit.",
    "I think the second option is cheaper in the long run.",
    "The library closes early on public holidays.",
    "Your package was left with a neighbour.",
    "The price of the tickets went up by fifteen percent.",
    "Let me know if you have any questions.",
    "Have a good weekend and talk to you soon.",
]
SHORT_PHRASES = [  # for the shortest recordings
    "Call me back, please.",
    "Hi, it is Anna. Just checking in.",
    "Running late, see you soon.",
    "The meeting is cancelled.",
]
VOICES = [  # those Whisper tiny.en understands best (10-18 % WER on single sentences at 160 words a minute)
    "en-us",
    "en-us+m3",
    "en-us+Alex",
    "en-gb",
    "en-gb+m1",
    "en-gb+m3",
    "en-gb+f2",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-rp+f2",
]
RATES = [140, 150, 160, 170, 180]

# FFmpeg arguments per format: (extension, audio options)
FORMATS: dict[str, tuple[str, list[str]]] = {
    "wav": ("wav", ["-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le"]),
    "wav8k": ("wav", ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"]),
    "wav44": ("wav", ["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le"]),
    "mp3": ("mp3", ["-ar", "22050", "-c:a", "libmp3lame", "-q:a", "5"]),
    "m4a": ("m4a", ["-ar", "44100", "-c:a", "aac", "-b:a", "64k"]),
    "flac": ("flac", ["-ar", "16000", "-c:a", "flac"]),
    "opus": ("ogg", ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k"]),
    "vorbis": ("ogg", ["-ar", "44100", "-c:a", "libvorbis", "-q:a", "3"]),
    "mp4": ("mp4", ["-ar", "44100", "-c:a", "aac", "-b:a", "96k"]),  # with a black video track
}


@dataclass(frozen=True)
class Item:
    """One recording to make: about `seconds` long (never longer), in `fmt`."""

    stem: str
    seconds: float
    fmt: str


@dataclass(frozen=True)
class Recording:
    name: str  # file name inside the audio folder
    seconds: float
    text: str  # reference: the words espeak-ng spoke


@dataclass(frozen=True)
class Corpus:
    name: str
    folder: Path  # the audio folder
    recordings: tuple[Recording, ...]

    @property
    def audio_seconds(self) -> float:
        return sum(r.seconds for r in self.recordings)

    @property
    def paths(self) -> list[Path]:
        return [self.folder / r.name for r in self.recordings]

    def describe(self) -> str:
        lengths = sorted(r.seconds for r in self.recordings)
        return (
            f"{self.name}: {len(self.recordings)} recordings, {self.audio_seconds / 60:.1f} min of audio "
            f"({lengths[0]:.0f}-{lengths[-1]:.0f} s each)"
        )


def recipe(name: str, scale: float = 1.0) -> list[Item]:
    """The recordings of corpus `name`; `scale` multiplies the number (short) or the lengths (mixed, talks)."""
    rng = random.Random(f"{name}-items")
    if name == "short":
        count = max(1, round(30 * scale))
        fmts = ["wav8k", "mp3", "wav", "m4a", "mp3"]
        return [Item(f"vm{i:02d}", rng.uniform(3.0, 15.0), fmts[i % len(fmts)]) for i in range(count)]
    if name == "mixed":
        plan = [  # seconds, format: 13 recordings, about 13 min in all
            (3, "wav"),
            (170, "mp3"),
            (8, "m4a"),
            (45, "flac"),
            (120, "opus"),
            (20, "wav44"),
            (80, "mp4"),
            (5, "vorbis"),
            (100, "m4a"),
            (30, "mp3"),
            (60, "flac"),
            (12, "opus"),
            (150, "wav"),
        ]
        return [Item(f"mx{i:02d}_{fmt}", max(MIN_SECONDS, s * scale), fmt) for i, (s, fmt) in enumerate(plan)]
    if name == "talks":
        return [Item(f"talk{i:02d}", 90.0 * scale, "wav") for i in range(8)]
    raise ValueError(f"unknown corpus {name!r}: short, mixed or talks")


def recipe_hash(items: list[Item]) -> str:
    text = json.dumps([RECIPE_VERSION, SENTENCES, SHORT_PHRASES, VOICES, RATES, FORMATS, [vars(i) for i in items]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_corpus(name: str, root: Path = DEFAULT_ROOT, scale: float = 1.0) -> Corpus:
    """The corpus from its cache folder (ROOT/NAME, or ROOT/NAME-xSCALE), built first when missing or stale."""
    folder = root / (name if scale == 1 else f"{name}-x{scale:g}")
    items = recipe(name, scale)
    wanted = recipe_hash(items)
    index = folder / "corpus.json"
    if index.is_file() and json.loads(index.read_text()).get("recipe") == wanted:
        return load_corpus(folder)
    build(name, items, folder, wanted)
    return load_corpus(folder)


def load_corpus(folder: Path) -> Corpus:
    """A built corpus (ROOT/NAME, holding corpus.json and audio/)."""
    index = json.loads((folder / "corpus.json").read_text())
    recordings = tuple(Recording(r["name"], r["seconds"], r["text"]) for r in index["recordings"])
    corpus = Corpus(index["name"], folder / "audio", recordings)
    missing = [str(p) for p in corpus.paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus {folder} lacks {', '.join(missing[:3])}")
    return corpus


def build(name: str, items: list[Item], folder: Path, recipe_id: str) -> None:
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building the {name} corpus needs {tool} (make system-deps), or give built corpora")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    rng = random.Random(f"{name}-speech")
    speaker = Speaker(staging / "sentences")
    (staging / "audio").mkdir()
    recordings = []
    for index, item in enumerate(items):
        frames, text, voices = compose(item, index, rng, speaker)
        extension, options = FORMATS[item.fmt]
        file_name = f"{item.stem}.{extension}"
        convert(frames, staging / "audio" / file_name, options, video=item.fmt == "mp4")
        seconds = round(len(frames) / 2 / ESPEAK_RATE, 3)
        recordings.append({"name": file_name, "seconds": seconds, "voices": voices, "format": item.fmt, "text": text})
    shutil.rmtree(staging / "sentences")
    (staging / "corpus.json").write_text(
        json.dumps({"name": name, "recipe": recipe_id, "recordings": recordings}, indent=1) + "\n"
    )
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


class Speaker:
    """espeak-ng speech of one sentence in one voice and speed, as raw PCM frames (cached)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True)
        self.folder = folder
        self.cache: dict[tuple[str, str, int], bytes] = {}

    def say(self, text: str, voice: str, rate: int) -> bytes:
        key = (text, voice, rate)
        if key not in self.cache:
            path = self.folder / "sentence.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
            with wave.open(str(path)) as reader:
                assert reader.getframerate() == ESPEAK_RATE and reader.getsampwidth() == 2
                self.cache[key] = reader.readframes(reader.getnframes())
        return self.cache[key]


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * ESPEAK_RATE))


def compose(item: Item, index: int, rng: random.Random, speaker: Speaker) -> tuple[bytes, str, list[str]]:
    """Sentences with pauses, at most item.seconds long; long recordings are two voices taking turns."""
    voices = rng.sample(VOICES, 2)
    rates = [rng.choice(RATES), rng.choice(RATES)]
    if item.seconds < 60:
        voices, rates = voices[:1], rates[:1]
    parts = [silence(rng.uniform(0.2, 0.6))]
    length = len(parts[0])
    limit = int(item.seconds * ESPEAK_RATE) * 2
    words: list[str] = []
    turn, in_turn = 0, 0
    pool = SHORT_PHRASES if item.seconds < 5 else SENTENCES
    previous = None
    while True:
        candidates = [s for s in rng.sample(pool, len(pool)) if s != previous]
        chosen = None
        for sentence in candidates[:6]:  # the first that fits
            speech = speaker.say(sentence, voices[turn], rates[turn])
            pause = silence(rng.uniform(0.3, 1.2) if item.seconds < 30 or rng.random() > 0.15 else rng.uniform(2, 5))
            if length + len(speech) + (len(pause) if words else 0) <= limit:
                chosen = (sentence, speech, pause)
                break
        if chosen is None:
            if words:
                break
            chosen = (pool[index % len(pool)], speaker.say(pool[index % len(pool)], voices[turn], rates[turn]), b"")
        sentence, speech, pause = chosen
        if words:
            parts.append(pause)
        parts.append(speech)
        length += len(speech) + (len(pause) if words else 0)
        words.append(sentence)
        previous = sentence
        in_turn += 1
        if len(voices) > 1 and in_turn >= rng.randint(1, 3):
            turn, in_turn = 1 - turn, 0
    tail = silence(rng.uniform(0.2, 0.8))
    if length + len(tail) <= limit:
        parts.append(tail)
        length += len(tail)
    if length < MIN_SECONDS * ESPEAK_RATE * 2:  # the shortest phrases: trailing silence up to the minimum
        parts.append(bytes(int(MIN_SECONDS * ESPEAK_RATE) * 2 - length))
    return b"".join(parts), " ".join(words), voices


def convert(frames: bytes, target: Path, options: list[str], video: bool) -> None:
    raw = target.with_suffix(".raw.wav")
    with wave.open(str(raw), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(ESPEAK_RATE)
        writer.writeframes(frames)
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
    if video:
        command += ["-f", "lavfi", "-i", "color=c=black:s=64x64:r=5", "-i", str(raw), "-shortest"]
        command += ["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    else:
        command += ["-i", str(raw)]
    subprocess.run([*command, *options, str(target)], check=True)
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["short", "mixed"], help="corpora to build (short mixed talks)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--scale", type=float, default=1.0, help="more or fewer (short) or longer (mixed) recordings")
    args = parser.parse_args()
    for name in args.names:
        corpus = ensure_corpus(name, args.root, args.scale)
        print(f"{corpus.describe()} in {corpus.folder.parent}")


if __name__ == "__main__":
    main()
