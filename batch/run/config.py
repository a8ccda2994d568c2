"""The run's configuration: the user's settings made into the sections each part reads, in one pass.

`batch.settings.options.Settings` is what the user wrote (flags, WHISPERX_BATCH_* variables, a TOML file: one flat
set of names). `configure` turns it into a `JobConfig`: sizes in bytes, a `Shard`, alignment models as a mapping,
the token and offline mode resolved, the device and compute type decided, and every refusal that settings alone
cannot make (a token that is missing, a compute type the device cannot run, a language an English-only model
cannot read) made here, before any model loads. The environment is read here and nowhere else in a run; each
part is handed only its own section (the engine: `PipelineConfig`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batch.common.errors import ConfigError, register_secret
from batch.common.runtime import available_cpus
from batch.common.units import parse_bytes
from batch.engine.asr.decoding import DecodingOptions
from batch.engine.config import AlignConfig, AsrConfig, DiarizeConfig, HubConfig, PipelineConfig, RuntimeOptions
from batch.engine.gpu.device import (
    compute_type_problem,
    compute_types_in_a_child,
    default_compute_type,
    resolve_device,
    resolve_device_for_workers,
)
from batch.engine.loading import cached_english_only, english_only, hf_token, hub_offline, is_local, resolved_language
from batch.engine.quality.guard import QualityOptions
from batch.engine.quality.phrases import PhraseBag
from batch.engine.vad.speech import VadOptions
from batch.formats.subtitles import SubtitleOptions
from batch.formats.transcript import TRANSCRIPT_SCHEMA_VERSION
from batch.run.pool.plan import WorkerSlot, plan_workers
from batch.settings.options import (
    CHANNEL_SHAPING,
    DECODING_SHAPING,
    LANGUAGE_SHAPING,
    OUTPUT_SHAPING,
    QUALITY_SHAPING,
    SUBTITLE_FORMATS,
    SUBTITLE_SHAPING,
    Settings,
)
from batch.settings.shard import Shard, resolve_shard
from batch.settings.values import PushTarget


@dataclass(frozen=True)
class StorageConfig:
    source: str
    out: str
    endpoint_url: str | None = None
    spool_dir: str | None = None
    max_input_bytes: int = 20 * 1024**3


@dataclass(frozen=True)
class SelectionConfig:
    """Which files of SOURCE this worker takes, and whether done ones are redone."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_empty: bool = False  # a SOURCE with nothing selected is not an error
    shard: Shard | None = None
    claim: bool = False
    claim_ttl: float = 7200.0
    force: bool = False


@dataclass(frozen=True)
class ChannelConfig:
    """--channels: mix down to mono (split=False), or transcribe each channel as one speaker, named by `speakers`."""

    split: bool = False
    speakers: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueConfig:
    """--queue: the files come from this SQS queue's messages; the run ends once it is empty `idle_seconds`."""

    url: str
    idle_seconds: float | None = None  # None: the run waits for messages until it is stopped


@dataclass(frozen=True)
class RunControl:
    prefetch: int = 2
    grace_seconds: float = 25.0
    dry_run: bool = False
    keep_run_reports: int = 50  # the newest reports kept in DEST/_runs/; 0 keeps all
    max_duration: float | None = 7200.0  # seconds of audio a file may hold; None: no limit
    file_timeout: float | None = 14400.0  # seconds a file may take from its fetch to its outcome; None: no limit
    price_per_hour: float | None = None  # the machine's, for the cost per audio hour on the report page


@dataclass(frozen=True)
class MetricsConfig:
    """Where the run's Prometheus metrics go (none: nowhere). Not in the settings hash: they shape no output."""

    textfile: str | None = None
    pushgateway: PushTarget | None = None
    job: str = "whisperx_batch"
    interval: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.textfile is not None or self.pushgateway is not None


@dataclass(frozen=True)
class JobConfig:
    storage: StorageConfig
    selection: SelectionConfig
    pipeline: PipelineConfig
    formats: tuple[str, ...]
    subtitles: SubtitleOptions
    control: RunControl
    shaping: Mapping[str, Any]  # the settings that shape a transcript, as recorded in each manifest
    metrics: MetricsConfig = MetricsConfig()
    channels: ChannelConfig = ChannelConfig()
    workers: tuple[WorkerSlot, ...] = ()  # worker processes (--gpus, --workers); none: one pipeline, in-process
    queue: QueueConfig | None = None

    @property
    def settings_hash(self) -> str:
        """A stable hash of everything that shapes a transcript: a change redoes the files done before it."""
        blob = json.dumps(dict(self.shaping), sort_keys=True, separators=(",", ":"), default=list)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def configure(
    settings: Settings, environ: Mapping[str, str] | None = None, runtime: RuntimeOptions | None = None
) -> JobConfig:
    """The run's sections from its settings, or the ConfigError (exit 2) or EnvironmentProblem (exit 3) that
    stops it before any model loads. `runtime` is the device to run on when the caller has decided it (a test;
    a worker handed one GPU); otherwise it is found here (which may import CUDA libraries).

    `environ` holds the variables a job takes its own settings from: the shard a scheduler assigned
    (JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX...) and HF_TOKEN. None (the Python API's default) reads
    none of them; the command line passes os.environ. What the libraries read from the process themselves
    (CUDA_VISIBLE_DEVICES, HF_HUB_OFFLINE) is read from os.environ unless `environ` is given."""
    machine = os.environ if environ is None else environ
    environ = {} if environ is None else environ
    for key in ("out",) if settings.queue else ("source", "out"):
        if not getattr(settings, key):
            raise ConfigError(
                key, "missing: give it on the command line, in the config file, or by environment variable"
            )
    hub = hub_config(settings, environ, machine)
    runtime = runtime or runtime_options(settings)
    vad = vad_options(settings)
    default_align, per_language = settings.align_models()
    pipeline = PipelineConfig(
        asr=AsrConfig(
            settings.model,
            settings.language,
            settings.languages,
            decoding_options(settings),
            settings.other_languages,
        ),
        vad=vad,
        # As whisperx: a translation is not aligned (the wav2vec2 models time words of the spoken language).
        align=AlignConfig(settings.align and settings.task == "transcribe", default_align, per_language),
        diarize=DiarizeConfig(
            settings.diarize,
            settings.diarize_model,
            settings.num_speakers,
            settings.min_speakers,
            settings.max_speakers,
        ),
        hub=hub,
        runtime=runtime,
        quality=quality_options(settings),
    )
    config = JobConfig(
        storage=StorageConfig(
            settings.source or "",
            settings.out or "",
            settings.s3_endpoint_url,
            settings.spool_dir,
            parse_bytes(settings.max_input_size),
        ),
        selection=SelectionConfig(
            settings.include,
            settings.exclude,
            settings.allow_empty,
            _shard(settings, environ),
            settings.claim,
            settings.claim_ttl,
            settings.force,
        ),
        pipeline=pipeline,
        formats=settings.formats,
        subtitles=SubtitleOptions(
            settings.max_line_width, settings.max_line_count, settings.max_cue_duration, settings.highlight_words
        ),
        control=RunControl(
            settings.prefetch,
            settings.grace_seconds,
            settings.dry_run,
            settings.keep_run_reports,
            settings.max_duration,
            settings.file_timeout,
            settings.price_per_hour,
        ),
        shaping=shaping_settings(settings, vad, runtime.compute_type, pipeline.quality.phrases),
        metrics=metrics_config(settings),
        channels=ChannelConfig(settings.channels == "split", settings.channel_speakers),
        workers=plan_workers(settings.gpus, settings.workers, runtime, machine),
        queue=QueueConfig(settings.queue, settings.queue_idle) if settings.queue else None,
    )
    refuse_what_an_english_only_model_cannot_do(pipeline)
    return config


def runtime_options(settings: Settings) -> RuntimeOptions:
    """The device, compute type and threads this machine runs with. The compute type shapes the transcript, so
    a dry run resolves them too, to skip what a run would skip."""
    # A run in worker processes: this process only hands out files and maps no model library (the workers do).
    in_workers = settings.gpus is not None or (settings.workers or 1) > 1
    device = resolve_device_for_workers(settings.device) if in_workers else resolve_device(settings.device)
    supported = compute_types_in_a_child if in_workers else None
    if settings.compute_type is not None:
        refuse_a_compute_type_the_device_cannot_run(settings, device, supported)
    compute_type = settings.compute_type or default_compute_type(device, supported)
    return RuntimeOptions(
        device=device,
        compute_type=compute_type,
        threads=settings.threads or available_cpus(),
        batch_size=settings.batch_size,
        gpu_memory_reserve=parse_bytes(settings.gpu_memory_reserve),
    )


def vad_options(settings: Settings) -> VadOptions:
    step = {"step": settings.vad_step} if settings.vad_step is not None else {}
    return VadOptions(settings.vad_method, settings.vad_onset, settings.vad_offset, settings.chunk_size, **step)


def decoding_options(settings: Settings) -> DecodingOptions:
    return DecodingOptions(
        task=settings.task,
        initial_prompt=settings.initial_prompt,
        hotwords=settings.hotwords,
        beam_size=settings.beam_size,
        best_of=settings.best_of,
        patience=settings.patience,
        length_penalty=settings.length_penalty,
        temperatures=settings.temperatures(),
        compression_ratio_threshold=settings.compression_ratio_threshold,
        log_prob_threshold=settings.log_prob_threshold,
        no_speech_threshold=settings.no_speech_threshold,
        suppress_numerals=settings.suppress_numerals,
        no_speech_probability=settings.hallucinations != "off",
    )


def quality_options(settings: Settings) -> QualityOptions:
    """The hallucination guard; a phrases file that cannot be read is a configuration error (exit 2)."""
    try:
        phrases = PhraseBag.with_file(settings.hallucination_phrases)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("hallucination_phrases", f"cannot be read: {exc}") from None
    speakers = settings.num_speakers or settings.min_speakers
    return QualityOptions(settings.hallucinations, phrases, speakers if settings.diarize else None)


def shaping_settings(
    settings: Settings, vad: VadOptions, compute_type: str, phrases: PhraseBag | None = None
) -> dict[str, Any]:
    """What changes what a transcript says (and so redoes a done file); device, batch size, threads do not. The
    phrases file enters by the phrases it holds, not by its path: an edit redoes the files, a move does not."""
    subtitled = any(fmt in SUBTITLE_FORMATS for fmt in settings.formats)
    left_out = (() if subtitled else SUBTITLE_SHAPING) + (() if settings.channels == "split" else CHANNEL_SHAPING)
    shaping = {name: getattr(settings, name) for name in OUTPUT_SHAPING if name not in left_out}
    # `auto` on an English-only model reads English as `en` does: the same transcript, the same hash.
    shaping["language"] = resolved_language(settings.language, settings.model)
    if vad.method == "pyannote":
        shaping["vad_step"] = vad.step
    if settings.hallucinations != "off":
        shaping |= {name: getattr(settings, name) for name in QUALITY_SHAPING if getattr(settings, name) is not None}
        if settings.hallucination_phrases is not None:
            shaping["hallucination_phrases"] = phrases_digest(
                phrases or PhraseBag.with_file(settings.hallucination_phrases)
            )
    defaults = Settings.model_fields
    shaping |= {
        name: getattr(settings, name)
        for name in (*DECODING_SHAPING, *LANGUAGE_SHAPING)
        if getattr(settings, name) != defaults[name].get_default()
    }
    return shaping | {"compute_type": compute_type, "schema_version": TRANSCRIPT_SCHEMA_VERSION}


def phrases_digest(phrases: PhraseBag) -> str:
    """The user's phrases as the guard reads them (normalised, comments and blank lines left out), hashed."""
    text = "\n".join(sorted(phrases.extra))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def metrics_config(settings: Settings) -> MetricsConfig:
    target = PushTarget.parse(settings.metrics_pushgateway) if settings.metrics_pushgateway else None
    if target is not None:
        register_secret(target.password)  # kept out of every log line and error
    return MetricsConfig(settings.metrics_textfile, target, settings.metrics_job, settings.metrics_interval)


def hub_config(settings: Settings, environ: Mapping[str, str], machine: Mapping[str, str]) -> HubConfig:
    """Where models come from, with the token (resolved once, from `environ`) when diarization needs one."""
    token, source = require_diarization_token(settings, environ, machine)
    return HubConfig(settings.model_dir, hub_offline(machine), token, source)


def require_diarization_token(
    settings: Settings, environ: Mapping[str, str] | None = None, machine: Mapping[str, str] | None = None
) -> tuple[str | None, str | None]:
    """The token diarization uses and where it came from, (None, None) without --diarize; a ConfigError (exit 2)
    before any file when diarization would need a token that is not there. The token comes from `environ`
    (os.environ when None), whether the hub is offline from `machine` (`environ` when None)."""
    if not settings.diarize:
        return None, None
    token, source = hf_token(settings.hf_token_file, environ)
    if token is None and not is_local(settings.diarize_model) and not hub_offline(machine or environ):
        raise ConfigError(
            "hf_token",
            f"--diarize with {settings.diarize_model} needs a Hugging Face token: accept the model's terms at "
            f"https://hf.co/{settings.diarize_model}, then set HF_TOKEN or give --hf-token-file (a file holding "
            "the token, e.g. a mounted secret). The token is never printed or recorded.",
        )
    return token, source


def refuse_what_an_english_only_model_cannot_do(pipeline: PipelineConfig) -> None:
    """Before any model loads, where the model's name or folder tells, or the files of a hub model already in the
    cache (else the engine does, once loaded, still before any file)."""
    asr = pipeline.asr
    known = english_only(asr.model)
    if known is None and asr.english_only_problem() is not None:  # only then is the cache looked into
        known = cached_english_only(asr.model, pipeline.hub.cache_dir)
    problem = asr.english_only_problem() if known else None
    if problem is not None:
        raise ConfigError(*problem)


def refuse_a_compute_type_the_device_cannot_run(
    settings: Settings, device: str, supported: Callable[[str], Iterable[str]] | None = None
) -> None:
    """float16 on the CPU is a configuration error found now, not after the model has loaded (exit 2)."""
    assert settings.compute_type is not None
    problem = compute_type_problem(settings.compute_type, device, supported)
    if problem is not None:
        if settings.device == "auto" and device == "cpu":
            problem += "; device auto found no usable GPU"
        raise ConfigError("compute_type", problem)


def _shard(settings: Settings, environ: Mapping[str, str]) -> Shard | None:
    """--shard, else the batch engine's worker index (Kubernetes, AWS Batch); a bad combination is exit 2."""
    try:
        return resolve_shard(settings.shard, environ)
    except ValueError as exc:
        raise ConfigError("shard", str(exc)) from None
