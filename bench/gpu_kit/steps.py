"""The kit's steps: what each measures, its time limit, and the runner that records its result or its error.

run.sh runs every step as `python -m bench.gpu_kit step NAME OUTDIR` under `timeout` (`Step.timeout`), so that
a hung CUDA call or a crash ends that step alone. `run_step` writes OUTDIR/steps/NAME.json: the step's result
(a dict of figures; a part of a step that fails writes its error in its place, `attempt`), or its error text
and the end of its traceback. Steps that need the GPU are skipped, saying why, once the `cuda` step has found
none (the NO_GPU marker).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NO_GPU = "no_gpu"  # OUTDIR/steps/no_gpu: written by the `cuda` step, holds the reason
CT2_ENV = "ct2_env.sh"  # OUTDIR/steps/ct2_env.sh: what the `ct2` step found CTranslate2 needs (sourced by run.sh)
TOTAL_SECONDS = 480  # run.sh's budget, install and report included: 8 minutes of the lent machine's 15
INSTALL_SECONDS = 25  # unpacking the wheels (seconds; the limit is for a slow disk)


@dataclass(frozen=True)
class Step:
    name: str
    target: str  # "module:function", the function taking a StepContext and returning a dict
    timeout: int  # seconds, run.sh's `timeout`
    needs_gpu: bool
    title: str


#: in the order run.sh runs them: `ct2` first after the install, so that CTranslate2's JIT (its kernels carry PTX
#: only up to compute_86: an sm_90 card compiles them) is paid once, timed, into OUTDIR/cuda-cache, before any
#: step that times or sizes anything. `alloc`'s 25 s were taken, 5 s each, from `oom`, `vad`, `align_large`, `embed`
#: and `asr`, whose sweeps stop early when their time runs short (`StepContext.left`)
STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("cuda", "bench.gpu_kit.probes:cuda_step", 20, False, "CUDA as torch sees it"),
        Step("ct2", "bench.gpu_kit.asr:ct2_step", 100, True, "CTranslate2 on CUDA, its JIT warmed once"),
        Step("device", "bench.gpu_kit.probes:device_step", 10, False, "device selection on a pip-style install"),
        Step("memory", "bench.gpu_kit.probes:memory_step", 10, True, "NVML free memory vs torch.cuda.mem_get_info"),
        Step("oom", "bench.gpu_kit.oom_step:oom_step", 30, True, "a real out-of-memory and the back-off, per stage"),
        Step("vad", "bench.gpu_kit.stage_steps:vad_step", 15, True, "VAD (PyanNet, 5 s windows)"),
        Step("align", "bench.gpu_kit.stage_steps:align_step", 30, True, "alignment, English (wav2vec2-base)"),
        Step(
            "align_large",
            "bench.gpu_kit.stage_steps:align_large_step",
            25,
            True,
            "alignment, most other languages (wav2vec2-large-xlsr-53)",
        ),
        Step("embed", "bench.gpu_kit.stage_steps:embed_step", 15, True, "speaker embeddings (WeSpeaker ResNet34)"),
        Step(
            "alloc",
            "bench.gpu_kit.alloc:alloc_step",
            25,
            True,
            "torch's allocator on padded batches of varying length: default against expandable segments",
        ),
        Step("asr", "bench.gpu_kit.asr:asr_step", 80, True, "ASR (large-v3-shaped random Whisper, CTranslate2)"),
        Step("pipeline", "bench.gpu_kit.busy:pipeline_step", 20, True, "GPU busy share over the stages on speech"),
        Step(
            "whisperx",
            "bench.gpu_kit.real_pipeline:whisperx_step",
            60,
            True,
            "the project's WhisperxPipeline on speech, and torch's cache against CTranslate2",
        ),
        Step("sticky", "bench.gpu_kit.sticky:sticky_step", 15, True, "a sticky CUDA error in one process, and after"),
    )
}


@dataclass
class StepContext:
    """What a step may use: where to write, the kit's folder (its recording), and how long it has."""

    out: Path
    kit: Path | None
    timeout: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds before run.sh's `timeout` ends this step."""
        return self.timeout - (time.monotonic() - self.started)

    @property
    def steps_dir(self) -> Path:
        return self.out / "steps"


def error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def attempt(result: dict[str, Any], key: str, call: Callable[[], Any]) -> Any:
    """result[key] = call(), or {"error": its error text} when it raises; returns the value (None on error)."""
    try:
        value = call()
    except Exception as exc:
        result[key] = {"error": error_text(exc)}
        return None
    result[key] = value
    return value


def no_gpu_reason(out: Path) -> str | None:
    marker = out / "steps" / NO_GPU
    return marker.read_text().strip() or "no GPU" if marker.exists() else None


def run_step(name: str, out: Path) -> int:
    """Run step `name` and write OUTDIR/steps/NAME.json; 0 whatever the step did (its record says)."""
    step = STEPS[name]
    context = StepContext(out, _kit_dir(), float(os.environ.get("GPU_KIT_STEP_TIMEOUT", step.timeout)))
    context.steps_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"step": name, "title": step.title}
    reason = no_gpu_reason(out) if step.needs_gpu else None
    if reason is not None:
        record.update(ok=False, skipped="no GPU", reason=reason)
    else:
        try:
            module, function = step.target.split(":")
            record["result"] = getattr(importlib.import_module(module), function)(context)
            record["ok"] = True
        except Exception as exc:
            record.update(ok=False, error=error_text(exc), traceback=traceback.format_exc(limit=-4)[-3000:])
    record["seconds"] = round(time.monotonic() - context.started, 2)
    path = context.steps_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


def _kit_dir() -> Path | None:
    kit = os.environ.get("GPU_KIT_DIR")
    return Path(kit) if kit else None
