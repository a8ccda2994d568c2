"""The value types of the settings: each parses and checks one kind of value (a language, a model name, a
local path, a memory size...) wherever it is used, so `Settings` is a list of typed fields.

A check that fails raises ValueError; pydantic reports it with the setting's name and where it came from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator

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


def pushgateway_url(value: str | None) -> str | None:
    from batch.metrics_export import PushTarget

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


def channel_speaker_names(value: Any) -> tuple[str, ...]:
    from batch.channels import checked_speaker_names

    items = [value] if isinstance(value, str) else as_list(value or ())
    return checked_speaker_names([part.strip() for item in items for part in str(item).split(",")])


def shard_spec(value: str | None) -> str | None:
    from batch.shard import Shard

    return None if value is None or not value.strip() else str(Shard.parse(value))


def memory_size(value: Any) -> str:
    from batch.units import parse_bytes

    text = str(value).strip()
    parse_bytes(text)  # raises ValueError with the reason
    return text


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
