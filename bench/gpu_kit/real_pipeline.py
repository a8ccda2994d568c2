"""Step `whisperx`: the project's own `WhisperxPipeline` (batch.engine.whisperx_pipeline), loaded by its own loader
(`load_models`: faster-whisper's WhisperModel over the random large-v3-shaped CTranslate2 model the `asr` step
built, the project's pyannote VAD, one `BatchSizer` reading NVML), run on the GPU with its three threads (VAD
ahead, ASR batches on the caller's, finishing: alignment, with a random wav2vec2-base-960h-shaped model loaded
through whisperx's `load_align_model` from a local folder) on files cut from the kit's recording,
fed as decoded arrays (`pipeline_parts`: PyAV is the seam) for `RUN_SECONDS`. The one thing set on a library's
object: faster-whisper's `max_length`, to `WINDOW_TOKENS` (a random Whisper reads every window to its limit).

Recorded: files and audio done, the pipeline's own stats (ASR batches, their fill, busy seconds, the sizer's
records), NVML's utilisation (the GPU busy share) and used memory at peak, sampled every 50 ms, and torch's peak.
Then `cache_contest`: PyTorch's cache filled until `LEAVE_FREE_BYTES` are free on the card and released to the
cache, not the driver, and more files run: the VAD (PyTorch) reuses that cache, the ASR (CTranslate2's own
allocator) cannot, and the budget (batch.engine.gpu.sizing: a CTranslate2 stage's grant hands the cache back
when it stands in the way) or else the out-of-memory back-off must get the batch through. Whether it did, at
what size, with how many retries, and what torch still held after, are recorded.

Diarization is off: pyannote's pipeline needs pyannote.core, Lightning's stack and more, which the kit does not
carry. Sentence splitting for alignment uses an untrained Punkt (nltk is carried, its punkt data is not: the
project's `ensure_punkt` writes empty parameters then). The VAD finds speech everywhere
(`pipeline_parts.write_vad_checkpoint`), so the ASR's share is that of busy speech; a random Whisper's readings
often hold more letters than a short chunk has frames, and those segments keep their times unaligned
(`timed_words` counts the words that got times).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.gpu_kit.steps import StepContext, attempt, error_text

MiB, GiB = 2**20, 2**30
SAMPLE_RATE = 16_000
RUN_SECONDS = 15.0  # files are fed this long; the batches under way then end
TAIL_SECONDS = 8.0  # kept after the feeding for the batches under way and the figures
#: a random Whisper never says end-of-text: each reading is capped here (a 30 s window of fast speech holds
#: ~100-130 tokens) instead of the model's 448, so that the ASR costs what real speech does
WINDOW_TOKENS = 128
FILE_SECONDS = (8.0, 20.0, 45.0, 75.0)  # the files' lengths, in turn (voicemail to meeting excerpt)
BATCH_SIZE = 8  # the configured ceiling (--batch-size)
LEAVE_FREE_BYTES = 256 * MiB  # what cache_contest leaves free on the device
CONTEST_FILES = 2
#: seconds the step keeps for cache_contest; without them it is skipped, saying so
CONTEST_SECONDS = 12.0


def speech_files(audio: Any, deadline: Callable[[], bool], stopwatch: Callable[[], Any]) -> Iterator[Any]:
    """DecodedFiles cut from `audio` (lengths `FILE_SECONDS` in turn, each from a later offset) until `deadline()`."""
    import numpy as np

    from batch.engine.pipeline import DecodedFile

    index = 0
    while not deadline():
        seconds = FILE_SECONDS[index % len(FILE_SECONDS)]
        samples = round(seconds * SAMPLE_RATE)
        start = (index * 7 * SAMPLE_RATE) % max(1, audio.size)
        clip = np.resize(np.roll(audio, -start), samples).astype(np.float32)  # wraps around a short recording
        yield DecodedFile(f"speech-{index:03d}-{seconds:g}s", clip, stopwatch())
        index += 1


class Sampler:
    """NVML's utilisation and used memory, sampled from a thread every `interval` s (nothing without NVML)."""

    def __init__(self, interval: float = 0.05):
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, busy %, used bytes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:
            self.unavailable: str | None = error_text(exc)
            return
        self.unavailable = None
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            busy = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self.samples.append((time.monotonic(), int(busy), int(used)))

    def figures(self, since: float, until: float) -> dict[str, Any]:
        window = [sample for sample in self.samples if since <= sample[0] <= until]
        if not window:
            return {"gpu_busy_percent": None, "nvml_peak_used_mib": None, "samples": 0, "nvml": self.unavailable}
        return {
            "gpu_busy_percent": round(sum(sample[1] for sample in window) / len(window), 1),
            "nvml_peak_used_mib": round(max(sample[2] for sample in window) / MiB),
            "samples": len(window),
        }

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def pipeline_config(model: Path, align_model: Path | None, device: str, cache: Path) -> Any:
    from batch.engine.asr.decoding import DecodingOptions
    from batch.engine.config import AlignConfig, AsrConfig, DiarizeConfig, HubConfig, PipelineConfig, RuntimeOptions
    from batch.engine.vad.speech import VadOptions

    compute_type = "float16" if device.startswith("cuda") else "float32"
    return PipelineConfig(
        asr=AsrConfig(model=str(model), language="en", decoding=DecodingOptions()),
        vad=VadOptions(),
        align=AlignConfig(enabled=align_model is not None, model=None if align_model is None else str(align_model)),
        diarize=DiarizeConfig(enabled=False),
        hub=HubConfig(cache_dir=str(cache), offline=True),  # nltk's punkt data is written there
        runtime=RuntimeOptions(device=device, compute_type=compute_type, threads=4, batch_size=BATCH_SIZE),
    )


def run_files(pipeline: Any, seconds: float, audio: Any) -> dict[str, Any]:
    """Feed files for `seconds` and take every outcome; what came out, per stage and in all."""
    from batch.engine.pipeline import Stopwatch

    started = time.monotonic()

    def out_of_time() -> bool:
        return time.monotonic() - started > seconds

    done: dict[str, Any] = {
        "files": 0,
        "transcribed": 0,
        "audio_seconds": 0.0,
        "segments": 0,
        "words": 0,
        "timed_words": 0,
    }
    alignment: dict[str, int] = {}
    errors: list[str] = []
    stages: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for outcome in pipeline.process(speech_files(audio, out_of_time, Stopwatch), out_of_time):
        done["files"] += 1
        done["transcribed"] += int(outcome.transcribed)
        done["audio_seconds"] += outcome.file.audio.shape[-1] / SAMPLE_RATE
        done["segments"] += len(outcome.segments)
        done["words"] += sum(len(segment["text"].split()) for segment in outcome.segments)
        done["timed_words"] += sum("start" in word for segment in outcome.segments for word in segment.get("words", []))
        status = (outcome.alignment or {}).get("status", "off")
        alignment[status] = alignment.get(status, 0) + 1
        if outcome.error is not None and len(errors) < 3:
            errors.append(f"{outcome.key}: {error_text(outcome.error)[:300]}")
        for stage, spent in outcome.file.stopwatch.timings.items():
            stages[stage] = round(stages.get(stage, 0.0) + spent, 2)
        records += [{"stage": stage, **record_dict(record)} for stage, record in outcome.gpu.items() if record]
    done.update(seconds=round(time.monotonic() - started, 2), errors=errors, stage_seconds=stages, alignment=alignment)
    done["audio_seconds"] = round(done["audio_seconds"], 1)
    done["x_realtime"] = round(done["audio_seconds"] / done["seconds"], 1) if done["seconds"] else None
    done["gpu_records"] = records[-6:]
    return done


def record_dict(record: Any) -> dict[str, Any]:
    """A stage's memory record (batch.engine.gpu.oom.StageMemoryRecord) as its manifest entry."""
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


def stats_of(pipeline: Any) -> dict[str, Any]:
    stats = pipeline.stats()
    figures = {field.name: getattr(stats, field.name) for field in dataclasses.fields(stats)}
    figures["gpu_records"] = len(figures["gpu_records"])
    figures.pop("workers", None)
    figures.pop("first_batch_at", None)  # a clock reading
    figures["batch_fill"] = stats.batch_fill
    return figures


def torch_peaks(device: str) -> dict[str, Any]:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {
        "torch_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / MiB),
        "torch_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / MiB),
    }


def fill_torch_cache(leave_free: int) -> dict[str, Any]:
    """Allocate through torch until about `leave_free` bytes are free on the device, then free it all into torch's
    cache (reserved, not handed back): what a PyTorch stage's large batch leaves behind."""
    import torch

    blocks = []
    free, _ = torch.cuda.mem_get_info()
    chunk = GiB
    while free > leave_free + 64 * MiB:
        size = min(chunk, free - leave_free)
        try:
            blocks.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            chunk //= 2
            if chunk < 64 * MiB:
                break
        free, _ = torch.cuda.mem_get_info()
    del blocks
    return cache_state()


def cache_state() -> dict[str, Any]:
    import torch

    free, _ = torch.cuda.mem_get_info()
    reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
    return {"device_free_mib": round(free / MiB), "torch_cached_mib": round((reserved - allocated) / MiB)}


def cache_contest(pipeline: Any, audio: Any) -> dict[str, Any]:
    """More files with torch's cache filled: whether their ASR batches got through, and how."""
    import torch

    result: dict[str, Any] = {"leave_free_mib": round(LEAVE_FREE_BYTES / MiB)}
    result["before"] = fill_torch_cache(LEAVE_FREE_BYTES)
    try:
        result["run"] = contest_files(pipeline, audio)
    finally:
        result["after"] = cache_state()
        torch.cuda.empty_cache()
    asr = result["run"]["asr_records"]
    result["asr_oom_retries"] = sum(record.get("oom_retries", 0) for record in asr)
    result["asr_sizes_used"] = [record.get("batch_size_used") for record in asr]
    result["recovered"] = result["run"]["transcribed"] == result["run"]["files"] > 0
    return result


def contest_files(pipeline: Any, audio: Any) -> dict[str, Any]:
    """`CONTEST_FILES` files of 60 s through the pipeline, their ASR records kept."""
    import numpy as np

    from batch.engine.pipeline import DecodedFile, Stopwatch

    files = [
        DecodedFile(f"contest-{i}", np.resize(audio, 60 * SAMPLE_RATE).astype(np.float32), Stopwatch())
        for i in range(CONTEST_FILES)
    ]
    run: dict[str, Any] = {"files": 0, "transcribed": 0, "errors": [], "asr_records": []}
    started = time.monotonic()
    for outcome in pipeline.process(iter(files), lambda: False):
        run["files"] += 1
        run["transcribed"] += int(outcome.transcribed)
        if outcome.error is not None:
            run["errors"].append(f"{outcome.key}: {error_text(outcome.error)[:300]}")
        if outcome.gpu.get("asr"):
            run["asr_records"].append(record_dict(outcome.gpu["asr"]))
    run["seconds"] = round(time.monotonic() - started, 2)
    return run


def whisperx_figures(
    context: StepContext, device: str, models: tuple[Path, Path | None], audio: Any, source: str
) -> dict[str, Any]:
    """The pipeline loaded with `models` (Whisper, alignment or None) and run on `device` over `audio`; on CUDA,
    then the cache contest."""
    from batch.engine.whisperx_pipeline import WhisperxPipeline

    result: dict[str, Any] = {"recording": source, "device": device, "batch_size": BATCH_SIZE}
    pipeline = WhisperxPipeline(pipeline_config(*models, device=device, cache=models[0].parent))
    started = time.monotonic()
    pipeline.load()
    result["load_seconds"] = round(time.monotonic() - started, 1)
    whisper = pipeline.recognizer.model  # faster-whisper's WhisperModel, as the project loaded it
    result["tokens_per_window"] = {"model": whisper.max_length, "kit": WINDOW_TOKENS}
    whisper.max_length = min(whisper.max_length, WINDOW_TOKENS)
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()  # the model's build (when this step made it) is not the run's
    sampler = Sampler()
    try:
        begun = time.monotonic()
        seconds = min(RUN_SECONDS, max(1.0, context.left() - CONTEST_SECONDS - TAIL_SECONDS))
        result["run"] = run_files(pipeline, seconds, audio)
        result.update(sampler.figures(begun, time.monotonic()))
    finally:
        sampler.stop()
    result.update(torch_peaks(device))
    result["stats"] = stats_of(pipeline)
    result["sizer"] = {stage: pipeline.sizer.size_for(stage) for stage in ("vad", "asr")}
    if not device.startswith("cuda"):
        result["cache_contest"] = {"skipped": "needs CUDA"}
    elif context.left() < CONTEST_SECONDS:
        result["cache_contest"] = {"skipped": "out of time"}
    else:
        attempt(result, "cache_contest", lambda: cache_contest(pipeline, audio))
    return result


def prepare_models(
    context: StepContext, shape: dict[str, int], align_shape: dict[str, Any] | None = None
) -> tuple[tuple[Path, Path | None], dict[str, Any]]:
    """A random Whisper of `shape` (large-v3's: the asr step's, built here when it is not) with faster-whisper's
    files beside it, a random wav2vec2-base-960h-shaped alignment model (None, with the reason, without nltk), and
    the random VAD checkpoint where the project's loader looks when whisperx's wheel came without one."""
    from bench.gpu_kit.asr import load_large
    from bench.gpu_kit.pipeline_parts import (
        ALIGN_PIECES,
        missing_pieces,
        write_align_model,
        write_faster_whisper_files,
        write_vad_checkpoint,
    )
    from bench.gpu_kit.whisper_ct2 import LARGE_V3, build

    figures: dict[str, Any] = {}
    temporary = Path(os.environ.get("GPU_KIT_TMP") or tempfile.mkdtemp())
    folder = temporary / ("whisper-large-v3-random" if shape == LARGE_V3 else "whisper-random")
    if not (folder / "model.bin").exists():
        if shape == LARGE_V3:
            model, figures = load_large(context)  # builds it on the GPU, where the asr step would
            del model
        else:
            figures["parameters"] = build(folder, shape)
    write_faster_whisper_files(folder, shape["vocab_size"], shape["num_mel_bins"])
    from batch.engine.vad.speech import BUNDLED_VAD_CHECKPOINT

    figures["vad_checkpoint"] = "whisperx's" if BUNDLED_VAD_CHECKPOINT.exists() else "random (the kit's)"
    if not BUNDLED_VAD_CHECKPOINT.exists():
        write_vad_checkpoint(BUNDLED_VAD_CHECKPOINT)
    missing = missing_pieces(pieces=ALIGN_PIECES)
    if missing:
        figures["alignment"] = f"off: not installed: {', '.join(missing)}"
        return (folder, None), figures
    aligner = temporary / "wav2vec2-base-random"
    if not (aligner / "model.safetensors").exists():
        write_align_model(aligner, align_shape)
    figures["alignment"] = "wav2vec2-base-960h-shaped" if align_shape is None else f"wav2vec2 of {align_shape}"
    return (folder, aligner), figures


def whisperx_run(
    context: StepContext,
    device: str,
    shape: dict[str, int] | None = None,
    find: Callable[[str], Any] | None = None,
    align_shape: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The step on `device` with a Whisper of `shape` (default large-v3's) and a wav2vec2-base-960h aligner
    (`align_shape` changes its sizes; the tests run both smaller on the CPU); skipped, saying why, when a piece is
    not installed or CTranslate2 cannot run on CUDA here."""
    from bench.gpu_kit.asr import unusable_reason
    from bench.gpu_kit.busy import read_recording
    from bench.gpu_kit.pipeline_parts import install_av_stand_in, missing_pieces
    from bench.gpu_kit.whisper_ct2 import LARGE_V3

    missing = missing_pieces(find) if find is not None else missing_pieces()
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}"}
    reason = unusable_reason(context) if device.startswith("cuda") else None
    if reason is not None:
        return {"skipped": reason}
    stand_in = install_av_stand_in()
    models, built = prepare_models(context, shape or LARGE_V3, align_shape)
    audio, source = read_recording(context.kit)
    result = whisperx_figures(context, device, models, audio, source)
    return {"pyav": "stand-in" if stand_in else "installed", **built, **result}


def whisperx_step(context: StepContext) -> dict[str, Any]:
    return whisperx_run(context, "cuda")
