"""Steps `ct2`, `asr` and `pipeline`: whether CTranslate2 runs on CUDA on the lent machine, what its JIT costs
there, and when it runs, the ASR's memory per item and throughput with a large-v3-shaped random model, and the GPU
busy share of the stages run one after the other on the kit's recording.

CTranslate2 4.x's CUDA build loads libcublas.so.12 when it first computes on CUDA; the lent machine's torch
brings CUDA 13's cuBLAS. `ct2` says what CTranslate2 reports (`get_cuda_device_count`,
`get_supported_compute_types("cuda")`), then decodes with a tiny model on CUDA in a subprocess as the machine is,
and, when that fails, with CUDA 13's cuBLAS offered under CUDA 12's names (`shim_dir`): what fails is recorded
word for word. The way that works (if any) is written to OUTDIR/steps/ct2_env.sh for `asr` and `pipeline`;
when none does, OUTDIR/steps/ct2_unusable holds the reason and both say so instead of measuring.

CTranslate2's kernels carry machine code up to sm_86 and PTX for compute_86: on an sm_90 card the driver
compiles them at their first use, into CUDA's JIT cache (run.sh points CUDA_CACHE_PATH at OUTDIR/cuda-cache,
emptied first). So the first smoke run that works is cold and has most of the step's time (the JIT must not be
taken for a failure), and a second process decodes again from the cache: `jit` gives both times, what the JIT
took (the difference of their first decodes) and what the cache holds. Every later step reads the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gpu_kit.steps import CT2_ENV, StepContext, attempt

CT2_UNUSABLE = "ct2_unusable"
CUBLAS_NAMES = {"libcublas.so.12": "libcublas.so.13", "libcublasLt.so.12": "libcublasLt.so.13"}
ASR_SIZES = (1, 2, 4, 8, 16)
ASR_TOKENS = 64  # tokens decoded per 30 s window (a window of speech holds ~60-120)
MiB = 2**20


SYSTEM_LIBRARY_DIRS = ("/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu")


def find_library(name: str) -> Path | None:
    """`name` in pip's NVIDIA wheels on sys.path (nvidia/cublas/lib, nvidia/cu13/lib), else in a system CUDA."""
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        if nvidia.is_dir():
            for candidate in sorted(nvidia.glob(f"*/lib/{name}")):
                return candidate
    for folder in SYSTEM_LIBRARY_DIRS:
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def shim_dir(where: Path) -> Path | None:
    """A folder where CUDA 12's cuBLAS names lead to CUDA 13's libraries (CTranslate2 dlopens libcublas.so.12 and
    looks its functions up by name); None when those are not found. The real names are linked too: cuBLAS finds
    its cublasLt beside itself ($ORIGIN), which is this folder when it is opened through it."""
    targets = {alias: find_library(real) for alias, real in CUBLAS_NAMES.items()}
    if any(target is None for target in targets.values()):
        return None
    where.mkdir(parents=True, exist_ok=True)
    links = {**targets, **{target.name: target for target in targets.values() if target is not None}}
    for name, target in links.items():
        link = where / name
        if not link.exists() and target is not None:
            link.symlink_to(target.resolve())
    return where


#: seconds of the ct2 step kept for the decode from the JIT cache, once a cold one has worked
FROM_CACHE_SECONDS = 20.0


def smoke_run(
    folder: Path, library_path: Path | None, timeout: float, device: str = "cuda", compute_type: str = "default"
) -> dict[str, Any]:
    """The tiny model decoded on `device` by a subprocess (with `library_path` first on the loader's path); its
    exit code, the end of what it printed, its wall time and the figures it printed (`whisper_ct2.smoke`)."""
    from bench.gpu_kit.whisper_ct2 import smoke_figures

    env = dict(os.environ)
    if library_path is not None:
        env["LD_LIBRARY_PATH"] = f"{library_path}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    command = [sys.executable, "-m", "bench.gpu_kit.whisper_ct2", "smoke", str(folder), device, compute_type]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "timed_out": True,
            "output": f"timed out after {timeout:.0f} s",
            "seconds": round(timeout, 1),
        }
    output = (done.stdout + done.stderr).strip()
    return {
        "ok": done.returncode == 0,
        "exit_code": done.returncode,
        "output": output[-1500:],
        "seconds": round(time.perf_counter() - started, 2),
        "figures": smoke_figures(done.stdout),
    }


def jit_cache() -> dict[str, Any]:
    """CUDA's JIT cache as this process's children see it: its settings, and the files and MiB it holds."""
    path = os.environ.get("CUDA_CACHE_PATH")
    state: dict[str, Any] = {"path": path, "maxsize": os.environ.get("CUDA_CACHE_MAXSIZE")}
    state["disabled"] = os.environ.get("CUDA_CACHE_DISABLE") == "1"
    if path and Path(path).is_dir():
        files = [entry for entry in Path(path).rglob("*") if entry.is_file()]
        state.update(files=len(files), mib=round(sum(entry.stat().st_size for entry in files) / MiB, 1))
    return state


def empty_jit_cache() -> None:
    """Empty the kit's JIT cache (a failed attempt may have compiled part of what the next one needs)."""
    path = os.environ.get("CUDA_CACHE_PATH")
    if path and Path(path).is_dir():
        for entry in Path(path).iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def jit_figures(cold: dict[str, Any], cached: dict[str, Any]) -> dict[str, Any]:
    """What the JIT cost: the cold and the cached run's first decode (the JIT is in the cold one), their wall
    times, and the cache they left."""
    first_cold = (cold.get("figures") or {}).get("first_decode_s")
    first_cached = (cached.get("figures") or {}).get("first_decode_s")
    figures: dict[str, Any] = {
        "compute_type": (cold.get("figures") or {}).get("compute_type"),
        "cold_first_decode_s": first_cold,
        "cached_first_decode_s": first_cached,
        "cold_run_s": cold.get("seconds"),
        "cached_run_s": cached.get("seconds"),
        "cache_works": cached.get("ok"),
    }
    if first_cold is not None and first_cached is not None:
        figures["jit_s"] = round(first_cold - first_cached, 2)
    figures["cache"] = jit_cache()
    return figures


def converter_check(folder: Path) -> dict[str, Any]:
    """Whether CTranslate2's converter, under the transformers here (5.x on the lent machine), made the model it
    makes under the versions the project is tested with (`whisper_ct2.SMOKE_FINGERPRINT`)."""
    import transformers

    from bench.gpu_kit.whisper_ct2 import SMOKE_FINGERPRINT, fingerprint

    made = fingerprint(folder)
    return {"transformers": transformers.__version__, "fingerprint": made, "as_tested": made == SMOKE_FINGERPRINT}


def ct2_step(context: StepContext) -> dict[str, Any]:
    return ct2_figures(context, "cuda")


def ct2_figures(context: StepContext, device: str) -> dict[str, Any]:
    """The `ct2` step on `device` (the tests run its whole way on the CPU)."""
    import ctranslate2

    from bench.gpu_kit.probes import library_loads
    from bench.gpu_kit.whisper_ct2 import SMOKE, build

    result: dict[str, Any] = {"version": ctranslate2.__version__, "file": ctranslate2.__file__}
    attempt(result, "cuda_device_count", ctranslate2.get_cuda_device_count)
    attempt(result, "cuda_compute_types", lambda: sorted(ctranslate2.get_supported_compute_types("cuda")))
    result["libraries"] = library_loads()
    temporary = Path(os.environ.get("GPU_KIT_TMP") or tempfile.mkdtemp())
    folder = temporary / "whisper-smoke"
    build(folder, SMOKE)
    result["converter"] = converter_check(folder)
    result["cache_before"] = jit_cache()

    # compute type "default": the model's own, float16 (the project's type on CUDA, asr's); the CPU's float32
    def cold_run(library_path: Path | None) -> dict[str, Any]:
        return smoke_run(folder, library_path, max(5.0, context.left() - FROM_CACHE_SECONDS), device)

    result["as_is"] = cold_run(None)
    way = "as is" if result["as_is"]["ok"] else None
    shim = None
    if way is None and not result["as_is"].get("timed_out"):  # no time is left for another
        shim = shim_dir(temporary / "cublas12-shim")
        if shim is None:
            result["cuda13_shim"] = {"ok": False, "output": "CUDA 13's libcublas.so.13 not found under nvidia/*/lib"}
        else:
            result["cache_after_as_is"] = jit_cache()
            empty_jit_cache()  # so that the shim's run is cold
            result["cuda13_shim"] = {"dir": str(shim), **cold_run(shim)}
            way = "cuBLAS 13 under CUDA 12's names" if result["cuda13_shim"]["ok"] else None
    result["works"] = way
    steps = context.steps_dir
    if way is None:
        reason = result["as_is"]["output"].splitlines()[-1] if result["as_is"]["output"] else "no output"
        (steps / CT2_UNUSABLE).write_text(f"CTranslate2 cannot run on CUDA here: {reason}\n")
        result["cache_after"] = jit_cache()
        return result
    export = f'export LD_LIBRARY_PATH="{shim}:${{LD_LIBRARY_PATH:-}}"\n' if shim else "# CTranslate2 runs as is\n"
    (steps / CT2_ENV).write_text(export)
    cached = smoke_run(folder, shim, max(5.0, context.left() - 3), device)
    result["from_cache"] = cached
    result["jit"] = jit_figures(result["cuda13_shim" if shim else "as_is"], cached)
    return result


def unusable_reason(context: StepContext) -> str | None:
    marker = context.steps_dir / CT2_UNUSABLE
    if marker.exists():
        return marker.read_text().strip()
    if not (context.steps_dir / CT2_ENV).exists():
        return "the ct2 step did not finish"
    return None


def load_large(context: StepContext) -> tuple[Any, dict[str, Any]]:
    import ctranslate2

    from bench.gpu_kit.whisper_ct2 import LARGE_V3, build

    figures: dict[str, Any] = {}
    folder = Path(os.environ.get("GPU_KIT_TMP") or tempfile.mkdtemp()) / "whisper-large-v3-random"
    if not (folder / "model.bin").exists():  # the asr step's, reused by the pipeline step
        import torch

        started = time.perf_counter()
        figures["parameters"] = build(folder, LARGE_V3, init_device="cuda")
        figures["build_seconds"] = round(time.perf_counter() - started, 1)
        torch.cuda.empty_cache()  # the build's float32 copy on the GPU
    started = time.perf_counter()
    model = ctranslate2.models.Whisper(str(folder), device="cuda", compute_type="float16")
    figures["load_seconds"] = round(time.perf_counter() - started, 1)
    return model, figures


def asr_step(context: StepContext) -> dict[str, Any]:
    reason = unusable_reason(context)
    if reason is not None:
        return {"skipped": reason}
    from bench.gpu_kit.measuring import CudaMeter, memory_per_item, throughput
    from bench.gpu_kit.stage_steps import sizer_constant
    from bench.gpu_kit.whisper_ct2 import LARGE_V3, decode

    model, result = load_large(context)
    result.update(tokens_per_window=ASR_TOKENS, beam_size=5, compute_type=model.compute_type)

    def run(size: int) -> None:
        decode(model, size, LARGE_V3, ASR_TOKENS)

    # Memory first, in ascending sizes after a warm-up. torch cannot empty CTranslate2's allocator: NVML's growth
    # over a batch is what it took beyond the blocks CTranslate2 kept cached (CT2_CUDA_CACHING_ALLOCATOR_CONFIG
    # bounds them), an offset the line's intercept takes, not its slope.
    attempt(result, "memory", lambda: memory_per_item(run, ASR_SIZES, CudaMeter(), context.left, sizer_constant("asr")))
    attempt(
        result,
        "throughput",
        lambda: throughput(run, ASR_SIZES, 30.0, lambda: None, lambda: context.left() - 30, min_seconds=0.0),
    )
    if context.left() > 25:
        attempt(result, "oom", lambda: asr_oom(model, context))
    return result


def asr_oom(model: Any, context: StepContext) -> dict[str, Any]:
    """The back-off on CTranslate2's own out-of-memory error, under the oom step's ballast."""
    from batch.engine.gpu.sizing import BatchSizer
    from bench.gpu_kit.measuring import ballast
    from bench.gpu_kit.oom_step import HEADROOM_BYTES, UNDERESTIMATE_BYTES, backoff_trial
    from bench.gpu_kit.whisper_ct2 import LARGE_V3, decode

    sizer = BatchSizer(256, {"asr": UNDERESTIMATE_BYTES}, None)
    with ballast(HEADROOM_BYTES):
        return backoff_trial("asr", sizer, lambda size: decode(model, size, LARGE_V3, 8))
