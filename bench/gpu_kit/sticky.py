"""Step `sticky`: a real sticky CUDA error in one process (a worker), and what recovers from it (item 2 of issue 35).

A child process loses its CUDA context to a device-side assert (an index past a tensor's end, checked by torch's
indexing kernel: the kind of error after which the context runs nothing more). It records the error's text word
for word, whether the project's `is_context_lost` knows it and what `raise_if_context_lost` makes of it, and
whether a plain CUDA call after it fails too (sticky). Meanwhile this step's own process holds a context on the
same card, and uses it after the child is gone (`bystander`: another worker on the card); then a fresh process
computes on the card (`fresh`: the worker the pool starts in the lost one's place), with the seconds it took to
be ready. The pool's own handling of the lost worker is tested at its seam (tests/run); this is what the card
and the driver do.

`python -m bench.gpu_kit.sticky lose|fresh` are the two children; each prints one JSON line (`MARK`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.gpu_kit.steps import StepContext, error_text

MARK = "gpu-kit-sticky: "


def first_line(exc: BaseException) -> str:
    return (error_text(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def classify(exc: BaseException) -> dict[str, Any]:
    """What the project makes of `exc`: whether it is a lost context, and CudaContextLost's message."""
    from batch.engine.gpu.oom import CudaContextLost, is_context_lost, is_out_of_memory, raise_if_context_lost

    figures: dict[str, Any] = {"error": first_line(exc), "context_lost": is_context_lost(exc)}
    figures["out_of_memory"] = is_out_of_memory(exc)
    try:
        raise_if_context_lost(exc)
        figures["raised"] = None
    except CudaContextLost as lost:
        figures["raised"] = str(lost)
    return figures


def lose_context() -> dict[str, Any]:
    """Lose this process's CUDA context to a device-side assert; what the project makes of the error, and of
    the next CUDA call."""
    import torch

    values = torch.zeros(4, device="cuda")
    torch.cuda.synchronize()
    figures: dict[str, Any] = {}
    try:
        values[torch.tensor([1_000_000], device="cuda")].sum().item()  # .item() waits for the kernel
        figures["failed"] = False
        return figures
    except Exception as exc:
        figures.update(failed=True, **classify(exc))
    try:
        (torch.ones(1, device="cuda") + 1).item()
        figures["next_call"] = {"failed": False}
    except Exception as exc:
        figures["next_call"] = {"failed": True, **classify(exc)}
    return figures


def fresh_process() -> dict[str, Any]:
    """How long a new process takes to compute on the card (import torch, a context, one kernel)."""
    started = time.perf_counter()
    import torch

    imported = time.perf_counter()
    value = (torch.ones(1024, device="cuda") * 2).sum().item()
    return {
        "ok": value == 2048.0,
        "import_s": round(imported - started, 2),
        "ready_s": round(time.perf_counter() - started, 2),
    }


def child(role: str, timeout: float) -> dict[str, Any]:
    """Run `python -m bench.gpu_kit.sticky ROLE`; its figures, or what went wrong."""
    command = [sys.executable, "-m", "bench.gpu_kit.sticky", role]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"ok": False, "output": f"timed out after {timeout:.0f} s"}
    figures = next(
        (json.loads(line[len(MARK) :]) for line in reversed(done.stdout.splitlines()) if line.startswith(MARK)), None
    )
    result = {"exit_code": done.returncode, "seconds": round(time.perf_counter() - started, 2)}
    if figures is None:
        result["output"] = (done.stdout + done.stderr).strip()[-1500:]
    return {**result, **(figures or {})}


def sticky_step(context: StepContext) -> dict[str, Any]:
    import torch

    bystander = torch.ones(1024, device="cuda")  # this process's context, open while the child loses its own
    torch.cuda.synchronize()
    result: dict[str, Any] = {"lost": child("lose", max(5.0, context.left() / 2))}
    try:
        result["bystander"] = {"ok": float((bystander * 2).sum().item()) == 2048.0}
    except Exception as exc:
        result["bystander"] = {"ok": False, **classify(exc)}
    result["fresh"] = child("fresh", max(5.0, context.left() - 2))
    return result


if __name__ == "__main__":
    roles = {"lose": lose_context, "fresh": fresh_process}
    if len(sys.argv) != 2 or sys.argv[1] not in roles:
        sys.exit("usage: python -m bench.gpu_kit.sticky lose|fresh")
    print(MARK + json.dumps(roles[sys.argv[1]](), default=str), flush=True)
