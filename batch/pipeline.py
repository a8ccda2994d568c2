"""The one in-process WhisperX pipeline: models load once, on first use, and every stage reads the same array.

The stages are run here rather than through `FasterWhisperPipeline.transcribe`, which keeps the first
file's language for every later file when none is set, and fails on audio with no speech.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from batch.audio import SAMPLE_RATE
from batch.config import Settings
from batch.errors import ConfigError, EnvironmentProblem, FileFailure
from batch.logs import adopt_library_loggers
from batch.models import asr_load_failure, hub_offline, is_local

log = logging.getLogger(__name__)
T = TypeVar("T")

# Whisper reads 30 s windows; language is detected on the first one that starts with speech.
WINDOW_SAMPLES = 30 * SAMPLE_RATE


@dataclass(frozen=True)
class RuntimeOptions:
    """How the models run on this machine (does not change what they say)."""

    device: str
    compute_type: str
    threads: int
    batch_size: int


@dataclass
class Transcription:
    """What the pipeline made of one file, with how long each stage took."""

    language: str | None
    language_probability: float | None
    segments: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    alignment: dict[str, Any] | None = None
    turns: list[dict[str, Any]] | None = None  # diarization's speaker turns, when diarized
    problem: FileFailure | None = None  # the file fails, but this transcript is still written


class Stopwatch:
    """Adds up seconds per stage; the clock is injectable so tests can use a fake one."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + self.clock() - start, 4)


class Pipeline:
    """Whisper ASR with VAD, loaded lazily once per run and reused for every file."""

    def __init__(self, settings: Settings, runtime: RuntimeOptions, hf_token: str | None = None):
        self.settings = settings
        self.runtime = runtime
        self._hf_token = hf_token
        self._asr: Any = None
        self.aligner: Any = None
        self._diarizer: Any = None
        self.sizer: Any = None
        self.gpu_records: dict[str, Any] = {}  # per batched stage of the last file: batch sizes, retries, memory
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self._asr is not None

    def load(self) -> None:
        """Load the VAD and ASR models (once). Failures are environment errors that stop the run."""
        if self._asr is not None:
            return
        from batch.gpu import BatchSizer, parse_bytes, probe_for_device

        started = time.perf_counter()
        self._asr = load_asr(self.settings, self.runtime)
        self.sizer = BatchSizer.for_model(
            self.runtime.batch_size,
            self.settings.model,
            self.runtime.compute_type,
            probe_for_device(self.runtime.device),
            reserve_bytes=parse_bytes(self.settings.gpu_memory_reserve),
        )
        if self.settings.align:
            from batch.align import Aligner

            default, per_language = self.settings.align_models()
            self.aligner = Aligner(self.runtime.device, self.settings.model_dir, hub_offline(), default, per_language)
        if self.settings.diarize:
            from batch.diarize import Diarizer

            self._diarizer = Diarizer(
                self.settings.diarize_model, self.runtime.device, self._hf_token, self.settings.model_dir, hub_offline()
            )
        # The models are millions of long-lived objects; the decoder runs gc.collect() per file (a PyAV
        # leak workaround), which would otherwise walk them all every time.
        gc.freeze()
        self.load_seconds = round(time.perf_counter() - started, 3)
        log.info("models loaded in %.1f s", self.load_seconds)

    def check_model_reference(self) -> None:
        """Fail before any file when the model is a local folder that is not there."""
        model = self.settings.model
        if is_local(model) and not Path(model).is_dir():
            raise EnvironmentProblem(f"model folder not found: {model}")

    @property
    def multilingual(self) -> bool:
        self.load()
        return bool(self._asr.model.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, stopwatch: Stopwatch | None = None) -> Transcription:
        self.load()
        self.gpu_records = {}
        stopwatch = stopwatch or Stopwatch()
        with stopwatch.stage("vad"):
            chunks = self._speech_chunks(audio)
        with stopwatch.stage("language"):
            language, probability = self._language(audio, chunks)
        with stopwatch.stage("asr"):
            segments = self._recognize(audio, chunks, language) if chunks else []
        result = Transcription(language, probability, segments)
        if self.aligner is not None:
            with stopwatch.stage("align"):
                self._align(audio, result)
        if self._diarizer is not None:
            with stopwatch.stage("diarize"):
                self._diarize(audio, result)
        result.timings = stopwatch.timings
        return result

    def _align(self, audio: np.ndarray, result: Transcription) -> None:
        """Time every word; when that cannot be done the segment timings stay and the reason is recorded."""
        from batch.align import AlignmentOutcome, AlignmentUnavailable

        if not result.segments or result.language is None:
            result.alignment = AlignmentOutcome("no_speech").to_dict()
            return
        try:
            result.segments, outcome = self.aligner.align(result.segments, audio, result.language)
        except AlignmentUnavailable as problem:
            model = self.aligner.model_for(result.language)
            outcome, result.problem = AlignmentOutcome("failed", model=model, reason=str(problem)), problem
        result.alignment = outcome.to_dict()

    def _diarize(self, audio: np.ndarray, result: Transcription) -> None:
        from batch.diarize import assign_speakers

        s = self.settings

        def diarize(batch_size: int) -> list[dict[str, Any]]:
            return self._diarizer.turns(audio, s.num_speakers, s.min_speakers, s.max_speakers, batch_size)

        result.turns = self._guarded("diarize", diarize)
        result.segments = assign_speakers(result.segments, result.turns)

    def _guarded(self, stage: str, call: Callable[[int], T], items: int | None = None) -> T:
        """Run a batched stage at the batch size the GPU's free memory allows, backing off on out-of-memory."""
        from batch.gpu import GpuOutOfMemory, run_with_oom_backoff

        try:
            output, record = run_with_oom_backoff(stage, self.sizer, call, items=items)
        except GpuOutOfMemory as exc:
            self.gpu_records[stage] = exc.record
            raise
        self.gpu_records[stage] = record
        return output

    def _speech_chunks(self, audio: np.ndarray) -> list[dict[str, Any]]:
        """Speech regions from the VAD, merged into windows of at most `chunk_size` seconds."""
        vad = self._asr.vad_model
        scores = vad({"waveform": vad.preprocess_audio(audio), "sample_rate": SAMPLE_RATE})
        return vad.merge_chunks(
            scores, self.settings.chunk_size, onset=self.settings.vad_onset, offset=self.settings.vad_offset
        )

    def _language(self, audio: np.ndarray, chunks: list[dict[str, Any]]) -> tuple[str | None, float | None]:
        """The configured language, English for an English-only model, else detected on this file alone."""
        requested = self.settings.language
        if not self.multilingual:
            if requested not in ("auto", "en"):
                raise ConfigError("language", f"the model {self.settings.model} is English-only; use en or auto")
            return "en", None
        if requested != "auto":
            return requested, None
        if not chunks:
            return None, None
        start = int(chunks[0]["start"] * SAMPLE_RATE)
        return detect_language(self._asr.model, audio[start : start + WINDOW_SAMPLES])

    def _recognize(self, audio: np.ndarray, chunks: list[dict[str, Any]], language: str | None) -> list[dict]:
        from faster_whisper.tokenizer import Tokenizer

        model = self._asr.model
        self._asr.tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )

        def recognize(batch_size: int) -> list[dict[str, Any]]:
            # Built afresh for each try, and consumed by list() inside the out-of-memory guard.
            pieces = ({"inputs": audio[int(c["start"] * SAMPLE_RATE) : int(c["end"] * SAMPLE_RATE)]} for c in chunks)
            return list(self._asr(pieces, batch_size=batch_size, num_workers=0))

        outputs = self._guarded("asr", recognize, items=len(chunks))
        segments = []
        for chunk, output in zip(chunks, outputs, strict=True):
            text, avg_logprob = _first(output["text"]), _first(output["avg_logprob"])
            if text.strip():
                segments.append(
                    {
                        "start": round(chunk["start"], 3),
                        "end": round(chunk["end"], 3),
                        "text": text.strip(),
                        "avg_logprob": round(float(avg_logprob), 4),
                    }
                )
        return segments


def _first(value: Any) -> Any:
    """The pipeline returns lists for batch size 1 and scalars otherwise."""
    return value[0] if isinstance(value, list) else value


def detect_language(model: Any, window: np.ndarray) -> tuple[str, float]:
    """Whisper's language guess for one window of up to 30 s, with its probability."""
    from whisperx.audio import log_mel_spectrogram

    n_mels = model.feat_kwargs.get("feature_size") or 80
    features = log_mel_spectrogram(window, n_mels=n_mels, padding=max(0, WINDOW_SAMPLES - window.shape[0]))
    results = model.model.detect_language(model.encode(features))
    token, probability = results[0][0]
    return token[2:-2], round(float(probability), 4)


def load_asr(settings: Settings, runtime: RuntimeOptions) -> Any:
    """The whisperx ASR pipeline with its VAD. A model that cannot be found is an environment error."""
    import torch
    from whisperx.asr import load_model

    from batch.vad import load_vad

    adopt_library_loggers()  # the imports above gave lightning and whisperx handlers of their own
    torch.set_num_threads(runtime.threads)
    model = settings.model
    try:
        vad = load_vad(settings, runtime.device)
        # whisperx prints a notice to stdout when given a VAD model; stdout belongs to --dry-run output.
        with contextlib.redirect_stdout(io.StringIO()):
            return load_model(
                model,
                device=runtime.device,
                compute_type=runtime.compute_type,
                vad_model=vad,
                vad_options=settings.vad_options(),
                download_root=settings.model_dir,
                local_files_only=hub_offline(),
                threads=runtime.threads,
            )
    except (ConfigError, EnvironmentProblem):
        raise
    except Exception as exc:
        raise asr_load_failure(model, exc) from exc
