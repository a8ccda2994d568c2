"""Raw setting values from a TOML config file and from WHISPERX_BATCH_* variables, with every problem found.

Reading never stops at the first problem: each reader returns the values it could take and a list of
ConfigError, so that a file with three mistakes is fixed in one go. Names from WhisperX's provider guide
(`enable_diarization`) are accepted as this tool's own; a token is never taken from a file or variable of ours.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.common.errors import ConfigError

ENV_PREFIX = "WHISPERX_BATCH_"
CONFIG_ENV_VAR = ENV_PREFIX + "CONFIG"
SHARD_COUNT_ENV_VAR = ENV_PREFIX + "SHARD_COUNT"  # read by batch.settings.shard with the engine's worker index

# Other names for a setting: the WhisperX provider guide's keys.
ALIASES = {"enable_diarization": "diarize"}

# Keys whose value is a secret: refused wherever they are written here, and their value never repeated.
SECRET_KEYS = {
    "hf_token": "a token is never read from the job's settings (they are logged and recorded): set HF_TOKEN in "
    "the environment, or give hf_token_file, a file holding the token (a mounted secret)",
}

LIST_FIELDS = {"formats", "include", "exclude", "align_model", "languages", "channel_speakers"}


@dataclass
class Given:
    """What one place (a file, the environment) gives: values by setting, the name each was given as, problems."""

    values: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    problems: list[ConfigError] = field(default_factory=list)

    def take(self, key: str, value: Any, name: str, where: str | None = None) -> None:
        if key in self.names:
            self.problems.append(ConfigError(name, f"given twice (also as {self.names[key]}): keep one", where))
        else:
            self.values[key], self.names[key] = value, name


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def did_you_mean(name: str, known: Collection[str]) -> str:
    """'; did you mean X?' for a near miss among the known names, else ''."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def read_config_file(path: Path, fields: Collection[str]) -> Given:
    """The keys of a TOML config file as settings, and every problem with its keys."""
    given = Given()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        given.problems.append(ConfigError("config", f"file not found: {path}"))
        return given
    except (OSError, tomllib.TOMLDecodeError) as exc:
        given.problems.append(ConfigError("config", f"cannot read {path}: {exc}"))
        return given
    where = f"config file {path}"
    for raw_key, value in data.items():
        key = _canonical(raw_key.replace("-", "_"))
        if key in SECRET_KEYS:
            given.problems.append(ConfigError(raw_key, SECRET_KEYS[key], where))
        elif key not in fields:
            hint = did_you_mean(raw_key, [*fields, *ALIASES])
            given.problems.append(ConfigError(raw_key, "unknown config key" + hint, where))
        else:
            given.take(key, value, raw_key, where)
    return given


def read_environment(environ: Mapping[str, str], fields: Collection[str]) -> Given:
    """Settings given as WHISPERX_BATCH_* variables; an unknown one is an error, not a silent typo."""
    given = Given()
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV_VAR, SHARD_COUNT_ENV_VAR):
            continue
        key = _canonical(name.removeprefix(ENV_PREFIX).lower())
        if key in SECRET_KEYS:
            given.problems.append(ConfigError(name, SECRET_KEYS[key]))
        elif key not in fields:
            hint = did_you_mean(name, [env_name(known) for known in (*fields, *ALIASES)])
            given.problems.append(ConfigError(name, "unknown environment variable" + hint))
        elif key in LIST_FIELDS:
            given.take(key, tuple(part.strip() for part in raw.split(",") if part.strip()), name)
        else:
            given.take(key, raw, name)
    return given


def _canonical(key: str) -> str:
    return ALIASES.get(key, key)
