"""`whisperx-batch doctor`: can this machine run the job? One row per check, and what to do about each problem.

Each check returns a Check (ok, warn, fail or skip). `fail` marks what would stop a run (exit 3); `warn`
what would let it run worse than asked (the CPU instead of a GPU, a model downloaded on first use).
Known failure modes (cuBLAS not found, no CUDA device, torch.load weights_only refusals, gated models, an
offline cache without the model) are turned into one line that says what to do, by `advice_for`.

The GPU and the Hub are reached through two seams, `probe_gpu` and `hub_access`, so that tests can stand
in for a GPU machine or a gated repository. No secret is ever printed: the token is said to be present,
and from where, never what it is.

The checks live in modules by what they look at: `cuda` (the NVIDIA driver, CUDA, cuBLAS and cuDNN, judged as
a run judges them by `batch.engine.gpu.device`, whose `probe_gpu` is the seam), `gpus` (each GPU NVML lists, and
the workers `--gpus` would start), `models` (the models and the Hugging Face token; the seam
`batch.cli.doctor.models.hub_access`), `places` (SOURCE, DEST and the model cache), `system` (versions, CPUs, the
decoder, ffmpeg). `batch.common.advice` holds the Check row and the known failure modes (`advice_for`). GPUs are
listed through NVML, which tests replace with a fake module (tests/nvml_fakes.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict

from batch.cli.doctor import cuda, gpus, models, places, system
from batch.common.advice import Check
from batch.common.errors import EXIT_ENVIRONMENT, EXIT_OK, redact
from batch.engine.gpu import device
from batch.settings.options import Settings

__all__ = ["Check", "checks_json", "exit_code", "format_checks", "run_doctor"]


# ---------------------------------------------------------------------------------------------------------
# The checks


def run_doctor(settings: Settings) -> list[Check]:
    """Every check, in the order a person reads them."""
    token, token_check = models.token_status(settings)
    checks = [system.versions_check(), system.cpus_check()]
    facts = device.probe_gpu()
    checks += cuda.device_checks(facts, settings.device)
    checks += gpus.gpu_checks(settings, device.gpu_problem(facts))
    checks += [system.decoder_check(), system.ffmpeg_check()]
    checks += models.model_checks(settings, token)
    checks += [token_check, places.source_check(settings), places.dest_check(settings)]
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    return EXIT_ENVIRONMENT if any(check.status == "fail" for check in checks) else EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# Output


def format_checks(checks: list[Check]) -> str:
    """A plain table (no colours: it goes to logs too), then one verdict line."""
    width = max(len("CHECK"), *(len(check.name) for check in checks)) + 2
    lines = [f"{'CHECK':<{width}}{'STATUS':<8}DETAIL"]
    for check in checks:
        lines.append(redact(f"{check.name:<{width}}{check.status:<8}{check.detail}"))
        if check.fix and check.status in ("warn", "fail"):
            lines.append(redact(f"{'':<{width + 8}}-> {check.fix}"))
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    if failed:
        lines.append(f"doctor: {failed} problem(s) would stop a run (exit {EXIT_ENVIRONMENT})")
    else:
        lines.append(f"doctor: ready to run ({warned} warning(s))")
    return "\n".join(lines)


def checks_json(checks: list[Check]) -> str:
    document = {
        "ready": exit_code(checks) == EXIT_OK,
        "exit_code": exit_code(checks),
        "checks": [asdict(check) for check in checks],
    }
    return redact(json.dumps(document, ensure_ascii=False, indent=2))
