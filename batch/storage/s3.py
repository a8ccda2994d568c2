"""An S3 prefix (AWS S3, or MinIO, Ceph, R2) as a store: keys relative to the prefix are data, never paths.

Credentials and region come from boto3's standard chain (environment, shared config and profile, web
identity as on EKS, instance role); `AWS_ENDPOINT_URL` or `--s3-endpoint-url` reach other stores. Retries use
botocore's "standard" mode; connect and read timeouts are set. Each object is written whole (S3 puts are
atomic); claims use conditional puts (`If-None-Match`, `If-Match`).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from batch.common.errors import EnvironmentProblem, FileFailure, redact
from batch.storage.base import AgedObject, InputFile, ListingCounts
from batch.storage.names import is_hidden, is_selected

# One request per object part above this size; transcripts are small, so this mostly serves large outputs.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
_MISSING = ("NoSuchKey", "404", "NotFound")
_CONDITION_FAILED = ("PreconditionFailed", "412", "NoSuchKey")
_CONFLICT = ("ConditionalRequestConflict", "409")
CONFLICT_RETRIES = 4
CONFLICT_BACKOFF_SECONDS = 0.1


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/"); the prefix ends with / unless empty."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, (prefix.rstrip("/") + "/") if prefix.strip("/") else ""


def make_client(endpoint_url: str | None = None) -> Any:
    config = Config(
        retries={"mode": "standard", "max_attempts": 6},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def describe_s3_error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return redact(f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": "))
    return redact(str(exc))


def _age_seconds(response: dict[str, Any]) -> float | None:
    """Seconds from the object's Last-Modified to the response's Date, both S3's clock (whole seconds)."""
    sent = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = response.get("LastModified")
    if not sent or modified is None:
        return None
    try:
        return (parsedate_to_datetime(sent) - modified).total_seconds()
    except (TypeError, ValueError):  # a Date that does not parse, or one without a time zone
        return None


def _error_code(exc: ClientError) -> str | None:
    return exc.response.get("Error", {}).get("Code")


def object_source(url: str, client: Any, **options: Any) -> S3Store | None:
    """The store of the one object `url` names (s3://bucket/calls/a.wav, key `a.wav`), or None when no object has
    that exact key (a prefix, or a HEAD this client may not make: the listing then tells)."""
    bucket, prefix = split_url(url)
    full_key = prefix.rstrip("/")
    if not full_key or url.endswith("/"):
        return None
    try:
        client.head_object(Bucket=bucket, Key=full_key)
    except (BotoCoreError, ClientError):
        return None
    folder, _, name = full_key.rpartition("/")
    store = S3Store(f"s3://{bucket}/{folder}", client, only=name, **options)
    store.location = url
    return store


class S3Store:
    """Objects under s3://bucket/prefix. Hidden keys (a component starting with a dot) are never listed.

    With `only`, the store lists that one object under the prefix (SOURCE given as an object).
    """

    def __init__(
        self,
        url: str,
        client: Any,
        skip_url: str | None = None,
        spool_dir: str | None = None,
        max_bytes: int | None = None,
        only: str | None = None,
    ):
        self.url = self.location = url
        self.only = only
        self.bucket, self.prefix = split_url(url)
        self.client = client
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self._skip_prefix = self._inner_prefix(skip_url) if skip_url is not None else None
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )

    def _inner_prefix(self, url: str) -> str | None:
        bucket, prefix = split_url(url)
        return prefix if bucket == self.bucket and prefix.startswith(self.prefix) else None

    # --- reading recordings ------------------------------------------------------------------------------

    def check_readable(self, role: str = "SOURCE") -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise EnvironmentProblem(f"{role} {self.url} cannot be listed: {describe_s3_error(exc)}") from None

    def list(
        self, include: Iterable[str] = (), exclude: Iterable[str] = (), counts: ListingCounts | None = None
    ) -> Iterator[InputFile]:
        """Stream the selected objects page by page (never the whole listing in memory), in key order."""
        include, exclude, counts = tuple(include), tuple(exclude), counts or ListingCounts()
        for key, obj in self._objects(self.prefix + (self.only or "")):
            if self.only is not None and key != self.only:
                continue  # a.wav2 and a.wav/x.wav share the prefix of a.wav
            counts.listed += 1
            if is_selected(key, include, exclude, named=self.only is not None):
                counts.selected += 1
                yield InputFile(key=key, size=obj["Size"], version=obj["ETag"].strip('"'))

    def list_names(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """Every name in the folder `prefix` (all of the store when empty) and below, ending with `suffix`."""
        folder = prefix.strip("/")
        for key, _ in self._objects(self.prefix + (folder + "/" if folder else "")):
            if key.endswith(suffix):
                yield key

    def _objects(self, full_prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key relative to the store, listing entry) of each object under `full_prefix`, hidden ones left out."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                full = obj["Key"]
                if full.endswith("/") or (self._skip_prefix and full.startswith(self._skip_prefix)):
                    continue
                key = full[len(self.prefix) :]
                if not is_hidden(key):
                    yield key, obj

    def open(self, key: str, size: int | None = None) -> BinaryIO:
        """The object spooled to local disk (deleted when closed); over the size cap, the file fails clearly."""
        if size is not None and self.max_bytes is not None and size > self.max_bytes:
            raise FileFailure(f"the object is {size:,} bytes, over the download cap of {self.max_bytes:,} bytes")
        spool = tempfile.TemporaryFile(dir=self.spool_dir, prefix="whisperx-batch-")  # noqa: SIM115 - the caller closes it
        try:
            self.client.download_fileobj(self.bucket, self.prefix + key, spool)
        except (BotoCoreError, ClientError) as exc:
            spool.close()
            raise FileFailure(
                f"download of s3://{self.bucket}/{self.prefix}{key} failed: {describe_s3_error(exc)}"
            ) from None
        spool.seek(0)
        return spool

    def fingerprint(self, item: InputFile) -> str:
        """ETag and size: S3 already knows when content changed, so nothing is downloaded to tell."""
        return f"etag:{item.version}:size:{item.size}"

    # --- writing and reading named objects ---------------------------------------------------------------

    def check_writable(self, role: str = "DEST") -> None:
        """Write and delete a hidden probe object."""
        probe = f"{self.prefix}.write-check-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as exc:
            raise EnvironmentProblem(f"{role} {self.url} is not writable: {describe_s3_error(exc)}") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.prefix + name, Config=self._transfer)

    def read_bytes(self, name: str) -> bytes | None:
        found = self.read_with_version(name)
        return None if found is None else found[0]

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise
        return True

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def create_exclusive(self, name: str, data: bytes) -> str | None:
        """Write only if nothing is there (If-None-Match: *): the new object's ETag, or None when another writer
        was first."""
        return self._conditional_put(name, data, IfNoneMatch="*")

    def read_with_version(self, name: str) -> tuple[bytes, str] | None:
        found = self.read_with_age(name)
        return None if found is None else (found.data, found.version)

    def read_with_age(self, name: str) -> AgedObject | None:
        """The object, its ETag and its age by S3's own clock (the response's Date less its Last-Modified), so
        that no writer's or reader's clock enters it; the age is None when the store sends no Date."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise
        data = response["Body"].read()
        return AgedObject(data, response["ETag"], _age_seconds(response))

    def replace_if_version(self, name: str, data: bytes, version: str) -> str | None:
        """Overwrite only if the object is still the one read (If-Match on its ETag): the new ETag, or None."""
        return self._conditional_put(name, data, IfMatch=version)

    def delete_if_version(self, name: str, version: str) -> bool:
        """Delete only if the object is still this version (DeleteObject with If-Match); False otherwise. A store
        that ignores the condition deletes whatever is there: `batch.run.claims` probes for that first."""
        return (
            self._conditional(
                lambda: self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name, IfMatch=version)
            )
            is not None
        )

    def _conditional_put(self, name: str, data: bytes, **condition: str) -> str | None:
        response = self._conditional(
            lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data, **condition)
        )
        return None if response is None else str(response.get("ETag") or "written")

    def _conditional(self, request: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """A conditional request's response, or None when its condition failed. 409 ConditionalRequestConflict
        (another conditional write to the key in flight) is retried, as AWS asks; if it persists, the
        condition is taken as failed (the other writer won)."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                return request()
            except ClientError as exc:
                code = _error_code(exc)
                if code in _CONFLICT and attempt < CONFLICT_RETRIES:
                    time.sleep(CONFLICT_BACKOFF_SECONDS * 2**attempt)
                    continue
                if code in _CONDITION_FAILED or code in _CONFLICT:
                    return None
                raise
        return None
