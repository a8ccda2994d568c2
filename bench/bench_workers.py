"""The workers table of `make bench` (issue 21): on the CPU, one worker with all the threads against two workers
with half each, on the SHORT and MIXED corpora (bench/corpus.py).

Both configurations are bench/tools.py's runner command (`whisperx-batch run CORPUS --out FRESH_DEST`, Whisper
tiny.en int8 on the CPU, --threads 2 as the run's total, batch size 8, English, --no-align, pyannote VAD as for
bench/compare.py's tables), with

A. --workers 1: one pipeline in the runner's own process, with both threads;
B. --workers 2: two worker processes with 1 thread each, fed by the runner's process (listing, decoding, writing).

Per corpus, each configuration first runs once, untimed, on the corpus's smallest recording (imports and model
files in the page cache); then whole processes are timed from start to exit, into a fresh DEST each time, in
the order A-B-B-A (with --runs 1: A-B). Per configuration the table gives each run's wall seconds and their mean,
the realtime factor, the speed-up (A's mean / this mean), the WER against the references (bench/score.py), peak
resident memory twice (the largest single process, wait4; the sum over the process tree, sampled), and from
the run report the files each worker handed back and the share of the wall time after model loading its model
worked. Then the verdict against the floor of issue 21: 2 workers x 1 thread at least 0.95x of 1 worker x 2
threads (not a regression); the figure is reported either way.

Markdown in OUT/results.md, as its `# workers` section (replaced when this runs again; `make bench` appends it
after bench/compare.py's tables), raw figures in OUT/workers.json.

Usage: python -m bench.bench_workers [--only short|mixed] [--runs 1] [--short-scale 0.3] [--mixed-scale 0.3]
       [--model DIR] [--threads 2] [--out out/bench]
About 6 minutes on 2 idle cores with the default corpora (SHORT: 30 files, 4 min of audio; MIXED: 13 files,
13 min), most of it the 8 timed runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.corpus import Corpus
from bench.measure import (
    add_common_arguments,
    common_corpora,
    fmt,
    machine,
    mean,
    measure_run,
    say,
    verdict,
    versions,
    warm_up_file,
)
from bench.tools import POLL_SECONDS, RunFailed, Setup, command, run_report, run_timed, tiny_en, workers_busy

FLOOR = 0.95  # 1 x N threads mean wall / 2 x N/2 threads mean wall, at least (issue 21: not a regression)
WORKERS = (1, 2)  # A and B
HEADING = "# workers"  # the section of results.md this writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs_help="2: A-B-B-A; 1: A-B")
    args = parser.parse_args()
    base = Setup(model=args.model or tiny_en(), threads=args.threads, batch_size=args.batch_size)
    workers_table(common_corpora(args), base, args.out, args.runs, args.run_timeout)


def workers_table(corpora: list[Corpus], base: Setup, out: Path, runs: int, timeout: float) -> dict[str, Any]:
    """Measure both configurations on every corpus, print the table, write it into OUT/results.md and the raw
    figures into OUT/workers.json; the raw figures."""
    began = time.perf_counter()
    setups = {workers: dataclasses.replace(base, workers=workers) for workers in WORKERS}
    order = [*WORKERS, *WORKERS[::-1]] if runs == 2 else list(WORKERS)
    say(f"workers table: {base.describe()}")
    say("  order per corpus: " + ", ".join(label(workers, base.threads) for workers in order))
    results: dict[str, Any] = {}
    for corpus in corpora:
        say(f"  {corpus.describe()}")
        folder = out / "runs" / "workers" / corpus.name
        warm_up(setups, corpus, folder / "warmup", timeout)
        results[corpus.name] = measure(corpus, order, setups, folder, timeout)
    elapsed = time.perf_counter() - began

    out.mkdir(parents=True, exist_ok=True)
    raw = {"setup": vars(base), "workers": list(WORKERS), "floor": FLOOR, "results": results}
    (out / "workers.json").write_text(json.dumps(raw, indent=1) + "\n")
    section = render(corpora, results, base, elapsed)
    print("\n" + section, flush=True)
    document = out / "results.md"
    document.write_text(replace_section(document.read_text() if document.is_file() else "", section))
    say(f"written: {document} ({HEADING} section), {out / 'workers.json'} ({elapsed / 60:.1f} min)")
    return raw


def label(workers: int, threads: int | None) -> str:
    """'1 worker x 2 threads', '2 workers x 1 thread': --threads is the run's total, split between the workers."""
    each = max(1, (threads or 1) // workers)
    return f"{workers} worker{'s' if workers > 1 else ''} x {each} thread{'s' if each > 1 else ''}"


def warm_up(setups: dict[int, Setup], corpus: Corpus, folder: Path, timeout: float) -> None:
    smallest = warm_up_file(corpus, folder)
    for workers, setup in setups.items():
        out = folder / f"workers{workers}"
        argv = command("runner", setup, corpus, out, [smallest])
        try:
            seconds = run_timed(argv, folder / f"workers{workers}.log", out, timeout)
        except RunFailed as exc:
            sys.exit(f"warm-up of {label(workers, setup.threads)} failed: {exc}")
        say(f"warm-up {label(workers, setup.threads)}: {seconds:.1f} s on {smallest.name} (untimed)")


def measure(corpus: Corpus, order: list[int], setups: dict[int, Setup], folder: Path, timeout: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {str(workers): [] for workers in setups}
    for workers in order:
        records = runs[str(workers)]
        name = f"workers{workers}-{len(records) + 1}"
        out = folder / name
        try:
            record = measure_run("runner", setups[workers], corpus, out, folder / f"{name}.log", timeout, tree=True)
        except RunFailed as exc:
            sys.exit(f"{corpus.name}: {label(workers, setups[workers].threads)} run {len(records) + 1} failed: {exc}")
        record["workers"] = worker_figures(run_report(out))
        records.append(record)
        shares = ", ".join(f"{w['name']} {w['files']} files" for w in record["workers"])
        say(
            f"{corpus.name}: {label(workers, setups[workers].threads)} run {len(records)}: "
            f"{record['wall_seconds']:.1f} s, WER {record['wer_percent']:.1f} %, {shares}, load average "
            f"{record['load_average'][0]:.1f} -> {record['load_average'][1]:.1f}"
        )
    return {"audio_seconds": corpus.audio_seconds, "files": len(corpus.recordings), "runs": runs}


def worker_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per worker of the run report: files handed back, restarts, why it left (if it did), and the share of the
    wall time after model loading its model worked. A run without worker processes (--workers 1) as one worker,
    'in-process'."""
    in_process = {
        "name": "in-process",
        "files": len(report.get("succeeded") or []),
        "busy_seconds": report.get("model_seconds") or 0.0,
    }
    return [
        {
            "name": worker.get("name", "?"),
            "files": worker.get("files", 0),
            "restarts": worker.get("restarts", 0),
            "problem": worker.get("problem"),
            "busy_share": worker["busy_share"],
        }
        for worker in workers_busy({**report, "workers": report.get("workers") or [in_process]})
    ]


def render(corpora: list[Corpus], results: dict[str, Any], base: Setup, elapsed: float) -> str:
    """The `# workers` section of results.md."""
    threads = base.threads
    a, b = (label(workers, threads) for workers in WORKERS)
    loads = [x for r in results.values() for runs in r["runs"].values() for run in runs for x in run["load_average"]]
    count = max(len(records) for r in results.values() for records in r["runs"].values())
    order = "A-B-B-A" if count > 1 else "A-B"
    lines = [
        f"{HEADING}: {a} against {b}",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}; load average (1 min) during the runs "
        f"{min(loads):.1f}-{max(loads):.1f}; {versions()}.",
        "",
        f"Setup: {base.describe()}; `whisperx-batch run` with `--workers 1` (A: one pipeline in the runner's "
        f"process) and `--workers 2` (B: two worker processes; `--threads {threads}` is the run's total). Wall "
        f"seconds from process start to exit, page cache warm (each configuration first ran once on the corpus's "
        f"smallest recording), a fresh DEST every run, in the order {order}. x realtime = audio seconds per wall "
        f"second; speed-up = A's mean / this mean. Peak RSS, largest process: the kernel's peak for the runner's "
        f"process or, if larger, its largest worker's (wait4; not a sum; at least this benchmark's own, about 0.2 "
        f"GiB, which the kernel carries over fork and exec). Process tree: the largest sum of "
        f"resident memory over the runner's process and all its children, sampled every {POLL_SECONDS:g} s (pages "
        f"they share, such as libraries, count in each; a peak between two samples is missed, so with one process it "
        f"can read below the wait4 figure). Files per worker: each run's, in run order; busy: the share of the wall "
        f"time after model loading that each worker's model worked, mean of the runs. Total time "
        f"{elapsed / 60:.1f} min.",
    ]
    for corpus in corpora:
        lines += ["", *render_corpus(corpus, results[corpus.name], threads)]
    return "\n".join(lines) + "\n"


def render_corpus(corpus: Corpus, result: dict[str, Any], threads: int | None) -> list[str]:
    runs = {int(workers): records for workers, records in result["runs"].items()}
    audio = result["audio_seconds"]
    means = {workers: mean([r["wall_seconds"] for r in records]) for workers, records in runs.items()}
    wers = {workers: mean([r["wer_percent"] for r in records]) for workers, records in runs.items()}
    count = max(len(records) for records in runs.values())
    first = WORKERS[0]
    lines = [
        f"## {corpus.name.upper()}: {corpus.describe().split(': ', 1)[1]}",
        "",
        "| configuration | "
        + " | ".join(f"run {i + 1} s" for i in range(count))
        + (" | mean s" if count > 1 else "")
        + f" | x realtime | speed-up over {label(first, threads)} | WER % | peak RSS, largest process "
        "| peak RSS, process tree | files per worker | busy per worker |",
        "|---|" + "---:|" * (count + (1 if count > 1 else 0) + 6) + "---:|",
    ]
    problems = []
    for workers, records in runs.items():
        cells = [f"{r['wall_seconds']:.1f}" for r in records] + [""] * (count - len(records))
        if count > 1:
            cells.append(f"{means[workers]:.1f}")
        ratio = means[first] / means[workers] if means.get(first) and means[workers] else None
        cells += [
            fmt(means[workers] and audio / means[workers], "{:.1f}"),
            fmt(ratio, "{:.2f}x"),
            fmt(wers[workers], "{:.1f}"),
            gib(max((r.get("peak_rss_bytes") or 0 for r in records), default=0)),
            gib(max((r.get("tree_peak_rss_bytes") or 0 for r in records), default=0)),
            " / ".join("+".join(str(w["files"]) for w in r["workers"]) for r in records),
            busy_text(records),
        ]
        missing = sum(r["missing_transcripts"] for r in records)
        name = f"{label(workers, threads)} (`--workers {workers}`)"
        name += f" ({missing} transcripts missing)" if missing else ""
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        problems += [
            f"{label(workers, threads)}, run {number}: worker {w['name']} restarted {w['restarts']} times"
            + (f", left the run: {w['problem']}" if w["problem"] else "")
            for number, r in enumerate(records, 1)
            for w in r["workers"]
            if w["restarts"] or w["problem"]
        ]
    if problems:
        lines += ["", *[f"- {problem}" for problem in problems]]
    lines += ["", verdict_line(corpus.name, runs, means, wers, threads)]
    return lines


def verdict_line(
    name: str, runs: dict[int, Any], means: dict[int, float | None], wers: dict[int, float | None], threads: int | None
) -> str:
    a, b = WORKERS
    if not (means.get(a) and means.get(b)):
        return f"Verdict on {name.upper()}: n/a (a configuration has no runs)."
    ratio = means[a] / means[b]
    counts = f"{len(runs[a])} run{'s' if len(runs[a]) > 1 else ''} each"
    if len(runs[a]) != len(runs[b]):
        counts = f"{len(runs[b])} and {len(runs[a])} runs"
    return (
        f"Verdict on {name.upper()}: {label(b, threads)} against {label(a, threads)}: **{ratio:.3f}x** (mean "
        f"{means[b]:.1f} s against {means[a]:.1f} s, {counts}); floor >= {FLOOR:g}x "
        f"(not a regression): {verdict(ratio >= FLOOR)}. WER {fmt(wers[a], '{:.1f}')} % and "
        f"{fmt(wers[b], '{:.1f}')} %."
    )


def busy_text(records: list[dict[str, Any]]) -> str:
    """Each worker's busy share, mean over the runs, in worker order: '97 + 95 %'."""
    shares: dict[str, list[float | None]] = {}
    for record in records:
        for worker in record["workers"]:
            shares.setdefault(worker["name"], []).append(worker["busy_share"])
    means = [mean(values) for values in shares.values()]
    if not means or all(value is None for value in means):
        return "n/a"
    return " + ".join(fmt(value and value * 100, "{:.0f}") for value in means) + " %"


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size else "n/a"


def replace_section(document: str, section: str) -> str:
    """`document` (markdown) with its HEADING section (from that top-level heading to the next, or the end)
    replaced by `section`, or with `section` appended when it has none."""
    lines = document.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(HEADING)), None)
    if start is None:
        body = document.rstrip("\n")
        return (body + "\n\n" if body else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# ")), len(lines))
    before, after = "\n".join(lines[:start]).rstrip("\n"), "\n".join(lines[end:])
    return (before + "\n\n" if before else "") + section + ("\n" + after + "\n" if after else "")


if __name__ == "__main__":
    main()
