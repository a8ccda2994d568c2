"""Loading the models a run needs, once: the VAD and the ASR model side by side, then the batch sizer and the
finisher (whose alignment and diarization models load on first use)."""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from batch.common.errors import BatchError, ConfigError
from batch.common.runtime import limit_thread_pools
from batch.engine.asr.recognizer import WhisperRecognizer
from batch.engine.config import PipelineConfig


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
    finisher = Finisher(config, sizer)
    return LoadedModels(vad, recognizer, sizer, finisher, round(time.perf_counter() - started, 3))


def _load_recognizer(config: PipelineConfig) -> WhisperRecognizer:
    from batch.engine.asr.recognizer import load_recognizer
    from batch.engine.models import asr_load_failure

    runtime, asr, hub = config.runtime, config.asr, config.hub
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
