"""Typed, validated run settings, layered: flag > environment > config file > default.

Every setting has one name, used as the TOML key (`batch_size`), the environment variable
(`WHISPERX_BATCH_BATCH_SIZE`) and the flag (`--batch-size`). An unknown key or a bad value raises
ConfigError naming the key and where the value came from, before any model loads.
"""

from __future__ import annotations

import os
import re
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

from batch.config_sources import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    SHARD_COUNT_ENV_VAR,
    env_name,
    read_config_file,
    read_environment,
)
from batch.errors import ConfigError, raise_config_problems

__all__ = ["CONFIG_ENV_VAR", "ENV_PREFIX", "SHARD_COUNT_ENV_VAR", "Settings", "env_name", "load_settings"]

# Bump when the transcript JSON changes shape: outputs made under another version are redone.
TRANSCRIPT_SCHEMA_VERSION = 1

OUTPUT_FORMATS = ("json", "srt", "vtt", "txt", "tsv", "turns", "rttm")
SPEAKER_FORMATS = ("rttm",)  # need speakers: --diarize, or --channels split
SUBTITLE_FORMATS = ("srt", "vtt")
# Subtitle layout defaults from Netflix's Timed Text Style Guide: 42 characters a line, 2 lines, 7 s on screen.
LINE_WIDTH, LINE_COUNT, CUE_SECONDS = 42, 2, 7.0
DEFAULT_DIARIZE_MODEL = "pyannote/speaker-diarization-community-1"
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
    "task", "languages", "initial_prompt", "hotwords", "beam_size", "best_of", "patience", "length_penalty",
    "temperature", "temperature_increment_on_fallback", "compression_ratio_threshold", "log_prob_threshold",
    "no_speech_threshold", "suppress_numerals",
)  # fmt: skip


class Settings(BaseModel):
    """Every option of `whisperx-batch run`. Frozen: built once, then only read."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    source: str | None = None
    out: str | None = None
    model: str = "large-v3"
    model_dir: str | None = None
    language: str = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    compute_type: Literal[COMPUTE_TYPES] | None = None  # type: ignore[valid-type]
    batch_size: int = Field(16, ge=1, le=512)
    threads: int | None = Field(None, ge=1, le=1024)
    gpu_memory_reserve: str = "1GiB"
    prefetch: int = Field(2, ge=0, le=8)
    grace_seconds: float = Field(25.0, ge=0, le=3600)
    shard: str | None = None
    claim: bool = False
    claim_ttl: float = Field(7200.0, gt=0, le=7 * 24 * 3600)
    s3_endpoint_url: str | None = None
    spool_dir: str | None = None
    max_input_size: str = "20GiB"
    vad_method: Literal["pyannote", "silero"] = "pyannote"
    vad_onset: float = Field(0.5, gt=0, lt=1)
    vad_offset: float = Field(0.363, gt=0, lt=1)
    vad_step: float | None = Field(None, gt=0, le=5)  # None: batch.vad's measured default
    chunk_size: float = Field(30.0, gt=0, le=30)
    task: Literal["transcribe", "translate"] = "transcribe"
    languages: tuple[str, ...] = ()  # with language auto: detect among these only
    initial_prompt: str | None = None
    hotwords: str | None = None
    beam_size: int = Field(5, ge=1, le=64)
    best_of: int = Field(5, ge=1, le=64)
    patience: float = Field(1.0, gt=0, le=10)
    length_penalty: float = Field(1.0, ge=0, le=2)
    temperature: float = Field(0.0, ge=0, le=1)
    temperature_increment_on_fallback: float | None = Field(None, gt=0, le=1)  # None: no fallback
    compression_ratio_threshold: float = Field(2.4, gt=0)
    log_prob_threshold: float = Field(-1.0, le=0)
    no_speech_threshold: float | None = Field(None, gt=0, lt=1)  # None: no chunk is dropped as silence
    suppress_numerals: bool = False
    align: bool = True
    align_model: tuple[str, ...] = ()
    diarize: bool = False
    diarize_model: str = DEFAULT_DIARIZE_MODEL
    min_speakers: int | None = Field(None, ge=1, le=100)
    max_speakers: int | None = Field(None, ge=1, le=100)
    num_speakers: int | None = Field(None, ge=1, le=100)
    hf_token_file: str | None = None
    channels: Literal["mix", "split"] = "mix"
    channel_speakers: tuple[str, ...] = ()
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
    metrics_textfile: str | None = None
    metrics_pushgateway: str | None = None
    metrics_job: str = Field("whisperx_batch", min_length=1, max_length=200)
    metrics_interval: float = Field(30.0, ge=1, le=3600)
    keep_run_reports: int = Field(50, ge=0, le=1_000_000)  # 0 keeps every report

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        return normalize_language(value)

    @field_validator("languages", mode="before")
    @classmethod
    def _language_set(cls, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else _as_list(value)
        codes = {normalize_language(part) for item in items for part in str(item).split(",") if part.strip()}
        if "auto" in codes:
            raise ValueError("'auto' is not a language: list languages such as en,es,de")
        return tuple(sorted(codes))  # sorted: the settings hash does not depend on the order given

    @field_validator("initial_prompt", "hotwords")
    @classmethod
    def _text_or_none(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    @field_validator("temperature_increment_on_fallback", "no_speech_threshold", mode="before")
    @classmethod
    def _off_is_none(cls, value: Any) -> Any:
        """whisperx's command line takes "None" to turn these off; so do the flag, the variable and the file."""
        return None if isinstance(value, str) and value.strip().lower() in ("none", "off", "") else value

    def temperatures(self) -> tuple[float, ...]:
        from batch.decoding import temperature_schedule

        return temperature_schedule(self.temperature, self.temperature_increment_on_fallback)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return normalize_model(value)

    @field_validator("hf_token_file", "model_dir")
    @classmethod
    def _absolute_if_local(cls, value: str | None) -> str | None:
        return absolute_if_local(value)

    @field_validator("diarize_model")
    @classmethod
    def _diarize_model(cls, value: str) -> str:
        return absolute_if_local(value) or DEFAULT_DIARIZE_MODEL

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.strip()

    @field_validator("metrics_textfile")
    @classmethod
    def _textfile(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        path = Path(value.strip()).expanduser().absolute()
        if not path.parent.is_dir():  # a typo: refused before any model loads (an unwritable folder only warns)
            raise ValueError(f"folder not found: {path.parent}")
        return str(path)

    @field_validator("metrics_pushgateway")
    @classmethod
    def _pushgateway(cls, value: str | None) -> str | None:
        from batch.metrics_export import PushTarget

        return None if value is None or not value.strip() else PushTarget.parse(value).full_url

    @field_validator("align_model", mode="before")
    @classmethod
    def _align_models(cls, value: Any) -> tuple[str, ...]:
        """`NAME|DIR` for every language, and/or `LANG=NAME|DIR` entries (comma list or repeated)."""
        items = [value] if isinstance(value, str) else _as_list(value or ())
        entries, default_seen = [], False
        for item in (part.strip() for raw in items for part in str(raw).split(",") if part.strip()):
            language, sep, model = item.partition("=")
            if sep:
                entries.append(f"{normalize_language(language)}={absolute_if_local(model)}")
            elif default_seen:
                raise ValueError("only one alignment model can apply to every language; use LANG=MODEL entries")
            else:
                default_seen = True
                entries.append(absolute_if_local(item) or item)
        return tuple(entries)

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
            raise ValueError("channels: split labels each channel's speaker by its channel; it does not go with "
                             "--diarize (use one or the other)")  # fmt: skip
        if self.channel_speakers and self.channels != "split":
            raise ValueError("channel_speakers: names the channels of --channels split, which is not set")
        if self.highlight_words and not self.align:
            raise ValueError("highlight_words: words are highlighted as they are said, which needs --align")
        if self.highlight_words and self.task == "translate":
            raise ValueError("highlight_words: a translation is not aligned, so its words cannot be highlighted")
        if self.languages and self.language != "auto":
            raise ValueError(f"languages: a set to detect among needs language auto, not {self.language!r}")
        return self

    @field_validator("channel_speakers", mode="before")
    @classmethod
    def _channel_speakers(cls, value: Any) -> tuple[str, ...]:
        from batch.channels import checked_speaker_names

        items = [value] if isinstance(value, str) else _as_list(value or ())
        return checked_speaker_names([part.strip() for item in items for part in str(item).split(",")])

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        from batch.shard import Shard

        return None if value is None or not value.strip() else str(Shard.parse(value))

    @field_validator("gpu_memory_reserve", "max_input_size", mode="before")
    @classmethod
    def _memory_size(cls, value: Any) -> str:
        from batch.units import parse_bytes

        text = str(value).strip()
        parse_bytes(text)  # raises ValueError with the reason
        return text

    @field_validator("formats", mode="before")
    @classmethod
    def _known_formats(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        names = [value] if isinstance(value, str) else _as_list(value)
        wanted = {name.strip().lower() for item in names for name in str(item).split(",") if name.strip()}
        if "all" in wanted:  # every format the run can write: the speaker ones only with diarize or split channels
            with_speakers = bool(info.data.get("diarize")) or info.data.get("channels") == "split"
            wanted = (wanted - {"all"}) | {fmt for fmt in OUTPUT_FORMATS if with_speakers or fmt not in SPEAKER_FORMATS}
        unknown = sorted(wanted - set(OUTPUT_FORMATS))
        if unknown:
            choices = ", ".join(OUTPUT_FORMATS)
            raise ValueError(f"unknown format {', '.join(unknown)}; choose from {choices}, or all")
        # json is always written; keep a stable order so the settings hash does not depend on it.
        return tuple(name for name in OUTPUT_FORMATS if name in wanted or name == "json")


def _as_list(value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list or a comma-separated string, not {value!r}")
    return list(value)


def absolute_if_local(value: str | None) -> str | None:
    """Local paths made absolute, so the settings hash does not depend on the working folder."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    path = Path(text).expanduser()
    if text.startswith(("/", "./", "../", "~")) or path.exists():
        return str(path.resolve())
    return text


def normalize_language(value: str) -> str:
    """`auto`, an ISO code (`ru`) or a full name (`Russian`) -> `auto` or the ISO code."""
    from whisperx.utils import LANGUAGES, TO_LANGUAGE_CODE  # light module: tables only

    text = value.strip().lower()
    if text == "auto" or text in LANGUAGES:
        return text
    if text in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[text]
    raise ValueError(f"unknown language {value!r}; use an ISO code such as 'en', a name such as 'Russian', or 'auto'")


_HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def normalize_model(value: str) -> str:
    """A Whisper size name, a Hugging Face repo id, or a local CTranslate2 folder (made absolute)."""
    from faster_whisper.utils import available_models

    text = value.strip()
    if not text:
        raise ValueError("empty model name")
    folder = Path(text).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    if text.startswith(("/", "./", "../", "~")):
        # A missing folder is an environment problem (exit 3), reported when the run starts.
        return str(folder.absolute())
    if text in available_models() or _HUB_REPO_ID.fullmatch(text):
        return text
    raise ValueError(
        f"unknown model {value!r}; use a Whisper name ({', '.join(available_models())}), "
        "a Hugging Face repo id, or a local CTranslate2 model folder"
    )


FIELD_NAMES = tuple(Settings.model_fields)


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags, validate, and return the settings.

    `flags` holds only the options given on the command line (None means not given).
    """
    environ = os.environ if environ is None else environ
    config_path = config_path or environ.get(CONFIG_ENV_VAR) or None
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems: list[ConfigError] = []
    if config_path:
        in_file = read_config_file(Path(config_path), FIELD_NAMES)
        values |= in_file.values
        origin |= {key: f"config file {config_path}" + (f", as {name}" if name != key else "")
                   for key, name in in_file.names.items()}  # fmt: skip
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
