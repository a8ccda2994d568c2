"""Reading objects from S3: each download spooled to local disk, only the version that was listed, and what a
failed read means (the object gone: the file's fault; replaced, refused or unreachable: not the file's)."""

from __future__ import annotations

import tempfile
import threading
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from batch.common.errors import DEST_UNUSABLE_ERRNOS, GONE_ERROR_CODES, EnvironmentFault, FileFailure, redact
from batch.storage.base import InputChanged

UNSUPPORTED = ("NotImplemented", "501")


def describe_s3_error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return redact(f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": "))
    return redact(str(exc))


def error_code(exc: ClientError) -> str | None:
    return exc.response.get("Error", {}).get("Code")


class ObjectGone(FileFailure):
    """The object is not there (deleted since it was listed or announced): the file's own fault."""


class ObjectChanged(InputChanged):
    """The object was replaced between its listing (or its queue message's HEAD) and its download: this run does
    not record it; the new version is done by the next run, or after its own event."""


class StoreUnavailable(EnvironmentFault):
    """The store refused or could not answer a request for this object (access denied, a KMS key, throttling, 5xx,
    a time-out) once botocore's retries ran out: not the file's fault."""


class SpoolUnusable(EnvironmentFault):
    """The object could not be spooled to local disk (the spool folder full, or not writable): the machine's
    problem, not the file's."""


def spool_failure(exc: OSError, spool_dir: str | None, address: str) -> SpoolUnusable:
    where = spool_dir or tempfile.gettempdir()
    return SpoolUnusable(f"{address} could not be spooled to {where}: {exc.strerror or exc}")


def open_spool(spool_dir: str | None, address: str) -> BinaryIO:
    """A temporary file to download `address` into (deleted when closed)."""
    try:
        return tempfile.TemporaryFile(dir=spool_dir, prefix="whisperx-batch-")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise spool_failure(exc, spool_dir, address) from None


# The version each download in flight must read, by (bucket, key): see `_read_the_version_listed`.
_VERSIONS_IN_READ: dict[tuple[str, str], str] = {}
_VERSIONS_LOCK = threading.Lock()


def _read_the_version_listed(params: dict[str, Any], **_: Any) -> None:
    """botocore's hook on the HEAD and GETs of a download (s3transfer's own threads make them): If-Match on the
    ETag the listing or the queue's HEAD gave, so that an object replaced since then answers 412 instead of
    handing over its new bytes to be recorded as the old version. The new version is done by a later run, or
    after its own event."""
    etag = _VERSIONS_IN_READ.get((params.get("Bucket", ""), params.get("Key", "")))
    if etag is not None:
        params.setdefault("IfMatch", etag)


def _pin_versions(client: Any) -> None:
    for operation in ("HeadObject", "GetObject"):
        client.meta.events.register(
            f"before-parameter-build.s3.{operation}", _read_the_version_listed, unique_id=f"batch-version-{operation}"
        )


def spooled(
    client: Any, bucket: str, key: str, spool_dir: str | None, address: str, version: str | None = None
) -> BinaryIO:
    """The object downloaded to a spool file (deleted when closed), read from its start; with `version` (its ETag),
    only that version (ObjectChanged otherwise). A store's refusal is not the file's fault unless the object is
    gone (read_failure); a full spool disk is not either (spool_failure)."""
    spool = open_spool(spool_dir, address)
    try:
        if version is None:
            client.download_fileobj(bucket, key, spool)
        else:
            _download_version(client, bucket, key, spool, version)
    except (BotoCoreError, ClientError) as exc:
        spool.close()
        raise read_failure(exc, f"download of {address}") from None
    except OSError as exc:
        spool.close()
        if exc.errno in DEST_UNUSABLE_ERRNOS:  # the spool's disk full: not the file's fault either
            raise spool_failure(exc, spool_dir, address) from None
        raise
    spool.seek(0)
    return spool


def _download_version(client: Any, bucket: str, key: str, spool: BinaryIO, version: str) -> None:
    _pin_versions(client)
    with _VERSIONS_LOCK:
        _VERSIONS_IN_READ[(bucket, key)] = f'"{version}"'
    try:
        client.download_fileobj(bucket, key, spool)
    except ClientError as exc:
        if error_code(exc) not in UNSUPPORTED:
            raise
        with _VERSIONS_LOCK:  # a store that answers If-Match with NotImplemented: read whatever is there
            _VERSIONS_IN_READ.pop((bucket, key), None)
        spool.seek(0)
        spool.truncate()
        client.download_fileobj(bucket, key, spool)
    finally:
        with _VERSIONS_LOCK:
            _VERSIONS_IN_READ.pop((bucket, key), None)


def head_version(client: Any, bucket: str, key: str) -> str | None:
    """The object's ETag now, as listings give it (unquoted); None when it is gone or the HEAD fails."""
    try:
        return str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except (BotoCoreError, ClientError):
        return None


def read_failure(exc: BotoCoreError | ClientError, what: str) -> Exception:
    """The error of a failed read of an object (`what`: "download of s3://bucket/key"): ObjectGone when the store
    says it is not there, ObjectChanged when it is no longer the version listed, else StoreUnavailable."""
    message = f"{what} failed: {describe_s3_error(exc)}"
    code = error_code(exc) if isinstance(exc, ClientError) else None
    if code in GONE_ERROR_CODES:
        return ObjectGone(message)
    if code in ("PreconditionFailed", "412"):
        return ObjectChanged(
            f"{what}: the object was replaced after it was listed; its new version is done by the next run "
            "(or after its own event)"
        )
    return StoreUnavailable(message)
