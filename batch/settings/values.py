"""The value types of the settings: each parses and checks one kind of value (a language, a model name, a
local path, a memory size...) wherever it is used, so `Settings` is a list of typed fields.

A check that fails raises ValueError; pydantic reports it with the setting's name and where it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator

from batch.common.units import parse_bytes
from batch.settings.shard import Shard

DEFAULT_DIARIZE_MODEL = "pyannote/speaker-diarization-community-1"


def as_list(value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list or a comma-separated string, not {value!r}")
    return list(value)


def listed(value: Any) -> list[str]:
    """A comma-separated string, or a list of them, as its items: stripped, empty ones left out."""
    items = [value] if isinstance(value, str) else as_list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


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
    from batch.common.model_names import whisper_model_names as available_models

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


def language_set(value: Any) -> tuple[str, ...]:
    codes = {normalize_language(part) for part in listed(value)}
    if "auto" in codes:
        raise ValueError("'auto' is not a language: list languages such as en,es,de")
    return tuple(sorted(codes))  # sorted: the settings hash does not depend on the order given


def text_or_none(value: str | None) -> str | None:
    return (value.strip() or None) if value is not None else None


def off_is_none(value: Any) -> Any:
    """whisperx's command line takes "None" to turn some options off; so do the flag, the variable and the file."""
    return None if isinstance(value, str) and value.strip().lower() in ("none", "off", "") else value


def http_url(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.strip()


def textfile_path(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    path = Path(value.strip()).expanduser().absolute()
    if not path.parent.is_dir():  # a typo: refused before any model loads (an unwritable folder only warns)
        raise ValueError(f"folder not found: {path.parent}")
    return str(path)


@dataclass(frozen=True)
class PushTarget:
    """A Pushgateway URL; credentials given in it (`https://user:pass@host`) are sent as HTTP basic auth and
    kept out of `url`, the form that is safe to show."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> PushTarget:
        """`http(s)://[user:pass@]host[:port][/path]`, or `host:port` (http); a ValueError that does not
        repeat the text (it may hold a password) otherwise."""
        raw = text.strip()
        parts = urlsplit(raw if "://" in raw else "http://" + raw)
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError("the port is not a number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL with a host, such as http://pushgateway:9091")
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), parts.query, ""))
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(url, username, password)

    @property
    def full_url(self) -> str:
        """The URL as given, credentials included: what the settings keep."""
        if self.username is None:
            return self.url
        scheme, _, rest = self.url.partition("://")
        secret = f":{self.password}" if self.password is not None else ""
        return f"{scheme}://{self.username}{secret}@{rest}"


def pushgateway_url(value: str | None) -> str | None:
    return None if value is None or not value.strip() else PushTarget.parse(value).full_url


def align_model_entries(value: Any) -> tuple[str, ...]:
    """`NAME|DIR` for every language, and/or `LANG=NAME|DIR` entries (comma list or repeated)."""
    entries, default_seen = [], False
    for item in listed(value or ()):
        language, sep, model = item.partition("=")
        if sep:
            entries.append(f"{normalize_language(language)}={absolute_if_local(model)}")
        elif default_seen:
            raise ValueError("only one alignment model can apply to every language; use LANG=MODEL entries")
        else:
            default_seen = True
            entries.append(absolute_if_local(item) or item)
    return tuple(entries)


def checked_speaker_names(names: list[str]) -> tuple[str, ...]:
    """The names --channel-speakers gives, or ValueError: each distinct, and without spaces (RTTM has none)."""
    if any(not name for name in names):
        raise ValueError("an empty speaker name; give one name per channel: agent,customer")
    spaced = [name for name in names if any(char.isspace() for char in name)]
    if spaced:
        raise ValueError(f"speaker names cannot hold spaces (RTTM fields are separated by them): {spaced[0]!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"each channel needs a name of its own; given twice: {', '.join(repeated)}")
    return tuple(names)


def channel_speaker_names(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else as_list(value or ())
    return checked_speaker_names([part.strip() for item in items for part in str(item).split(",")])


def shard_spec(value: str | None) -> str | None:
    return None if value is None or not value.strip() else str(Shard.parse(value))


@dataclass(frozen=True)
class GpuSelection:
    """--gpus: every visible GPU (`all`), the first `count` of them, or the ones listed (numbers as `doctor` lists
    them: nvidia-smi's order, or CUDA_VISIBLE_DEVICES' when it is set; or GPU-/MIG- UUIDs)."""

    every: bool = False
    count: int | None = None
    devices: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> GpuSelection:
        value = text.strip()
        if value.lower() == "all":
            return cls(every=True)
        listed_form = value.lower().startswith(("device=", "gpu-", "mig-")) or "," in value
        if not listed_form:
            if value == "0":
                raise ValueError("0 is not a number of GPUs: for GPU 0 alone, write device=0")
            if not value.isdigit():
                raise ValueError(f"expected all, a count (2), or GPUs listed (0,2,3 or device=2), not {text!r}")
            return cls(count=int(value))
        entries = [entry.strip() for entry in value.split("=", 1)[-1].split(",") if entry.strip()]
        if not entries:
            raise ValueError(f"no GPU listed in {text!r}")
        for entry in entries:
            if not (entry.isdigit() or re.fullmatch(r"(?i)(GPU|MIG)-(GPU-)?[0-9a-f][0-9a-f/-]*", entry)):
                raise ValueError(f"{entry!r} is not a GPU index (0) or UUID (GPU-..., MIG-...)")
        if len(set(entries)) != len(entries):
            raise ValueError(f"a GPU is listed twice in {text!r}")
        return cls(devices=tuple(entries))

    def __str__(self) -> str:
        if self.every:
            return "all"
        if self.count is not None:
            return str(self.count)
        return ",".join(self.devices) if len(self.devices) > 1 else f"device={self.devices[0]}"


def gpu_selection(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = ",".join(str(item) for item in value) if isinstance(value, list | tuple) else str(value)
    if isinstance(value, list | tuple) and len(value) == 1:
        text = f"device={text}"
    return str(GpuSelection.parse(text))


def memory_size(value: Any) -> str:
    text = str(value).strip()
    parse_bytes(text)  # raises ValueError with the reason
    return text


def temperature_schedule(start: float, increment: float | None) -> tuple[float, ...]:
    """whisperx's `np.arange(start, 1.0 + 1e-6, increment)`: the start, then up by the increment to 1.0."""
    if increment is None:
        return (start,)
    steps = int((1.0 - start) / increment + 1e-6)
    return tuple(round(start + step * increment, 6) for step in range(steps + 1))


T = TypeVar("T")

Language = Annotated[str, AfterValidator(normalize_language)]
LanguageSet = Annotated[tuple[str, ...], BeforeValidator(language_set)]
ModelName = Annotated[str, AfterValidator(normalize_model)]
LocalPath = Annotated[str | None, AfterValidator(absolute_if_local)]
DiarizeModel = Annotated[str, AfterValidator(lambda value: absolute_if_local(value) or DEFAULT_DIARIZE_MODEL)]
Text = Annotated[str | None, AfterValidator(text_or_none)]
OffIsNone = Annotated[T | None, BeforeValidator(off_is_none)]
HttpUrl = Annotated[str | None, AfterValidator(http_url)]
TextfilePath = Annotated[str | None, AfterValidator(textfile_path)]
PushgatewayUrl = Annotated[str | None, AfterValidator(pushgateway_url)]
AlignModels = Annotated[tuple[str, ...], BeforeValidator(align_model_entries)]
ChannelSpeakers = Annotated[tuple[str, ...], BeforeValidator(channel_speaker_names)]
ShardSpec = Annotated[str | None, AfterValidator(shard_spec)]
MemorySize = Annotated[str, BeforeValidator(memory_size)]
Gpus = Annotated[str | None, BeforeValidator(gpu_selection)]
