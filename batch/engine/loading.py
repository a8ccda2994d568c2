"""Loading the models a run needs, once: the VAD and the ASR model side by side, then the batch sizer and the
finisher (whose alignment and diarization models load on first use); and where models come from.

`--model-dir` (or HF_HOME) decides where every model is cached; with HF_HUB_OFFLINE=1 every stage loads from
there or fails naming the missing model (`whisperx-batch models pull`, batch.run.pull, fills the cache ahead of
time). The Hugging Face token is read here (`hf_token`), and its value never shown.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.common.errors import BatchError, ConfigError, EnvironmentProblem, redact, register_secret
from batch.common.runtime import limit_thread_pools
from batch.engine.config import PipelineConfig

if TYPE_CHECKING:
    from batch.engine.asr.recognizer import WhisperRecognizer


@dataclass
class LoadedModels:
    vad: Any
    recognizer: WhisperRecognizer
    sizer: Any
    finisher: Any
    seconds: float


def load_models(config: PipelineConfig) -> LoadedModels:
    """The run's models; a model the config asks too much of is a ConfigError, raised before any file.

    The seconds counted include importing the libraries (PyTorch alone takes seconds): start-up, not work.
    """
    started = time.perf_counter()
    runtime = config.runtime
    # CTranslate2 reads its weights without the GIL while importing PyTorch (for the VAD) holds it: the two
    # overlap, and the larger the Whisper model the more that saves.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-load") as pool:
        asr_load = pool.submit(_load_recognizer, config)
        import torch

        if runtime.device.startswith("cuda"):
            from batch.engine.gpu.device import require_usable_cuda

            # A worker's parent saw its GPU through NVML alone: what stops CUDA is said here, with the fix, rather
            # than as the first library error a model load meets.
            require_usable_cuda()
        from batch.engine.vad.speech import load_vad

        vad = load_vad(config.vad, runtime.device)
        recognizer = asr_load.result()
    from batch.common.logs import adopt_library_loggers
    from batch.engine.finish import Finisher
    from batch.engine.gpu.nvml import probe_for_device
    from batch.engine.gpu.sizing import BatchSizer

    refuse_what_the_model_cannot_do(recognizer, config)
    adopt_library_loggers()  # the imports above gave some libraries log handlers of their own
    # PyTorch runs only the small VAD model and the log-Mel features here. On the CPU one thread does that
    # best: two OpenMP threads spinning on 2 busy cores made the VAD 10-30x slower (measured; see docs/
    # how-it-runs.md), and CTranslate2 keeps every core for the ASR.
    limit_thread_pools(runtime.threads)
    torch.set_num_threads(1 if runtime.device == "cpu" else runtime.threads)
    if runtime.device.startswith("cuda"):
        fix_gpu_numerics(torch)
    # The models are millions of long-lived objects: out of the garbage collector's way, so that its full
    # collections (automatic, and any a library runs) do not walk them all every time.
    gc.freeze()
    sizer = BatchSizer.for_model(
        runtime.batch_size,
        config.asr.model,
        runtime.compute_type,
        probe_for_device(runtime.device),
        reserve_bytes=runtime.gpu_memory_reserve,
    )
    if hasattr(vad, "sizer"):  # pyannote's VAD runs on the GPU beside the other stages: under the same budget
        vad.sizer = sizer
    finisher = Finisher(config, sizer)
    return LoadedModels(vad, recognizer, sizer, finisher, round(time.perf_counter() - started, 3))


def fix_gpu_numerics(torch: Any) -> None:
    """TF32 off for the whole run, once: pyannote turns it off when it first runs on CUDA (its VAD and diarization
    ask for full float32), and cuDNN's default is on, so the alignment of the files before the first diarized one
    would differ from the files after it. Off is pyannote's choice (reproducible results, accuracy)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _load_recognizer(config: PipelineConfig) -> WhisperRecognizer:
    from batch.engine.asr.recognizer import load_recognizer

    runtime, asr, hub = config.runtime, config.asr, config.hub
    if runtime.device.startswith("cuda"):
        from batch.common.advice import cublas_fix
        from batch.engine.gpu.device import load_cublas
        from batch.engine.gpu.kernels import cublas_library

        # CTranslate2 loads cuBLAS by name when it first runs; found here, from PyTorch's wheels if need be.
        problem = load_cublas()
        if problem is not None:
            library = cublas_library()
            raise EnvironmentProblem(f"{library} cannot be loaded for the ASR: {problem}. Fix: {cublas_fix(library)}")
    try:
        return load_recognizer(
            asr.model, runtime.device, runtime.compute_type, runtime.threads, hub.cache_dir, hub.offline, asr.decoding
        )
    except BatchError:
        raise
    except Exception as exc:
        raise asr_load_failure(asr.model, exc, hub.offline) from exc


def refuse_what_the_model_cannot_do(recognizer: WhisperRecognizer, config: PipelineConfig) -> None:
    """A language, a detection set, a task or a prompt the loaded model cannot take is a config error, found
    before any file is read."""
    asr = config.asr
    problem = None if recognizer.multilingual else asr.english_only_problem()
    if problem is not None:
        raise ConfigError(*problem)
    unknown = [code for code in asr.languages if recognizer.multilingual and not recognizer.knows_language(code)]
    if unknown:
        raise ConfigError("languages", f"the model {asr.model} does not know {', '.join(unknown)}")
    prompt, room = recognizer.prompt_tokens(), recognizer.model.max_length // 2 - 1
    if prompt > room:
        raise ConfigError(
            "initial_prompt",
            f"the prompt and hotwords take {prompt} tokens; at most {room} fit "
            "(Whisper keeps the other half of its context for the transcript)",
        )


# --- where models come from ------------------------------------------------------------------------------------


TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_local(reference: str) -> bool:
    return os.path.isabs(reference)


def hf_token(token_file: str | None, environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The Hugging Face token and where it came from (never the value in any message).

    Order: `token_file` (the `hf_token_file` option: a mounted Kubernetes secret), HF_TOKEN,
    HUGGING_FACE_HUB_TOKEN, then a token stored by `hf auth login`.
    """
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
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


# CTranslate2 reads a Whisper model as multilingual when its vocabulary has at least this many tokens.
MULTILINGUAL_VOCABULARY = 51865


def english_only(model: str) -> bool | None:
    """Whether a Whisper model reads English only, told without loading it: from a name (`tiny.en`,
    `Systran/faster-whisper-small.en`) or a local folder's vocabulary; None when it cannot be told."""
    if not is_local(model):
        from batch.common.model_names import whisper_model_names as available_models

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
    """For a hub model already in the cache, what its files say; None when it is not there. Looked up as
    faster-whisper's download_model looks (the same repository and files, no network) but through huggingface_hub
    itself: importing faster-whisper would load CTranslate2 into a process that only checks settings or hands
    files to workers."""
    from batch.common.model_names import MODEL_FILES, hub_repository

    repository = hub_repository(model)
    if repository is None:
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repository, cache_dir=cache_dir, local_files_only=True, allow_patterns=list(MODEL_FILES)
        )
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
