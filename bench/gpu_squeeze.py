"""GPU memory on a real card: NVML readings, a squeezed run, adaptive vs fixed batch sizes, memory over a long run.

Needs a CUDA GPU, the project installed, and a model the machine can load offline (a local CTranslate2
folder or one in the Hugging Face cache). Runs the real CLI as subprocesses and reads their manifests,
whose `gpu` field holds one record per stage: batch_size_requested / _planned / _used, oom_retries,
free_bytes, total_bytes, peak_growth_bytes.

1. NVML: every device NVML sees, the one mapped to CUDA device 0, and its free memory beside CUDA's own
   figure (torch.cuda.mem_get_info): they agree when the mapping is right.
2. Squeeze: this process holds a ballast tensor that leaves --leave-gib free, and the runner transcribes the
   corpus at a large --batch-size beside it: every file must succeed, at the batch sizes the manifests show.
3. Throughput: the same files with no ballast at the adaptive ceiling and at each fixed size.
4. Creep: the corpus copied to --creep-files files, run once, NVML's used memory sampled between files;
   the level between files must stay flat.

Usage: python bench/gpu_squeeze.py --model large-v3 [--corpus DIR] [--leave-gib 6] [--ceiling 64]
       [--fixed 4,16] [--creep-files 200] [--extra '--no-align']
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batch.common.units import GiB, MiB, format_bytes  # noqa: E402
from batch.engine.gpu.nvml import list_nvml_devices, probe_for_device  # noqa: E402
from bench.corpus import ensure_corpus  # noqa: E402

CREEP_LIMIT_BYTES = 256 * MiB


def run_cli(corpus: Path, out: Path, model: str, batch_size: int, extra: list[str]) -> float:
    """One real run of the runner; returns its wall time. Its exit code is checked by the caller's reading."""
    command = [sys.executable, "-m", "batch", "run", str(corpus), "--out", str(out), "--device", "cuda"]
    command += ["--model", model, "--batch-size", str(batch_size), "--language", "en", "--force", "--quiet", *extra]
    started = time.perf_counter()
    completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if completed.returncode not in (0, 1):
        sys.exit(f"run failed with exit code {completed.returncode}:\n{completed.stderr[-3000:]}")
    return time.perf_counter() - started


def manifests(out: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(out.rglob("*.manifest.json"))]


def run_report(out: Path) -> dict[str, Any]:
    return json.loads(max((out / "_runs").glob("*.json"), key=lambda path: path.stat().st_mtime).read_text())


def show_nvml() -> None:
    import pynvml
    import torch

    probe = probe_for_device("cuda")
    if probe is None:
        sys.exit("no NVML probe for cuda:0 (see the log line above)")
    for device in list_nvml_devices(pynvml):
        print(f"  NVML device {device.index if device.index is not None else 'MIG'}: {device.uuid} pci {device.pci}")
    free, total = probe.free_and_total() or (0, 0)
    cuda_free, cuda_total = torch.cuda.mem_get_info(0)
    print(f"  cuda:0 -> {probe.uuid}: NVML {format_bytes(free)} free of {format_bytes(total)}")
    print(f"  CUDA's own figure: {format_bytes(cuda_free)} free of {format_bytes(cuda_total)}")
    print(f"  difference: {abs(free - cuda_free) / MiB:.0f} MiB free, {abs(total - cuda_total) / MiB:.0f} MiB total")


def show_gpu_records(out: Path) -> int:
    """Prints each file's batch sizes per stage; returns how many files failed."""
    failed = 0
    for manifest in manifests(out):
        key = manifest["input"]["key"]
        if manifest["status"] != "succeeded":
            failed += 1
            print(f"  FAILED {key}: {manifest.get('error')}")
            continue
        stages = ", ".join(
            f"{stage} {record['batch_size_planned']}->{record['batch_size_used']} "
            f"(retries {record['oom_retries']}, free {format_bytes(record['free_bytes'])})"
            for stage, record in (manifest.get("gpu") or {}).items()
        )
        print(f"  {key}: {stages or 'no gpu record'}")
    return failed


def squeeze(corpus: Path, work: Path, model: str, ceiling: int, leave_gib: float, extra: list[str]) -> None:
    import torch

    free, _ = torch.cuda.mem_get_info(0)
    ballast_bytes = max(0, free - int(leave_gib * GiB))
    ballast = torch.empty(ballast_bytes, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print(f"  ballast {format_bytes(ballast_bytes)} held here; {format_bytes(torch.cuda.mem_get_info(0)[0])} left")
    try:
        seconds = run_cli(corpus, work / "squeeze", model, ceiling, extra)
    finally:
        del ballast
        torch.cuda.empty_cache()
    failed = show_gpu_records(work / "squeeze")
    print(f"  {seconds:.1f} s; {failed} failed file(s) {'(OK)' if failed == 0 else '(EXPECTED NONE)'}")


def throughput(corpus: Path, work: Path, model: str, ceiling: int, fixed: list[int], extra: list[str]) -> None:
    print(f"  {'batch size':<22} {'wall s':>8} {'x realtime':>11} {'used (asr)':>12}")
    for label, size in [(f"adaptive, ceiling {ceiling}", ceiling)] + [(f"fixed {size}", size) for size in fixed]:
        out = work / f"speed-{size}"
        seconds = run_cli(corpus, out, model, size, extra)
        audio = run_report(out)["audio_seconds"] or 0.0
        used = sorted({(m.get("gpu") or {}).get("asr", {}).get("batch_size_used") for m in manifests(out)} - {None})
        print(f"  {label:<22} {seconds:8.1f} {audio / seconds:11.2f} {','.join(map(str, used)):>12}")


def creep(corpus: Path, work: Path, model: str, ceiling: int, copies: int, extra: list[str]) -> None:
    many = work / "many"
    many.mkdir()
    sources = sorted(corpus.iterdir())
    for index in range(copies):
        source = sources[index % len(sources)]
        shutil.copy(source, many / f"{index:05d}{source.suffix}")
    probe = probe_for_device("cuda")
    assert probe is not None
    out = work / "creep"
    floors: list[int] = []
    done = threading.Event()

    def sample_between_files() -> None:
        # The least used memory seen between two manifests is the level the card settles to after a file.
        seen, floor = 0, None
        while not done.wait(0.2):
            used = probe.used()
            floor = used if floor is None or (used is not None and used < floor) else floor
            count = len(list(out.rglob("*.manifest.json"))) if out.exists() else 0
            if count > seen and floor is not None:
                floors.append(floor)
                seen, floor = count, None

    sampler = threading.Thread(target=sample_between_files, daemon=True)
    sampler.start()
    try:
        seconds = run_cli(many, out, model, ceiling, extra)
    finally:
        done.set()
        sampler.join()
    if len(floors) < 20:
        print(f"  only {len(floors)} samples: give more files")
        return
    first, last = statistics.median(floors[:10]), statistics.median(floors[-10:])
    verdict = "flat (OK)" if last - first <= CREEP_LIMIT_BYTES else "CREEPS"
    print(
        f"  {copies} files in {seconds:.0f} s; used between files: first 10 {format_bytes(first)}, "
        f"last 10 {format_bytes(last)}, max {format_bytes(max(floors))}: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large-v3")
    parser.add_argument("--corpus", type=Path, help="folder of recordings (default: the talks corpus)")
    parser.add_argument("--leave-gib", type=float, default=6.0, help="free memory left beside the ballast")
    parser.add_argument("--ceiling", type=int, default=64, help="--batch-size of the adaptive runs")
    parser.add_argument("--fixed", default="4,16", help="fixed batch sizes to compare")
    parser.add_argument("--creep-files", type=int, default=200)
    parser.add_argument("--extra", default="", help="more flags for every run, e.g. '--no-align'")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra = shlex.split(args.extra)

    work = Path(tempfile.mkdtemp(prefix="whisperx-batch-gpu-"))
    corpus = args.corpus or ensure_corpus("talks").folder  # 8 recordings of ~1.5 min, cached in out/bench/corpora
    print("1. NVML")
    show_nvml()
    print(f"2. squeezed run: --batch-size {args.ceiling} with {args.leave_gib} GiB left free")
    squeeze(corpus, work, args.model, args.ceiling, args.leave_gib, extra)
    print("3. throughput, no ballast")
    throughput(corpus, work, args.model, args.ceiling, [int(size) for size in args.fixed.split(",")], extra)
    print(f"4. memory between files over {args.creep_files} files")
    creep(corpus, work, args.model, args.ceiling, args.creep_files, extra)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
