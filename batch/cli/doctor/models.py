"""The doctor's model checks: the Hub cache, the ASR, VAD, alignment and diarization models, the HF token.

`hub_access` is the seam through which they ask the Hub, so that tests can stand in for a gated repository.
No secret is ever printed: the token is said to be present, and from where, never what it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from batch.cli.doctor.places import cache_check
from batch.common.advice import Check, Status, advice_for, short_error
from batch.common.errors import redact
from batch.common.model_names import MODEL_FILES
from batch.engine.loading import hub_offline, is_local
from batch.settings.options import Settings

# Of what faster-whisper downloads for a model (MODEL_FILES), the one that matters.
MODEL_FILE = "model.bin"
# Ends the detail of a model row whose model a run would download (so the cache must be writable).
DOWNLOAD_NOTE = "downloaded by the first run"


# ---------------------------------------------------------------------------------------------------------
# Seam: the real Hub probe


def hub_access(repo_id: str, token: str | None) -> str | None:
    """None when the Hub would let this token download `repo_id`; otherwise the error, as text."""
    try:
        import huggingface_hub

        huggingface_hub.auth_check(repo_id, token=token or False)
    except Exception as exc:
        return short_error(exc)
    return None


# --- models ------------------------------------------------------------------------------------------------


def hub_cache_dir(settings: Settings) -> Path:
    """Where a run caches Hub models: --model-dir, else the Hugging Face hub cache (HF_HOME/hub)."""
    if settings.model_dir:
        return Path(settings.model_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def model_checks(settings: Settings, token: str | None) -> list[Check]:
    """One row per model the settings name (ASR, VAD, alignment per language, diarization), and the cache."""
    cache = hub_cache_dir(settings)
    offline = hub_offline()
    rows = [asr_model_check(settings.model, cache, offline, token), vad_check(settings.vad_method, offline)]
    if settings.align:
        rows += [align_model_check(settings, language, offline, token) for language in align_languages(settings)]
    if settings.diarize:
        rows.append(diarize_model_check(settings, cache, offline, token))
    downloads = any(row.detail.endswith(DOWNLOAD_NOTE) for row in rows)
    return [cache_check(cache, downloads), *rows]


def align_languages(settings: Settings) -> tuple[str, ...]:
    """The languages whose alignment model doctor checks: the job's language, or English (as `models pull`)."""
    return (settings.language,) if settings.language != "auto" else ("en",)


def find_cached_snapshot(repo_id: str, cache: Path, required: str, patterns: list[str] | None = None) -> Path | None:
    """The snapshot folder of a Hub repo in the cache, when `required` is in it; never touches the network."""
    import huggingface_hub

    try:
        folder = Path(
            huggingface_hub.snapshot_download(
                repo_id, cache_dir=str(cache), local_files_only=True, allow_patterns=patterns
            )
        )
    except Exception:
        return None
    return folder if (folder / required).is_file() else None


def _hub_model_check(
    name: str, label: str, repo_id: str, found: Path | None, offline: bool, token: str | None, impact: Status
) -> Check:
    """A Hub model: present; or missing, judged by whether the run could fetch it (`impact` if it could not)."""
    if found is not None:
        return Check(name, "ok", f"{label}: in the cache ({found})")
    if offline:
        detail = f"{label} is not in the cache, and HF_HUB_OFFLINE=1 forbids downloading it"
        return Check(name, impact, detail, advice_for("LocalEntryNotFoundError"))
    error = hub_access(repo_id, token)
    if error is not None:
        return Check(name, impact, f"{label} is not in the cache and cannot be downloaded: {error}", advice_for(error))
    return Check(name, "warn", f"{label} is not in the cache yet: " + DOWNLOAD_NOTE)


def asr_model_check(model: str, cache: Path, offline: bool, token: str | None) -> Check:
    name = "asr model"
    if is_local(model):
        folder = Path(model)
        if not folder.is_dir():
            return Check(name, "fail", f"model folder not found: {model}", "give an existing CTranslate2 folder")
        if not (folder / MODEL_FILE).is_file():
            fix = "give a CTranslate2 model folder (faster-whisper format), or a Whisper name such as large-v3"
            return Check(name, "fail", f"{model} holds no {MODEL_FILE}: not a CTranslate2 model", fix)
        return Check(name, "ok", f"{model} (local folder)")
    from batch.common.model_names import whisper_models

    repo_id = whisper_models().get(model, model)  # faster-whisper's own name -> repo table
    found = find_cached_snapshot(repo_id, cache, MODEL_FILE, list(MODEL_FILES))
    return _hub_model_check(name, f"{model} ({repo_id})", repo_id, found, offline, token, "fail")


def align_model_check(settings: Settings, language: str, offline: bool, token: str | None) -> Check:
    """The wav2vec2 model that times words in `language`. Missing, it fails the files (not the run)."""
    from batch.engine.align.aligner import Aligner

    default, per_language = settings.align_models()
    model = Aligner("cpu", settings.model_dir, offline, default, per_language).model_for(language)
    name = f"align model ({language})"
    # With language auto only the files detected in this language need it; a fixed language means every file.
    impact: Status = "fail" if settings.language != "auto" else "warn"
    if model is None:
        fix = "give one with --align-model LANG=MODEL, or --no-align"
        return Check(name, "warn", f"no alignment model for '{language}': words are not timed", fix)
    if is_local(model):
        ok = (Path(model) / "config.json").is_file()
        return Check(name, "ok" if ok else impact, f"{model} (local folder)" + ("" if ok else ": no config.json"))
    checkpoint = torchaudio_checkpoint(model, settings.model_dir)
    if checkpoint is not None:
        if checkpoint.is_file():
            return Check(name, "ok", f"{model}: in the cache ({checkpoint})")
        if offline:
            fix = advice_for("LocalEntryNotFoundError")
            return Check(name, impact, f"{model} is not in the cache ({checkpoint}) and HF_HUB_OFFLINE=1", fix)
        return Check(name, "warn", f"{model} (torchaudio) is not in the cache yet: " + DOWNLOAD_NOTE)
    cache = hub_cache_dir(settings)
    found = find_cached_snapshot(model, cache, "config.json")
    return _hub_model_check(name, model, model, found, offline, token, impact)


def torchaudio_checkpoint(model: str, model_dir: str | None) -> Path | None:
    """Where torchaudio keeps a pipeline's checkpoint (e.g. WAV2VEC2_ASR_BASE_960H); None for other names."""
    import torch
    import torchaudio

    bundle = torchaudio.pipelines.__dict__.get(model)
    path = getattr(bundle, "_path", None)
    if not path:
        return None
    folder = Path(model_dir) if model_dir else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / os.path.basename(path)


def diarize_model_check(settings: Settings, cache: Path, offline: bool, token: str | None) -> Check:
    """The pyannote pipeline; gated on the Hub, so a token matters when it is not cached."""
    name, model = "diarize model", settings.diarize_model
    if is_local(model):
        ok = Path(model).exists()
        return Check(name, "ok" if ok else "fail", f"{model} (local)" + ("" if ok else ": not found"))
    found = find_cached_snapshot(model, cache, "config.yaml")
    if found is None and token is None and not offline:
        fix = advice_for("GatedRepoError")
        return Check(name, "fail", f"{model} is not in the cache and is gated: a token is needed to fetch it", fix)
    return _hub_model_check(name, model, model, found, offline, token, "fail")


def vad_check(vad_method: str, offline: bool) -> Check:
    if vad_method == "silero":
        return _silero_check(offline)
    try:
        from batch.engine.vad.segmentation import load_segmentation
        from batch.engine.vad.speech import BUNDLED_VAD_CHECKPOINT

        load_segmentation(BUNDLED_VAD_CHECKPOINT)
    except Exception as exc:
        error = short_error(exc)
        return Check("vad model", "fail", f"the bundled pyannote VAD does not load: {error}", advice_for(error))
    return Check("vad model", "ok", "pyannote (bundled with whisperx): loads with torch.load(weights_only=True)")


def _silero_check(offline: bool) -> Check:
    """The run uses the Silero ONNX model faster-whisper ships (no torch.hub): check it loads."""
    try:
        from faster_whisper.vad import get_vad_model

        get_vad_model()
    except Exception as exc:
        error = short_error(exc)
        return Check(
            "vad model",
            "fail",
            f"silero (bundled with faster-whisper) does not load: {error}",
            "reinstall faster-whisper, or use --vad-method pyannote",
        )
    return Check("vad model", "ok", "silero (ONNX, bundled with faster-whisper): loads")


# --- token ---------------------------------------------------------------------------------------------------


def token_status(settings: Settings) -> tuple[str | None, Check]:
    """The Hugging Face token (for the Hub checks) and a row that says where it comes from, never what it is."""
    from batch.common.errors import ConfigError
    from batch.engine.loading import hf_token

    try:
        token, origin = hf_token(settings.hf_token_file)
    except ConfigError as exc:
        fix = "mount the secret file there, readable by this user, or give HF_TOKEN instead"
        return None, Check("hf token", "fail", redact(str(exc)), fix)
    if token is None:
        return None, Check("hf token", "ok", "none (only gated models, such as speaker diarization, need one)")
    where = f"--hf-token-file {settings.hf_token_file}" if origin == "hf_token_file" else origin
    return token, Check("hf token", "ok", f"present (from {where})")
