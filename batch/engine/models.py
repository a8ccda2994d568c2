"""The model cache, the Hugging Face token, and `whisperx-batch models pull`.

`--model-dir` (or HF_HOME) decides where every model is cached; with HF_HUB_OFFLINE=1 every stage loads
from there or fails naming the missing model. `models pull` fills the cache ahead of time so a container
or an air-gapped machine runs with no network.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batch.common.errors import ConfigError, EnvironmentProblem, redact, register_secret
from batch.settings.options import Settings

log = logging.getLogger(__name__)

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_local(reference: str) -> bool:
    return os.path.isabs(reference)


def hf_token(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The Hugging Face token and where it came from (never the value in any message).

    Order: the file named by `hf_token_file` (a mounted Kubernetes secret), HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
    then a token stored by `hf auth login`.
    """
    if settings.hf_token_file:
        try:
            token = Path(settings.hf_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError("hf_token_file", f"cannot read the token file: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError("hf_token_file", "the token file is empty")
        register_secret(token)
        return token, "hf_token_file"
    environ = os.environ if environ is None else environ
    for name in TOKEN_ENV_VARS:
        if environ.get(name, "").strip():
            return environ[name].strip(), name
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:
        token = None
    if token:
        register_secret(token)
        return token, "huggingface_hub login"
    return None, None


def require_diarization_token(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> tuple[str | None, str | None]:
    """The token diarization uses and where it came from, (None, None) without --diarize; a ConfigError (exit 2)
    before any file when diarization would need a token that is not there."""
    if not settings.diarize:
        return None, None
    token, source = hf_token(settings, environ)
    if token is None and not is_local(settings.diarize_model) and not hub_offline(environ):
        raise ConfigError(
            "hf_token",
            f"--diarize with {settings.diarize_model} needs a Hugging Face token: accept the model's terms at "
            f"https://hf.co/{settings.diarize_model}, then set HF_TOKEN or give --hf-token-file (a file holding "
            "the token, e.g. a mounted secret). The token is never printed or recorded.",
        )
    return token, source


# CTranslate2 reads a Whisper model as multilingual when its vocabulary has at least this many tokens.
MULTILINGUAL_VOCABULARY = 51865


def english_only(model: str) -> bool | None:
    """Whether a Whisper model reads English only, told without loading it: from a name (`tiny.en`,
    `Systran/faster-whisper-small.en`) or a local folder's vocabulary; None when it cannot be told."""
    if not is_local(model):
        from faster_whisper.utils import available_models

        return True if model.endswith(".en") else (False if model in available_models() else None)
    folder = Path(model)
    try:
        if (folder / "vocabulary.json").is_file():
            size = len(json.loads((folder / "vocabulary.json").read_text(encoding="utf-8")))
        else:
            size = len((folder / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    except (OSError, ValueError):
        return None
    return size < MULTILINGUAL_VOCABULARY


def cached_english_only(model: str, cache_dir: str | None) -> bool | None:
    """For a hub model already in the cache, what its files say (no network); None when it is not there."""
    try:
        from faster_whisper.utils import download_model

        folder = download_model(model, local_files_only=True, cache_dir=cache_dir)
    except Exception:  # not in the cache: the loaded model tells
        return None
    return english_only(str(Path(folder).absolute()))


def resolved_language(language: str, model: str) -> str:
    """The language a transcript is read in, as far as the settings tell: `auto` on an English-only model is `en`.
    Told from the name or local folder only (never the cache), so that the settings hash built on it does not
    change with what happens to be cached."""
    return "en" if language == "auto" and english_only(model) else language


def asr_load_failure(model: str, exc: BaseException, offline: bool) -> EnvironmentProblem:
    if offline and not is_local(model):
        return EnvironmentProblem(
            f"ASR model {model!r} is not in the model cache and HF_HUB_OFFLINE is set: run "
            f"`whisperx-batch models pull --model {model}` where there is network (same --model-dir / HF_HOME)"
        )
    reason = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
    return EnvironmentProblem(f"cannot load the ASR model {model!r}: {reason}")


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
    from batch.engine.align.aligner import Aligner, AlignmentUnavailable, ensure_punkt, punkt_root

    default, per_language = settings.align_models()
    aligner = Aligner("cpu", settings.model_dir, hub_offline(), default, per_language)
    name = aligner.model_for(language)
    if name is None:
        return Pulled("align", language, "failed", f"no alignment model for '{language}': give --align-model")
    try:
        aligner.load(language, name)
        ensure_punkt(language, punkt_root(settings.model_dir))
    except AlignmentUnavailable as exc:
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
