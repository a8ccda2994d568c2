"""Logging for unattended runs: plain text or JSON lines on stderr, each carrying the run id and file key."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

from batch.common.errors import redact

run_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
key_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("key", default=None)

# Libraries that talk a lot at INFO (or print to stdout through their own handlers).
NOISY_LOGGERS = (
    "whisperx",
    "pyannote",
    "lightning",
    "lightning.pytorch",
    "pytorch_lightning",
    "faster_whisper",
    "speechbrain",
    "numba",
    "urllib3",
    "botocore",
    "huggingface_hub",
    "transformers",
)


@contextlib.contextmanager
def file_context(key: str) -> Iterator[None]:
    """Tag every log line emitted inside with the file's key."""
    token = key_var.set(key)
    try:
        yield
    finally:
        key_var.reset(token)


def utc_stamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds and the zone: what log systems parse without guessing."""
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        key = key_var.get()
        prefix = f"{key}: " if key else ""
        return redact(f"{utc_stamp(record)} {record.levelname:<7} {prefix}{record.getMessage()}")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": utc_stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": run_id_var.get(),
            "key": key_var.get(),
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, ensure_ascii=False, default=str))


class LibraryFilter(logging.Filter):
    """Our INFO lines pass; libraries speak only at WARNING and above, FFmpeg's decoder not at all
    (a file that cannot be decoded fails with its own reason in its manifest)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("libav"):
            return False
        return record.name.startswith("batch") or record.levelno >= logging.WARNING


def setup_logging(log_format: str = "text", quiet: bool = False, handler: logging.Handler | None = None) -> None:
    """Route everything (ours, libraries', warnings) through one handler: stderr's, unless another is given (a
    worker process hands its records to the run's main process)."""
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(LibraryFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("batch").setLevel(logging.WARNING if quiet else logging.INFO)
    adopt_library_loggers()
    logging.captureWarnings(True)


def json_logging() -> bool:
    """Whether setup_logging chose JSON lines."""
    return any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers)


def adopt_library_loggers() -> None:
    """Take back loggers that libraries give their own handlers on import (whisperx prints to stdout)."""
    for name in NOISY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = [logging.NullHandler()]
        library.propagate = True
        library.setLevel(logging.WARNING)


class _PrintsToLog(io.TextIOBase):
    """Stands in for stdout while models load and run: what a library prints (pyannote's download banner)
    becomes one log record per print, so stdout carries only what the command itself writes there."""

    def __init__(self, logger: logging.Logger):
        self._logger, self._pending = logger, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if self._pending.endswith("\n"):
            self.flush()
        return len(text)

    def flush(self) -> None:
        text, self._pending = self._pending.strip(), ""
        if text:
            self._logger.warning("%s", text)


@contextlib.contextmanager
def prints_to_log() -> Iterator[TextIO]:
    """Send library prints to the log; yields the real stdout for the command's own output."""
    real = sys.stdout
    stand_in = _PrintsToLog(logging.getLogger("library.stdout"))
    with contextlib.redirect_stdout(stand_in):  # type: ignore[type-var]
        try:
            yield real
        finally:
            stand_in.flush()
