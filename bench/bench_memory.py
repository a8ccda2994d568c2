"""Peak memory of one long recording through the whole pipeline (ASR, alignment, diarization), and what a longer
one would take: `whisperx-batch run` (and, with --cli, the whisperx command line) on single recordings of
growing length made from the MIXED corpus's speech, with bench/models.py's full-size models (random weights,
the real models' sizes and costs).

    python -m bench.bench_memory [--minutes 2.5 5] [--cli] [--out out/bench/memory]

For each length it prints the wall seconds, the peak resident memory the kernel counted for the process (wait4),
and the runner's seconds per stage; then the growth per audio hour between the two longest, and the peak it
implies for a 2-hour recording (a straight-line estimate: say so where it is quoted).
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np

from bench.corpus import DEFAULT_ROOT, REPO, ensure_corpus
from bench.models import ALIGN_BASE, DIARIZATION, build_all
from bench.tools import Setup, command, run_measured, run_report, tiny_en

SAMPLE_RATE = 16000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5.0])
    parser.add_argument("--cli", action="store_true", help="also the whisperx command line on each recording")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench" / "memory")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    built = build_all(args.out.parent / "models")
    setup = Setup(
        model=tiny_en(),
        threads=args.threads,
        align_model=str(built[ALIGN_BASE][0]),
        diarize_model=str(built[DIARIZATION][0]),
    )
    speech = corpus_speech()
    peaks: dict[float, int] = {}
    print(f"one recording at a time: {setup.describe()}", flush=True)
    for minutes in sorted(args.minutes):
        folder = args.out / f"{minutes:g}min"
        recording = write_recording(speech, minutes * 60, folder / "input" / f"long-{minutes:g}min.wav")
        for tool in ["runner"] + (["cli"] if args.cli else []):
            out = folder / tool
            measured = run_measured(command(tool, setup, None, out, [recording]), folder / f"{tool}.log", out)
            stages = run_report(out).get("stage_seconds", {}) if tool == "runner" else {}
            shown = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in stages.items())
            print(
                f"  {minutes:5.1f} min, {tool:6}: {measured.seconds:7.1f} s, peak RSS "
                f"{measured.peak_rss_bytes / 2**30:.2f} GiB{f' ({shown})' if shown else ''}",
                flush=True,
            )
            if tool == "runner":
                peaks[minutes] = measured.peak_rss_bytes
    if len(peaks) >= 2:
        (short, low), (long, high) = sorted(peaks.items())[-2:]
        per_hour = (high - low) / ((long - short) / 60)
        two_hours = high + per_hour * (120 - long) / 60
        print(
            f"runner: +{per_hour / 2**30:.2f} GiB per audio hour between {short:g} and {long:g} min; a 2-hour "
            f"recording: about {two_hours / 2**30:.1f} GiB (straight-line estimate)"
        )


def corpus_speech() -> np.ndarray:
    """The MIXED corpus's recordings, decoded and joined: speech of several voices with natural pauses."""
    from batch.engine.audio import decode

    corpus = ensure_corpus("mixed", DEFAULT_ROOT)
    parts = []
    for path in corpus.paths:
        with path.open("rb") as stream:
            parts.append(decode(stream))
    return np.concatenate(parts)


def write_recording(speech: np.ndarray, seconds: float, path: Path) -> Path:
    """`seconds` of the corpus's speech, repeated as needed, as a 16 kHz 16-bit wav."""
    samples = int(seconds * SAMPLE_RATE)
    audio = np.resize(speech, samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as sink:
        sink.setnchannels(1)
        sink.setsampwidth(2)
        sink.setframerate(SAMPLE_RATE)
        sink.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


if __name__ == "__main__":
    main()
