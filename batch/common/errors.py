"""Error types, the exit codes they map to, and secret redaction.

Exit codes are decided here and nowhere else.
"""

from __future__ import annotations

import errno
import os
import re
import signal

# Write errors that no later file escapes: no space, over quota, a read-only file system.
DEST_UNUSABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


def exit_code_for_signal(signum: int) -> int:
    """The exit code of a run stopped by signal `signum`: 128 + its number, as shells and Kubernetes report it."""
    return 128 + signum


EXIT_SIGINT = exit_code_for_signal(signal.SIGINT)  # 130
EXIT_SIGTERM = exit_code_for_signal(signal.SIGTERM)  # 143


class BatchError(Exception):
    """Base class: an error that stops the whole run with a given exit code."""

    exit_code = EXIT_ENVIRONMENT


class ConfigError(BatchError):
    """A bad option, config key or value: the run stops before any model loads."""

    exit_code = EXIT_USAGE

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"{key}: {message}{where}")


class ConfigErrors(ConfigError):
    """Several config problems found together (a file with two bad keys): all listed, one a line."""

    def __init__(self, problems: list[ConfigError]):
        self.problems = problems
        self.key, self.source = problems[0].key, problems[0].source
        lines = "".join(f"\n  {problem}" for problem in problems)
        BatchError.__init__(self, f"{len(problems)} problems in the settings:{lines}")


def raise_config_problems(problems: list[ConfigError]) -> None:
    """Raise nothing, the one problem, or all of them at once."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigErrors(problems)


class EnvironmentProblem(BatchError):
    """The machine cannot run the job: model missing, device unusable, DEST not writable."""

    exit_code = EXIT_ENVIRONMENT


class FileFailure(Exception):
    """One input cannot be processed for a reason of its own; it fails alone (a failed manifest) and the run goes on."""


class EnvironmentFault(Exception):
    """A fault outside the file met while doing it (storage refused or unreachable, a disk full, a model that will
    not load): the file is not failed for it and gets no manifest; a later run (or the queue message coming back)
    does it. Several files in a row stop the run (exit 3)."""


class WorkerDied(FileFailure):
    """The file was in a worker process when it died, twice: it fails so that it cannot take down the rest."""


class ForeignError(Exception):
    """An error raised in a worker process, brought back as its type's name, its message, and whether it was the
    file's own problem (a FileFailure there): that decides the broken-machine rule, not the name."""

    def __init__(self, type_name: str, message: str, file_problem: bool = False):
        super().__init__(message)
        self.type_name = type_name
        self.file_problem = file_problem


class ForeignBatchError(BatchError):
    """A BatchError raised in a worker process: it stops the run with the worker's exit code."""

    def __init__(self, type_name: str, message: str, exit_code: int):
        super().__init__(message)
        self.type_name = type_name
        self.exit_code = exit_code


class AudioDecodeError(FileFailure):
    """The input holds no decodable audio (empty, truncated, not audio, no audio track)."""


class AudioTooLong(FileFailure):
    """The recording is longer than the run's duration limit (--max-duration): it fails before it is decoded whole."""


class DecoderDied(FileFailure):
    """Decoding the file killed the process that decoded it, twice: the file is the cause."""


class FileTimeout(FileFailure):
    """The file took longer than its deadline (--file-timeout); the message names the stage it was in."""


# Failures of a file that took down or hung what worked on it: in queue mode its message goes to the dead letters.
POISON_ERRORS = frozenset({"WorkerDied", "DecoderDied", "FileTimeout"})


class DestPathBlocked(FileFailure):
    """DEST cannot hold this file's manifest: a directory in the way, no permission on that one path, a path
    longer than DEST takes, or a name it refuses (not UTF-8: EILSEQ)."""

    def __init__(self, name: str, cause: OSError):
        if cause.errno == errno.ENAMETOOLONG:
            super().__init__(
                f"its manifest cannot be written at {name}: the path is too long for DEST ({cause.strerror}); "
                "give DEST a shorter path, or move the file to a shallower folder of SOURCE, and rerun"
            )
            return
        if cause.errno == errno.EILSEQ:
            super().__init__(
                f"its manifest cannot be written at {name!r}: DEST takes no such name ({cause.strerror}); "
                "rename the file in SOURCE to valid UTF-8 and rerun"
            )
            return
        reason = {
            IsADirectoryError: "a directory is in the way",
            NotADirectoryError: "a file is in the way of its folder",
            PermissionError: "permission denied",
        }.get(type(cause), cause.strerror or str(cause))
        super().__init__(f"its manifest cannot be written at {name}: {reason}; move that away and rerun")


def is_path_blocked(exc: OSError) -> bool:
    """Whether DEST refuses one path only (a directory or a file in the way, no permission there, a path too
    long, a name that is not UTF-8 where names must be: an S3 key, ZFS with utf8only), so that the file whose
    path it is fails alone."""
    return isinstance(exc, IsADirectoryError | NotADirectoryError | PermissionError) or (
        exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ)
    )


# Environment variables whose values must never reach a log, a manifest or an error message.
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
)
_SECRET_PATTERNS = (
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
)
_extra_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret read from somewhere other than the environment (a token file)."""
    if value and len(value) >= 6:
        _extra_secrets.add(value)


def redact(text: str) -> str:
    """Replace every known secret value, and anything shaped like a token or key, with ***."""
    secrets = {os.environ.get(name) for name in SECRET_ENV_VARS} | _extra_secrets
    for secret in sorted((s for s in secrets if s and len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text


# Error codes of S3 (and compatible stores) that say the object is not there: deleted since it was listed or
# announced, which is the file's own fault. Every other code (AccessDenied, KMS.*, SlowDown, 503, InternalError...)
# is the store's or the account's.
GONE_ERROR_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


def is_file_problem(exc: BaseException | None) -> bool:
    """Whether an error is its file's own fault, the one place that decides it: the media unreadable, unsupported or
    empty, no audio stream (a FileFailure, here or in a worker process), or the file gone (S3's NoSuchKey or 404,
    a local file's ENOENT). Such a file fails alone, with a failed manifest, and however many fail in a row the
    machine is not taken for broken (a folder of broken files is possible).

    Anything else is not the file's fault: access denied (403, KMS), throttling (SlowDown, 503, 429), other 5xx,
    time-outs and lost connections, a full disk, a model that will not load, DEST refusing a write, an
    EnvironmentFault, or an error nobody foresaw. The file then gets no manifest (a later run does it, a queue
    message comes back and reaches the dead-letter queue by its redrive policy), and several in a row stop the run.
    """
    if exc is None or isinstance(exc, EnvironmentFault):
        return False
    if isinstance(exc, FileFailure):
        return True
    if hasattr(exc, "file_problem"):  # brought back from a worker process, decided there by this function
        return bool(exc.file_problem)
    code = error_code(exc)
    if code is not None:
        return code in GONE_ERROR_CODES
    return isinstance(exc, FileNotFoundError)


def error_code(exc: BaseException) -> str | None:
    """The error code of a botocore ClientError (read from its response, so that botocore need not be imported
    here), or None for any other exception."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


def type_name(exc: BaseException) -> str:
    """The exception's type as records show it; for an error brought back from a worker, the worker's type."""
    return getattr(exc, "type_name", None) or type(exc).__name__


def describe(exc: BaseException) -> dict[str, str]:
    """The {type, message} record of an exception, with secrets removed."""
    message = str(exc).strip() or repr(exc)
    return {"type": type_name(exc), "message": redact(message)}
