"""Where the runner's and the whisperx command line's WER differ, is it the engine or the decoder?

The runner decodes in-process with PyAV (its wheels carry their own FFmpeg); the command line pipes each file
through the system's `ffmpeg`. This decodes every recording of a corpus as the command line does
(`whisperx.audio.load_audio`), writes those samples as 16-bit WAV, runs the runner on them, and prints per file:
the WER of the runner on the original files, of the runner on the command line's samples, of the command line,
and whether the runner given the command line's samples wrote the command line's text word for word.
It reads the runs of the last `make bench` (out/bench/runs/CORPUS/runner1 and cli1) and adds one runner run.

Usage: python -m bench.same_samples [--corpus mixed] [--scale 0.5] [--vad-step 0.5]   (a minute, after make bench)
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from bench.corpus import REPO, Corpus, Recording, ensure_corpus
from bench.score import normalise, wer_percent
from bench.tools import Setup, command, environment, texts, tiny_en


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="mixed", choices=["short", "mixed"])
    parser.add_argument("--scale", type=float, default=0.5, help="as make bench's --mixed-scale / --short-scale")
    parser.add_argument("--vad-step", help="the runner's --vad-step (default: its own default; 0.5 is whisperx's)")
    parser.add_argument("--runs", type=Path, default=REPO / "out" / "bench" / "runs", help="make bench's run folders")
    args = parser.parse_args()
    corpus = ensure_corpus(args.corpus, REPO / "out" / "bench" / "corpora", scale=args.scale)
    runs = args.runs / args.corpus
    references = [recording.text for recording in corpus.recordings]
    runner, cli = texts("runner", corpus, runs / "runner1"), texts("cli", corpus, runs / "cli1")
    if not any(runner) or not any(cli):
        raise SystemExit(f"no runner1/cli1 transcripts under {runs}: run make bench first")
    with tempfile.TemporaryDirectory() as folder:
        as_cli_reads = samples_as_the_command_line_reads(corpus, Path(folder) / "audio")
        out = Path(folder) / "out"
        step = ["--vad-step", args.vad_step] if args.vad_step else []
        argv = command("runner", Setup(model=tiny_en()), as_cli_reads, out) + step
        subprocess.run(argv, env=environment(), check=True, capture_output=True)
        runner_on_cli_samples = texts("runner", as_cli_reads, out)
    print(f"{'recording':<18} {'runner':>7} {'runner, CLI samples':>20} {'CLI':>7}  same text as CLI")
    for index, recording in enumerate(corpus.recordings):
        reference = [references[index]]
        same = normalise(runner_on_cli_samples[index]) == normalise(cli[index])
        print(
            f"{recording.name:<18} {wer_percent(reference, [runner[index]]):7.1f} "
            f"{wer_percent(reference, [runner_on_cli_samples[index]]):20.1f} "
            f"{wer_percent(reference, [cli[index]]):7.1f}  {'yes' if same else 'NO'}"
        )
    print(
        f"{'all':<18} {wer_percent(references, runner):7.1f} {wer_percent(references, runner_on_cli_samples):20.1f} "
        f"{wer_percent(references, cli):7.1f}"
    )


def samples_as_the_command_line_reads(corpus: Corpus, folder: Path) -> Corpus:
    """Each recording decoded by the system's ffmpeg (whisperx's load_audio), saved as 16-bit WAV."""
    from whisperx.audio import load_audio

    folder.mkdir(parents=True)
    recordings = []
    for recording in corpus.recordings:
        samples = load_audio(str(corpus.folder / recording.name))
        name = f"{recording.name}.wav"
        with wave.open(str(folder / name), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16_000)
            out.writeframes(np.round(samples * 32768).clip(-32768, 32767).astype("<i2").tobytes())
        recordings.append(Recording(name=name, text=recording.text, seconds=recording.seconds))
    return Corpus(name=corpus.name, folder=folder, recordings=tuple(recordings))


if __name__ == "__main__":
    main()
