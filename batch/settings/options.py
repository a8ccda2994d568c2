"""Typed, validated run settings, layered: flag > environment > config file > default.

Every setting has one name, used as the TOML key (`batch_size`), the environment variable
(`WHISPERX_BATCH_BATCH_SIZE`) and the flag (`--batch-size`). An unknown key or a bad value raises
ConfigError naming the key and where the value came from, before any model loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batch.common.errors import ConfigError, raise_config_problems
from batch.settings.sources import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    SHARD_COUNT_ENV_VAR,
    env_name,
    read_config_file,
    read_environment,
)
from batch.settings.values import (
    DEFAULT_DIARIZE_MODEL,
    AlignModels,
    ChannelSpeakers,
    DiarizeModel,
    Gpus,
    HttpUrl,
    Language,
    LanguageSet,
    LocalPath,
    MemorySize,
    ModelName,
    OffIsNone,
    PushgatewayUrl,
    ShardSpec,
    Text,
    TextfilePath,
    listed,
    temperature_schedule,
)

__all__ = ["CONFIG_ENV_VAR", "ENV_PREFIX", "SHARD_COUNT_ENV_VAR", "Settings", "env_name", "load_settings"]

OUTPUT_FORMATS = ("json", "srt", "vtt", "txt", "tsv", "turns", "rttm")
SPEAKER_FORMATS = ("rttm",)  # need speakers: --diarize, or --channels split
SUBTITLE_FORMATS = ("srt", "vtt")
# Subtitle layout defaults from Netflix's Timed Text Style Guide: 42 characters a line, 2 lines, 7 s on screen.
LINE_WIDTH, LINE_COUNT, CUE_SECONDS = 42, 2, 7.0
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float16",
    "int8_float32",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)

# Settings that shape the subtitles only: a change redoes a done file only when it has subtitles.
SUBTITLE_SHAPING = ("max_line_width", "max_line_count", "max_cue_duration", "highlight_words")

# Settings of --channels split: part of the hash only when channels are split, so that the default (mix) leaves
# the hash of every file done before these settings existed as it was.
CHANNEL_SHAPING = ("channels", "channel_speakers")

# The hallucination guard shapes a transcript unless it is off; off (whisperx's output) is left out of the hash,
# so files done before the guard existed are done with it off.
QUALITY_SHAPING = ("hallucinations", "hallucination_phrases")

# With a forced language, how speech in another is read: in the hash when not at its default (it is refused without
# a forced language, so it is no decoding option to change alone).
LANGUAGE_SHAPING = ("other_languages",)

# Settings that change what a transcript says. A change to any of them redoes a done file; the rest
# (device, batch size, threads, logging) change how fast or how loudly, not what.
OUTPUT_SHAPING = (
    "model",
    "language",
    "vad_method",
    "vad_onset",
    "vad_offset",
    "chunk_size",
    "formats",
    "align",
    "align_model",
    "diarize",
    "diarize_model",
    "min_speakers",
    "max_speakers",
    "num_speakers",
    *CHANNEL_SHAPING,
    *SUBTITLE_SHAPING,
)
# Decoding settings shape a transcript too. Each is recorded (and hashed) only when it is not at its default,
# so a run made before these settings existed keeps its settings hash and its done files.
DECODING_SHAPING = (
    "task",
    "languages",
    "initial_prompt",
    "hotwords",
    "beam_size",
    "best_of",
    "patience",
    "length_penalty",
    "temperature",
    "temperature_increment_on_fallback",
    "compression_ratio_threshold",
    "log_prob_threshold",
    "no_speech_threshold",
    "suppress_numerals",
)


class Settings(BaseModel):
    """Every option of `whisperx-batch run`. Frozen: built once, then only read."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    source: str | None = None
    out: str | None = None
    model: ModelName = "large-v3"
    model_dir: LocalPath = None
    language: Language = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    compute_type: Literal[COMPUTE_TYPES] | None = None  # type: ignore[valid-type]
    batch_size: int = Field(16, ge=1, le=512)
    threads: int | None = Field(None, ge=1, le=1024)
    gpus: Gpus = None  # one worker process per GPU: all, a count, or a list
    workers: int | None = Field(None, ge=1, le=256)  # on the CPU: worker processes sharing the threads
    gpu_memory_reserve: MemorySize = "1GiB"
    prefetch: int = Field(2, ge=0, le=8)
    grace_seconds: float = Field(25.0, ge=0, le=3600)
    shard: ShardSpec = None
    claim: bool = False
    claim_ttl: float = Field(7200.0, gt=0, le=7 * 24 * 3600)
    queue: HttpUrl = None  # files from an SQS queue's messages instead of SOURCE's listing
    queue_idle: float | None = Field(None, ge=0, le=7 * 24 * 3600)  # exit 0 once the queue is empty this long
    s3_endpoint_url: HttpUrl = None
    spool_dir: str | None = None
    max_input_size: MemorySize = "20GiB"
    max_duration: OffIsNone[float] = Field(7200.0, gt=0)  # seconds of audio; a longer file fails before it is decoded
    file_timeout: OffIsNone[float] = Field(14400.0, gt=0)  # seconds a file may take, fetch to outcome
    vad_method: Literal["pyannote", "silero"] = "pyannote"
    vad_onset: float = Field(0.5, gt=0, lt=1)
    vad_offset: float = Field(0.363, gt=0, lt=1)
    vad_step: float | None = Field(None, gt=0, le=5)  # None: batch.engine.vad.speech's measured default
    chunk_size: float = Field(30.0, gt=0, le=30)
    task: Literal["transcribe", "translate"] = "transcribe"
    languages: LanguageSet = ()  # with language auto: each speech chunk read in the likeliest of these
    other_languages: Literal["transcribe", "flag"] = "transcribe"  # a chunk in another language than a forced one
    initial_prompt: Text = None
    hotwords: Text = None
    beam_size: int = Field(5, ge=1, le=64)
    best_of: int = Field(5, ge=1, le=64)
    patience: float = Field(1.0, gt=0, le=10)
    length_penalty: float = Field(1.0, ge=0, le=2)
    temperature: float = Field(0.0, ge=0, le=1)
    temperature_increment_on_fallback: OffIsNone[float] = Field(None, gt=0, le=1)  # None: no fallback
    compression_ratio_threshold: float = Field(2.4, gt=0)
    log_prob_threshold: float = Field(-1.0, le=0)
    no_speech_threshold: OffIsNone[float] = Field(None, gt=0, lt=1)  # None: no chunk is dropped as silence
    suppress_numerals: bool = False
    hallucinations: Literal["drop", "flag", "off"] = "drop"  # batch.engine.quality: what to do with text nobody said
    hallucination_phrases: LocalPath = None  # more known hallucinations, one a line
    align: bool = True
    align_model: AlignModels = ()
    diarize: bool = False
    diarize_model: DiarizeModel = DEFAULT_DIARIZE_MODEL
    min_speakers: int | None = Field(None, ge=1, le=100)
    max_speakers: int | None = Field(None, ge=1, le=100)
    num_speakers: int | None = Field(None, ge=1, le=100)
    hf_token_file: LocalPath = None
    channels: Literal["mix", "split"] = "mix"
    channel_speakers: ChannelSpeakers = ()
    formats: tuple[str, ...] = ("json",)
    max_line_width: int = Field(LINE_WIDTH, ge=10, le=1000)
    max_line_count: int = Field(LINE_COUNT, ge=1, le=10)
    max_cue_duration: float = Field(CUE_SECONDS, ge=1, le=60)
    highlight_words: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_empty: bool = False  # a SOURCE with nothing selected is an error (exit 2) unless this is set
    force: bool = False
    dry_run: bool = False
    quiet: bool = False
    log_format: Literal["text", "json"] = "text"
    progress_interval: float = Field(60.0, ge=0, le=86400)  # seconds between progress lines off a terminal; 0: none
    metrics_textfile: TextfilePath = None
    metrics_pushgateway: PushgatewayUrl = None
    metrics_job: str = Field("whisperx_batch", min_length=1, max_length=200)
    metrics_interval: float = Field(30.0, ge=1, le=3600)
    keep_run_reports: int = Field(50, ge=0, le=1_000_000)  # 0 keeps every report
    price_per_hour: float | None = Field(None, ge=0, le=1_000_000)  # the machine's, for the report page's cost

    def temperatures(self) -> tuple[float, ...]:
        return temperature_schedule(self.temperature, self.temperature_increment_on_fallback)

    def align_models(self) -> tuple[str | None, dict[str, str]]:
        """(the model for every language, {language: model}) from the align_model entries."""
        default = next((entry for entry in self.align_model if "=" not in entry.split("/")[0]), None)
        by_language = dict(entry.split("=", 1) for entry in self.align_model if "=" in entry.split("/")[0])
        return default, by_language

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.num_speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise ValueError("num_speakers: give either num_speakers or min_speakers/max_speakers, not both")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError("min_speakers: larger than max_speakers")
        needs_speakers = [fmt for fmt in self.formats if fmt in SPEAKER_FORMATS]
        if needs_speakers and not self.diarize and self.channels != "split":
            raise ValueError(f"formats: {', '.join(needs_speakers)} needs --diarize or --channels split")
        if self.channels == "split" and self.diarize:
            raise ValueError(
                "channels: split labels each channel's speaker by its channel; it does not go with "
                "--diarize (use one or the other)"
            )
        if self.channel_speakers and self.channels != "split":
            raise ValueError("channel_speakers: names the channels of --channels split, which is not set")
        if self.gpus is not None and self.workers is not None:
            raise ValueError("workers: --gpus starts one worker per GPU; --workers splits the CPU; give one of them")
        if self.gpus is not None and self.device == "cpu":
            raise ValueError("gpus: --gpus runs a worker on each GPU, which needs device cuda or auto, not cpu")
        if self.workers is not None and self.device == "cuda":
            raise ValueError("workers: --workers splits the CPU among processes; on GPUs use --gpus (one worker each)")
        if self.queue is not None and self.source:
            raise ValueError("source: --queue says which files to do; give SOURCE or --queue, not both")
        if self.queue is not None and (self.shard or self.claim):
            raise ValueError("queue: a queue gives each message to one consumer; it needs no --shard nor --claim")
        if self.queue is not None and self.dry_run:
            raise ValueError(
                "dry_run: SQS shows a message only by receiving it, which hides it from other consumers and counts "
                "toward its dead-letter limit, so a dry run cannot look at a queue without changing it; --dry-run "
                "lists SOURCE's pending files (the queue's depth is its ApproximateNumberOfMessages attribute)"
            )
        if self.queue_idle is not None and self.queue is None:
            raise ValueError("queue_idle: is how long --queue may stay empty, and --queue is not set")
        if self.highlight_words and not self.align:
            raise ValueError("highlight_words: words are highlighted as they are said, which needs --align")
        if self.highlight_words and self.task == "translate":
            raise ValueError("highlight_words: a translation is not aligned, so its words cannot be highlighted")
        if self.hallucination_phrases and self.hallucinations == "off":
            raise ValueError("hallucination_phrases: the phrases are for the hallucination guard, which is off")
        if self.languages and self.language != "auto":
            raise ValueError(f"languages: a set to detect among needs language auto, not {self.language!r}")
        if self.other_languages != "transcribe" and (self.language == "auto" or self.task == "translate"):
            raise ValueError(
                "other_languages: says how speech in another language than a forced --language is read; "
                + ("a translation is English on purpose" if self.task == "translate" else "language is auto")
            )
        return self

    @field_validator("formats", mode="before")
    @classmethod
    def _known_formats(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        wanted = {name.lower() for name in listed(value)}
        if "all" in wanted:  # every format the run can write: the speaker ones only with diarize or split channels
            with_speakers = bool(info.data.get("diarize")) or info.data.get("channels") == "split"
            wanted = (wanted - {"all"}) | {fmt for fmt in OUTPUT_FORMATS if with_speakers or fmt not in SPEAKER_FORMATS}
        unknown = sorted(wanted - set(OUTPUT_FORMATS))
        if unknown:
            choices = ", ".join(OUTPUT_FORMATS)
            raise ValueError(f"unknown format {', '.join(unknown)}; choose from {choices}, or all")
        # json is always written; keep a stable order so the settings hash does not depend on it.
        return tuple(name for name in OUTPUT_FORMATS if name in wanted or name == "json")


FIELD_NAMES = tuple(Settings.model_fields)


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags, validate, and return the settings.

    `flags` holds only the options given on the command line (None means not given). The environment
    (WHISPERX_BATCH_* and the config file WHISPERX_BATCH_CONFIG names) is read only from `environ` when the
    caller gives one (the command line gives os.environ); the config file from `config_path` or that variable.
    """
    environ = {} if environ is None else environ
    config_path = config_path or environ.get(CONFIG_ENV_VAR) or None
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems: list[ConfigError] = []
    if config_path:
        in_file = read_config_file(Path(config_path), FIELD_NAMES)
        values |= in_file.values
        origin |= {
            key: f"config file {config_path}" + (f", as {name}" if name != key else "")
            for key, name in in_file.names.items()
        }
        problems += in_file.problems
    in_environment = read_environment(environ, FIELD_NAMES)
    values |= in_environment.values
    origin |= in_environment.names
    problems += in_environment.problems
    for key, value in flags.items():
        if value is not None:
            values[key], origin[key] = value, flag_name(key)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems += _validation_problems(exc, origin)
    raise_config_problems(problems)
    return settings


def _validation_problems(exc: ValidationError, origin: Mapping[str, str]) -> list[ConfigError]:
    """One ConfigError per setting pydantic found wrong (the first message of each), in the order found."""
    problems: dict[str, ConfigError] = {}
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            key = str(error["loc"][0])
        else:  # a check across keys names its key first: "key: message"
            key, _, message = message.partition(": ")
        problems.setdefault(key, ConfigError(key, message, origin.get(key)))
    return list(problems.values())
