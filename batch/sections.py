"""The run's configuration in sections with parsed values, built once from the settings and the environment.

`batch.config.Settings` is what the user wrote (flags, WHISPERX_BATCH_* variables, a TOML file: one flat
set of names). `JobConfig` is what the components read: sizes in bytes, a `Shard`, alignment models as a
mapping, offline mode and the token resolved, the device and compute type decided. The environment is read
here and nowhere else in a run; each component is handed only its own section.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batch.config import TRANSCRIPT_SCHEMA_VERSION, Settings
from batch.decoding import DecodingOptions
from batch.errors import ConfigError, register_secret
from batch.metrics_export import PushTarget
from batch.shard import Shard, resolve_shard
from batch.subtitles import SubtitleOptions
from batch.units import parse_bytes
from batch.vad import VadOptions


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
class HubConfig:
    """Where models come from. The token's value is never shown (repr) and never recorded."""

    cache_dir: str | None = None
    offline: bool = False
    token: str | None = field(default=None, repr=False)
    token_source: str | None = None  # hf_token_file, HF_TOKEN, ...: said in messages instead of the value


@dataclass(frozen=True)
class RuntimeOptions:
    """How the models run on this machine (does not change what they say)."""

    device: str
    compute_type: str
    threads: int
    batch_size: int
    gpu_memory_reserve: int = 1024**3


@dataclass(frozen=True)
class AsrConfig:
    model: str = "large-v3"
    language: str = "auto"  # an ISO code, or auto: detected per file
    languages: tuple[str, ...] = ()  # with auto: detected among these only
    decoding: DecodingOptions = field(default_factory=DecodingOptions)

    def english_only_problem(self) -> tuple[str, str] | None:
        """(key, message) when an English-only model cannot do what is asked of it."""
        if self.language not in ("auto", "en"):
            return "language", f"the model {self.model} is English-only; use en or auto"
        if self.languages and "en" not in self.languages:
            return "languages", f"the model {self.model} is English-only: it detects only en"
        if self.decoding.task == "translate":
            return "task", f"the model {self.model} is English-only: it cannot translate; use a multilingual model"
        return None


@dataclass(frozen=True)
class AlignConfig:
    enabled: bool = True
    model: str | None = None  # for every language, when given
    per_language: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DiarizeConfig:
    enabled: bool = False
    model: str = "pyannote/speaker-diarization-community-1"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass(frozen=True)
class ChannelConfig:
    """--channels: mix down to mono (split=False), or transcribe each channel as one speaker, named by `speakers`."""

    split: bool = False
    speakers: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the models need: what the pipeline is built from."""

    asr: AsrConfig
    vad: VadOptions
    align: AlignConfig
    diarize: DiarizeConfig
    hub: HubConfig
    runtime: RuntimeOptions


@dataclass(frozen=True)
class RunControl:
    prefetch: int = 2
    grace_seconds: float = 25.0
    dry_run: bool = False
    keep_run_reports: int = 50  # the newest reports kept in DEST/_runs/; 0 keeps all


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

    @property
    def settings_hash(self) -> str:
        """A stable hash of everything that shapes a transcript: a change redoes the files done before it."""
        blob = json.dumps(dict(self.shaping), sort_keys=True, separators=(",", ":"), default=list)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def build_config(
    settings: Settings, environ: Mapping[str, str] | None = None, runtime: RuntimeOptions | None = None
) -> JobConfig:
    """The sections of a run from its settings. `runtime` is the resolved device (see batch.runtime); given
    by the caller because finding it may import CUDA libraries, which a dry run must not."""
    environ = os.environ if environ is None else environ
    runtime = runtime or RuntimeOptions("cpu", settings.compute_type or "int8", settings.threads or 1,
                                        settings.batch_size)  # fmt: skip
    default_align, per_language = settings.align_models()
    vad = VadOptions(
        method=settings.vad_method,
        onset=settings.vad_onset,
        offset=settings.vad_offset,
        chunk_size=settings.chunk_size,
        **({"step": settings.vad_step} if settings.vad_step is not None else {}),
    )
    pipeline = PipelineConfig(
        asr=AsrConfig(settings.model, settings.language, settings.languages, decoding_options(settings)),
        vad=vad,
        # As whisperx: a translation is not aligned (the wav2vec2 models time words of the spoken language).
        align=AlignConfig(settings.align and settings.task == "transcribe", default_align, per_language),
        diarize=DiarizeConfig(
            settings.diarize, settings.diarize_model, settings.num_speakers, settings.min_speakers,
            settings.max_speakers,
        ),  # fmt: skip
        hub=hub_config(settings, environ),
        runtime=runtime,
    )
    return JobConfig(
        storage=StorageConfig(
            settings.source or "", settings.out or "", settings.s3_endpoint_url, settings.spool_dir,
            parse_bytes(settings.max_input_size),
        ),  # fmt: skip
        selection=SelectionConfig(
            settings.include, settings.exclude, settings.allow_empty, _shard(settings, environ), settings.claim,
            settings.claim_ttl, settings.force,
        ),  # fmt: skip
        pipeline=pipeline,
        formats=settings.formats,
        subtitles=SubtitleOptions(settings.max_line_width, settings.max_line_count, settings.max_cue_duration,
                                  settings.highlight_words),  # fmt: skip
        control=RunControl(settings.prefetch, settings.grace_seconds, settings.dry_run,
                           settings.keep_run_reports),
        shaping=shaping_settings(settings, vad, runtime.compute_type),
        metrics=metrics_config(settings),
        channels=ChannelConfig(settings.channels == "split", settings.channel_speakers),
    )


def decoding_options(settings: Settings) -> DecodingOptions:
    return DecodingOptions(
        task=settings.task, initial_prompt=settings.initial_prompt, hotwords=settings.hotwords,
        beam_size=settings.beam_size, best_of=settings.best_of, patience=settings.patience,
        length_penalty=settings.length_penalty, temperatures=settings.temperatures(),
        compression_ratio_threshold=settings.compression_ratio_threshold,
        log_prob_threshold=settings.log_prob_threshold, no_speech_threshold=settings.no_speech_threshold,
        suppress_numerals=settings.suppress_numerals,
    )  # fmt: skip


def shaping_settings(settings: Settings, vad: VadOptions, compute_type: str) -> dict[str, Any]:
    """What changes what a transcript says (and so redoes a done file); device, batch size, threads do not."""
    from batch.config import CHANNEL_SHAPING, DECODING_SHAPING, OUTPUT_SHAPING, SUBTITLE_FORMATS, SUBTITLE_SHAPING
    from batch.models import resolved_language

    subtitled = any(fmt in SUBTITLE_FORMATS for fmt in settings.formats)
    left_out = (() if subtitled else SUBTITLE_SHAPING) + (() if settings.channels == "split" else CHANNEL_SHAPING)
    shaping = {name: getattr(settings, name) for name in OUTPUT_SHAPING if name not in left_out}
    # `auto` on an English-only model reads English as `en` does: the same transcript, the same hash.
    shaping["language"] = resolved_language(settings.language, settings.model)
    if vad.method == "pyannote":
        shaping["vad_step"] = vad.step
    defaults = Settings.model_fields
    shaping |= {name: getattr(settings, name) for name in DECODING_SHAPING
                if getattr(settings, name) != defaults[name].get_default()}  # fmt: skip
    return shaping | {"compute_type": compute_type, "schema_version": TRANSCRIPT_SCHEMA_VERSION}


def metrics_config(settings: Settings) -> MetricsConfig:
    target = PushTarget.parse(settings.metrics_pushgateway) if settings.metrics_pushgateway else None
    if target is not None:
        register_secret(target.password)  # kept out of every log line and error
    return MetricsConfig(settings.metrics_textfile, target, settings.metrics_job, settings.metrics_interval)


def hub_config(settings: Settings, environ: Mapping[str, str]) -> HubConfig:
    from batch.models import hf_token

    offline = environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    token, source = hf_token(settings, environ) if settings.diarize else (None, None)
    return HubConfig(settings.model_dir, offline, token, source)


def _shard(settings: Settings, environ: Mapping[str, str]) -> Shard | None:
    """--shard, else the batch engine's worker index (Kubernetes, AWS Batch); a bad combination is exit 2."""
    try:
        return resolve_shard(settings.shard, environ)
    except ValueError as exc:
        raise ConfigError("shard", str(exc)) from None
