"""`whisperx-batch doctor`: can this machine run the job? One row per check, and what to do about each problem.

Each check returns a Check (ok, warn, fail or skip). `fail` marks what would stop a run (exit 3); `warn`
what would let it run worse than asked (the CPU instead of a GPU, a model downloaded on first use).
Known failure modes (cuDNN not found, no CUDA device, torch.load weights_only refusals, gated models, an
offline cache without the model) are turned into one line that says what to do, by `advice_for`.

The GPU and the Hub are reached through two seams, `probe_gpu` and `hub_access`, so that tests can stand
in for a GPU machine or a gated repository. No secret is ever printed: the token is said to be present,
and from where, never what it is.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from batch.config import Settings
from batch.errors import EXIT_ENVIRONMENT, EXIT_OK, redact
from batch.logs import adopt_library_loggers
from batch.models import hub_offline, is_local

Status = Literal["ok", "warn", "fail", "skip"]

# The cuDNN library CTranslate2 (cuDNN 9 builds) loads by name when it first runs on CUDA.
CUDNN_OPS_LIBRARY = "libcudnn_ops.so.9"
# What faster-whisper downloads for a model; model.bin is the one that matters.
MODEL_FILE = "model.bin"
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
SILERO_HUB_FOLDER = "snakers4_silero-vad_master"
# Ends the detail of a model row whose model a run would download (so the cache must be writable).
DOWNLOAD_NOTE = "downloaded by the first run"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class GpuFacts:
    """What the NVIDIA driver (NVML), PyTorch and CTranslate2 say about CUDA on this machine."""

    driver_version: str | None = None
    driver_cuda: str | None = None  # newest CUDA the driver supports, "12.8"
    gpus: tuple[str, ...] = ()
    nvml_error: str | None = None
    torch_cuda_build: str | None = None  # CUDA PyTorch was built for; None for a CPU-only build
    torch_devices: int = 0
    torch_error: str | None = None
    ctranslate2_devices: int = 0
    cudnn_version: str | None = None
    cudnn_error: str | None = None  # why CUDNN_OPS_LIBRARY could not be loaded

    @property
    def usable(self) -> bool:
        return self.torch_devices > 0 and self.ctranslate2_devices > 0


# ---------------------------------------------------------------------------------------------------------
# Known failure modes -> what to do


def _cudnn_fix() -> str:
    folders = [str(path) for path in _pip_nvidia_lib_dirs()]
    where = (
        f"export LD_LIBRARY_PATH={':'.join(folders)}:$LD_LIBRARY_PATH"
        if folders
        else "pip install 'nvidia-cudnn-cu12==9.*' and add its lib folder to LD_LIBRARY_PATH"
    )
    return (
        "cuDNN 9 libraries not found by CTranslate2: use the image built from this project's Dockerfile "
        f"(CUDA 12.8 + cuDNN 9), or {where}"
    )


NO_DRIVER_FIX = (
    "no NVIDIA driver is visible: on the host, check `nvidia-smi`; in Docker, install the NVIDIA Container "
    "Toolkit and run with `--gpus all`; in Kubernetes, request `nvidia.com/gpu`; or run with --device cpu"
)
KNOWN_FAILURES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"libcudnn|cudnn.*(not found|cannot open|unable to load)|cudnnCreate", re.I), None),
    (
        re.compile(r"NVML Shared Library Not Found|libnvidia-ml|Found no NVIDIA driver|NVIDIA driver on your", re.I),
        NO_DRIVER_FIX,
    ),
    (
        re.compile(r"driver version is insufficient|CUDA driver version|driver.*too old", re.I),
        "the NVIDIA driver is too old for CUDA 12.8: update it (R570 or newer), or build the image on an older "
        "CUDA 12 base with --build-arg BASE_IMAGE=...",
    ),
    (
        re.compile(r"no CUDA-capable device|cudaErrorNoDevice|CUDA_VISIBLE_DEVICES|no usable CUDA device", re.I),
        "no CUDA device is visible to this process: check CUDA_VISIBLE_DEVICES and `nvidia-smi`; in Docker run "
        "with `--gpus all`; or run with --device cpu",
    ),
    (
        re.compile(r"weights_only|Weights only load failed|WeightsUnpickler|Unsupported global", re.I),
        "torch.load refused a checkpoint (PyTorch 2.6+ loads weights only by default): use the versions this "
        "project pins (reinstall whisperx-batch, or use its image), which load the bundled VAD through an "
        "allowlist; do not set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 unless you trust every checkpoint",
    ),
    (
        re.compile(r"GatedRepoError|gated repo|is restricted|awaiting a review|must have access", re.I),
        "the model is gated on Hugging Face: sign in with the account that owns your token, open the model's "
        "page on huggingface.co and accept its conditions; give the token as HF_TOKEN or in a file named by "
        "--hf-token-file (WHISPERX_BATCH_HF_TOKEN_FILE)",
    ),
    (
        re.compile(r"\b401\b|Invalid (user )?token|Unauthorized|RepositoryNotFoundError", re.I),
        "the Hub refused the request: check the model name, and that the token (HF_TOKEN or --hf-token-file) is "
        "a valid read token (huggingface.co/settings/tokens)",
    ),
    (
        re.compile(r"LocalEntryNotFoundError|outgoing traffic has been disabled|appropriate cached snapshot", re.I),
        "the model is not in the cache and downloads are off (HF_HUB_OFFLINE=1): run `whisperx-batch models "
        "pull` where the Hub is reachable and mount that cache at HF_HOME (/models in the image), or give a "
        "local model folder with --model",
    ),
    (
        re.compile(r"Failed to resolve|Name or service not known|Max retries exceeded|ConnectionError|timed out", re.I),
        "the Hugging Face Hub cannot be reached from here: pull the models where it can be (`whisperx-batch "
        "models pull`), mount that cache at HF_HOME, and set HF_HUB_OFFLINE=1",
    ),
    (
        re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.I),
        "the GPU ran out of memory: lower --batch-size, use --compute-type int8_float16, or a smaller model",
    ),
)


def advice_for(error: str) -> str | None:
    """One line that says what to do about a known failure, from its error text; None when unknown."""
    for pattern, fix in KNOWN_FAILURES:
        if pattern.search(error):
            return fix if fix is not None else _cudnn_fix()
    return None


# ---------------------------------------------------------------------------------------------------------
# Seams: the real GPU and Hub probes


def probe_gpu() -> GpuFacts:
    """Ask NVML, PyTorch and CTranslate2 about CUDA, and try loading cuDNN as CTranslate2 would."""
    facts: dict[str, object] = {}
    facts.update(_probe_nvml())
    facts.update(_probe_torch())
    facts.update(_probe_ctranslate2())
    facts.update(_probe_cudnn())
    return GpuFacts(**facts)  # type: ignore[arg-type]


def hub_access(repo_id: str, token: str | None) -> str | None:
    """None when the Hub would let this token download `repo_id`; otherwise the error, as text."""
    try:
        import huggingface_hub

        huggingface_hub.auth_check(repo_id, token=token or False)
    except Exception as exc:
        return short_error(exc)
    return None


def short_error(exc: BaseException) -> str:
    """`Type: first line`, secrets removed; a connection failure in a few words, not urllib3's whole chain."""
    text = str(exc)
    if re.search(r"Max retries exceeded|Failed to resolve|Name or service not known|Connection refused", text):
        host = re.search(r"host=\\?'([^'\\]+)", text)
        return f"{type(exc).__name__}: cannot connect to {host.group(1) if host else 'the Hub'}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return redact(f"{type(exc).__name__}: {first[:300]}")


def _probe_nvml() -> dict[str, object]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
                gpus.append(f"{_text(pynvml.nvmlDeviceGetName(handle))} ({memory:.0f} GiB)")
            return {
                "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
                "driver_cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "gpus": tuple(gpus),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return {"nvml_error": str(exc) or type(exc).__name__}


def _probe_torch() -> dict[str, object]:
    try:
        import torch
    except Exception as exc:
        return {"torch_error": f"cannot import torch: {exc}"}
    facts: dict[str, object] = {"torch_cuda_build": torch.version.cuda}
    try:
        version = torch.backends.cudnn.version() if torch.version.cuda else None
        if version:
            facts["cudnn_version"] = f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
        if torch.cuda.is_available():
            facts["torch_devices"] = torch.cuda.device_count()
        elif torch.version.cuda:
            torch.cuda.init()  # raises with the reason ("Found no NVIDIA driver on your system...")
            facts["torch_error"] = "no usable CUDA device"
    except Exception as exc:
        # The first sentence says it ("Found no NVIDIA driver on your system."); the rest is a download link.
        facts["torch_error"] = str(exc).strip().split(". ")[0] or type(exc).__name__
    return facts


def _probe_ctranslate2() -> dict[str, object]:
    try:
        import ctranslate2

        return {"ctranslate2_devices": ctranslate2.get_cuda_device_count()}
    except Exception:
        return {"ctranslate2_devices": 0}


def _probe_cudnn() -> dict[str, object]:
    # Loaded after PyTorch (as in a run), by name, the way CTranslate2 loads it.
    try:
        ctypes.CDLL(CUDNN_OPS_LIBRARY)
    except OSError as exc:
        return {"cudnn_error": str(exc)}
    return {}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pip_nvidia_lib_dirs() -> list[Path]:
    """The lib folders of the nvidia-cudnn-cu12 and nvidia-cublas-cu12 wheels that PyTorch brought, if any."""
    import sysconfig

    root = Path(sysconfig.get_path("purelib")) / "nvidia"
    return [root / name / "lib" for name in ("cudnn", "cublas") if (root / name / "lib").is_dir()]


# ---------------------------------------------------------------------------------------------------------
# The checks


def run_doctor(settings: Settings) -> list[Check]:
    """Every check, in the order a person reads them."""
    token, token_check = token_status(settings)
    checks = [versions_check(), cpus_check()]
    checks += device_checks(probe_gpu(), settings.device)
    checks += [decoder_check(), ffmpeg_check()]
    checks += model_checks(settings, token)
    checks += [token_check, source_check(settings), dest_check(settings)]
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    return EXIT_ENVIRONMENT if any(check.status == "fail" for check in checks) else EXIT_OK


def versions_check() -> Check:
    from batch import __version__
    from batch.runtime import package_versions

    versions = package_versions()
    parts = [
        f"{name} {versions[name]}"
        for name in ("whisperx", "faster-whisper", "ctranslate2", "torch")
        if name in versions
    ]
    return Check("whisperx-batch", "ok", f"{__version__} on Python {platform.python_version()}: " + ", ".join(parts))


def cpus_check() -> Check:
    from batch.runtime import available_cpus

    return Check("cpus", "ok", f"{available_cpus()} usable (affinity and container CPU limit)")


def device_checks(facts: GpuFacts, requested: str) -> list[Check]:
    """NVIDIA driver, CUDA and cuDNN, judged by what --device asks: `cuda` needs them, `auto` falls back."""
    missing: Status = {"cuda": "fail", "auto": "warn"}.get(requested, "skip")
    uses_cuda = requested == "cuda" or (requested == "auto" and facts.usable)
    checks = [_driver_check(facts, missing), _cuda_check(facts, requested, missing)]
    if facts.cudnn_error is None:
        version = f"cuDNN {facts.cudnn_version}: " if facts.cudnn_version else ""
        checks.append(Check("cudnn", "ok", f"{version}{CUDNN_OPS_LIBRARY} loads"))
    elif uses_cuda:
        checks.append(
            Check("cudnn", "fail", f"{CUDNN_OPS_LIBRARY} cannot be loaded: {facts.cudnn_error}", _cudnn_fix())
        )
    else:
        checks.append(Check("cudnn", "skip", f"not needed on the CPU ({CUDNN_OPS_LIBRARY} not found: needed for CUDA)"))
    return checks


def _driver_check(facts: GpuFacts, missing: Status) -> Check:
    if facts.driver_version is None:
        reason = facts.nvml_error or "NVML found no driver"
        return Check("nvidia driver", missing, f"not visible ({reason})", NO_DRIVER_FIX if missing != "skip" else None)
    detail = f"{facts.driver_version} (CUDA {facts.driver_cuda}), {len(facts.gpus)} GPU: {', '.join(facts.gpus)}"
    driver, built = _major_minor(facts.driver_cuda), _major_minor(facts.torch_cuda_build)
    if driver and built and driver < built:
        # An older minor release of the same major runs through CUDA's minor version compatibility; an older
        # major does not run at all.
        status: Status = missing if driver[0] < built[0] else "warn"
        fix = advice_for("driver too old")
        return Check("nvidia driver", status, f"{detail}; PyTorch was built for CUDA {facts.torch_cuda_build}", fix)
    return Check("nvidia driver", "ok", detail)


def _cuda_check(facts: GpuFacts, requested: str, missing: Status) -> Check:
    if facts.usable:
        used = "the run uses cuda" if requested != "cpu" else "not used (--device cpu)"
        detail = f"{facts.torch_devices} device(s) for PyTorch (CUDA {facts.torch_cuda_build}), "
        return Check("cuda", "ok", detail + f"{facts.ctranslate2_devices} for CTranslate2; {used}")
    if facts.torch_cuda_build is None:
        reason = facts.torch_error or "PyTorch is a CPU-only build"
        fix = "install PyTorch's CUDA build (the default on PyPI for Linux x86_64), or use the project's image"
    else:
        reason = facts.torch_error or "no usable CUDA device"
        # When the driver is not even visible, the driver row already says what to do.
        fix = None if facts.driver_version is None else advice_for(reason) or advice_for("no usable CUDA device")
    fallback = {"auto": "; the run uses the CPU (slow with large models)", "cpu": " (--device cpu)"}.get(requested, "")
    detail = f"no usable device: {reason}; CTranslate2 sees {facts.ctranslate2_devices}{fallback}"
    return Check("cuda", missing, detail, fix if missing != "skip" else None)


def _major_minor(version: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version or "")[:2])


def decoder_check() -> Check:
    try:
        import av
    except Exception as exc:
        return Check("decoder", "fail", f"PyAV cannot be imported: {exc}", "reinstall whisperx-batch (pip install av)")
    codec = ".".join(str(part) for part in av.library_versions.get("libavcodec", ())[:2])
    return Check("decoder", "ok", f"PyAV {av.__version__} (FFmpeg libavcodec {codec}), in-process")


def ffmpeg_check() -> Check:
    command = shutil.which("ffmpeg")
    if command is None:
        return Check(
            "ffmpeg",
            "warn",
            "the ffmpeg command is not on PATH (runs decode in-process; the command helps to inspect files)",
            "install ffmpeg (apt-get install ffmpeg)",
        )
    try:
        first = subprocess.run([command, "-version"], capture_output=True, text=True, timeout=20).stdout
        version = first.splitlines()[0].split()[2] if first else "unknown version"
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "unknown version"
    return Check("ffmpeg", "ok", f"{version} at {command}")


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
    from faster_whisper.utils import _MODELS  # faster-whisper's own name -> repo table

    repo_id = _MODELS.get(model, model)
    found = find_cached_snapshot(repo_id, cache, MODEL_FILE, MODEL_FILES)
    return _hub_model_check(name, f"{model} ({repo_id})", repo_id, found, offline, token, "fail")


def align_model_check(settings: Settings, language: str, offline: bool, token: str | None) -> Check:
    """The wav2vec2 model that times words in `language`. Missing, it fails the files (not the run)."""
    from batch.align import Aligner

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


def cache_check(cache: Path, needs_download: bool) -> Check:
    where = _writable_place(cache)
    if where is None:
        status: Status = "fail" if needs_download else "warn"
        fix = (
            f"make {cache} writable for uid {os.getuid()} (in Docker: a named volume, e.g. "
            "-v whisperx-models:/models, or a folder this user owns)"
        )
        return Check("model cache", status, f"{cache} is not writable (uid {os.getuid()})", fix)
    return Check("model cache", "ok", f"{cache} ({where})")


def vad_check(vad_method: str, offline: bool) -> Check:
    if vad_method == "silero":
        return _silero_check(offline)
    try:
        from batch.checkpoints import load_pyannote_model
        from batch.vad import BUNDLED_VAD_CHECKPOINT

        adopt_library_loggers()  # lightning gave itself a handler on import; its notices stay out of the table
        load_pyannote_model(BUNDLED_VAD_CHECKPOINT)
    except Exception as exc:
        error = short_error(exc)
        return Check("vad model", "fail", f"the bundled pyannote VAD does not load: {error}", advice_for(error))
    return Check("vad model", "ok", "pyannote (bundled with whisperx): loads with torch.load(weights_only=True)")


def _silero_check(offline: bool) -> Check:
    import torch

    folder = Path(torch.hub.get_dir()) / SILERO_HUB_FOLDER
    if folder.is_dir():
        return Check("vad model", "ok", f"silero: in the torch.hub cache ({folder})")
    if offline:
        fix = "use --vad-method pyannote (bundled), or run once with network so torch.hub caches silero (TORCH_HOME)"
        return Check("vad model", "fail", f"silero is not in the torch.hub cache ({folder}) and HF_HUB_OFFLINE=1", fix)
    return Check("vad model", "warn", f"silero is not in the torch.hub cache ({folder}): " + DOWNLOAD_NOTE)


# --- token, source, dest -------------------------------------------------------------------------------------


def token_status(settings: Settings) -> tuple[str | None, Check]:
    """The Hugging Face token (for the Hub checks) and a row that says where it comes from, never what it is."""
    from batch.errors import ConfigError
    from batch.models import hf_token

    try:
        token, origin = hf_token(settings)
    except ConfigError as exc:
        fix = "mount the secret file there, readable by this user, or give HF_TOKEN instead"
        return None, Check("hf token", "fail", redact(str(exc)), fix)
    if token is None:
        return None, Check("hf token", "ok", "none (only gated models, such as speaker diarization, need one)")
    where = f"--hf-token-file {settings.hf_token_file}" if origin == "hf_token_file" else origin
    return token, Check("hf token", "ok", f"present (from {where})")


def source_check(settings: Settings) -> Check:
    if not settings.source:
        return Check("source", "skip", "not given")
    if settings.source.startswith("s3://"):
        return _s3_source_check(settings)
    root = Path(settings.source)
    if not root.is_dir():
        return Check("source", "fail", f"{root} is not a folder", "give the folder of recordings (mounted at /in?)")
    if not os.access(root, os.R_OK | os.X_OK):
        return Check("source", "fail", f"{root} is not readable by uid {os.getuid()}", "make it readable for this user")
    from batch.storage import LocalSource

    count = size = 0
    for item in LocalSource(root, skip=settings.out).list(settings.include, settings.exclude):
        count, size = count + 1, size + item.size
    if count == 0:
        return Check("source", "warn", f"{root}: readable, but no recording is selected there", None)
    return Check("source", "ok", f"{root}: readable, {count} recordings ({size / 2**20:.1f} MiB)")


def dest_check(settings: Settings) -> Check:
    if not settings.out:
        return Check("dest", "skip", "not given")
    if settings.out.startswith("s3://"):
        return _s3_dest_check(settings)
    root = Path(settings.out)
    if root.exists() and not root.is_dir():
        return Check("dest", "fail", f"{root} is not a folder", "give a folder for the outputs")
    where = _writable_place(root)
    if where is None:
        fix = (
            f"make {root} writable for uid {os.getuid()}; with Docker, create the folder before `docker run` (one "
            'that Docker creates for a mount belongs to root) and run as its owner: --user "$(id -u):$(id -g)"'
        )
        return Check("dest", "fail", f"{root} is not writable (uid {os.getuid()}, gid {os.getgid()})", fix)
    free = shutil.disk_usage(_nearest_existing(root)).free / 2**30
    return Check("dest", "ok", f"{root}: {where}, {free:.1f} GiB free")


S3_FIX = (
    "check the bucket and prefix, the credentials (AWS_* variables, a profile or an IAM role) and, for MinIO, Ceph "
    "or R2, the endpoint (--s3-endpoint-url, WHISPERX_BATCH_S3_ENDPOINT_URL)"
)


def _s3_source_check(settings: Settings) -> Check:
    from batch.s3 import S3Source, make_client

    url = str(settings.source)
    try:
        source = S3Source(url, make_client(settings.s3_endpoint_url), skip_url=settings.out)
        source.check_readable()
        count = size = 0
        for item in source.list(settings.include, settings.exclude):
            count, size = count + 1, size + item.size
    except Exception as exc:  # EnvironmentProblem, or botocore's own errors while listing
        return Check("source", "fail", short_error(exc).split(": ", 1)[-1], S3_FIX)
    if count == 0:
        return Check("source", "warn", f"{url}: readable, but no recording is selected there")
    return Check("source", "ok", f"{url}: readable, {count} recordings ({size / 2**20:.1f} MiB)")


def _s3_dest_check(settings: Settings) -> Check:
    from batch.s3 import S3Dest, make_client

    url = str(settings.out)
    try:
        S3Dest(url, make_client(settings.s3_endpoint_url)).check_writable()  # writes and deletes a probe object
    except Exception as exc:
        return Check("dest", "fail", short_error(exc).split(": ", 1)[-1], S3_FIX)
    return Check("dest", "ok", f"{url}: writable")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_place(folder: Path) -> str | None:
    """'writable', or 'will be created' when a parent can hold it; None when nothing can be written there."""
    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                return "writable"
        except OSError:
            return None
    parent = _nearest_existing(folder)
    return "will be created" if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK) else None


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
