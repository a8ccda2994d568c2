"""`whisperx-batch models pull`: every model the settings name fetched into the cache ahead of time (with the
sentence data alignment needs), so that a container or an air-gapped machine runs with HF_HUB_OFFLINE=1.

It works from the settings before any run exists, through the engine's own loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batch.common.errors import ConfigError, EnvironmentProblem
from batch.engine.loading import asr_load_failure, hub_offline, is_local
from batch.run.config import require_diarization_token
from batch.settings.options import Settings


@dataclass(frozen=True)
class Pulled:
    kind: str
    name: str
    status: str  # ok | failed
    detail: str = ""


def pull(settings: Settings, align_languages: tuple[str, ...]) -> list[Pulled]:
    """Download (or check) every model the settings name into the cache; never raises for one model."""
    results = [_pull_asr(settings)]
    for language in align_languages:
        results.append(_pull_alignment(settings, language))
    if settings.diarize:
        results.append(_pull_diarization(settings))
    return results


def _pull_asr(settings: Settings) -> Pulled:
    from faster_whisper.utils import download_model

    if is_local(settings.model):
        ok = (Path(settings.model) / "model.bin").is_file()
        return Pulled("asr", settings.model, "ok" if ok else "failed", "" if ok else "no model.bin in the folder")
    try:
        path = download_model(settings.model, cache_dir=settings.model_dir, local_files_only=hub_offline())
    except Exception as exc:
        return Pulled("asr", settings.model, "failed", str(asr_load_failure(settings.model, exc, hub_offline())))
    return Pulled("asr", settings.model, "ok", path)


def _pull_alignment(settings: Settings, language: str) -> Pulled:
    from batch.engine.align.aligner import (
        Aligner,
        AlignmentModelNotLoaded,
        AlignmentUnavailable,
        ensure_punkt,
        punkt_root,
    )

    default, per_language = settings.align_models()
    aligner = Aligner("cpu", settings.model_dir, hub_offline(), default, per_language)
    name = aligner.model_for(language)
    if name is None:
        return Pulled("align", language, "failed", f"no alignment model for '{language}': give --align-model")
    try:
        aligner.load(language, name)
        ensure_punkt(language, punkt_root(settings.model_dir))
    except (AlignmentModelNotLoaded, AlignmentUnavailable) as exc:
        return Pulled("align", f"{name} ({language})", "failed", str(exc))
    return Pulled("align", f"{name} ({language})", "ok", "with sentence data (punkt_tab)")


def _pull_diarization(settings: Settings) -> Pulled:
    from batch.engine.diarize.diarizer import load_diarization

    try:
        token, _ = require_diarization_token(settings)
        load_diarization(settings.diarize_model, "cpu", token, settings.model_dir, hub_offline())
    except (ConfigError, EnvironmentProblem) as exc:
        return Pulled("diarize", settings.diarize_model, "failed", str(exc))
    return Pulled("diarize", settings.diarize_model, "ok")
