"""An S3 prefix (AWS S3, or MinIO, Ceph, R2) as a store: keys relative to the prefix are data, never paths.

Credentials and region come from boto3's standard chain (environment, shared config and profile, web
identity as on EKS, instance role); `AWS_ENDPOINT_URL` or `--s3-endpoint-url` reach other stores. Retries use
botocore's "standard" mode (AWS_RETRY_MODE, AWS_MAX_ATTEMPTS override it); connect and read timeouts are set.
Each object is written whole (S3 puts are atomic); claims use conditional puts (`If-None-Match`, `If-Match`).
"""

from __future__ import annotations

import errno
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from batch.common.errors import (
    GONE_ERROR_CODES,
    EnvironmentProblem,
    FileFailure,
)
from batch.storage.base import S3_SCHEME, AgedObject, ConditionalWritesUnsupported, InputFile, ListingCounts
from batch.storage.names import is_hidden, is_selected, name_bytes
from batch.storage.s3_reads import (
    UNSUPPORTED,
    describe_s3_error,
    error_code,
    head_version,
    spooled,
)

# One request per object part above this size; transcripts are small, so this mostly serves large outputs.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
_MISSING = GONE_ERROR_CODES
_CONDITION_FAILED = ("PreconditionFailed", "412", "NoSuchKey")
_CONFLICT = ("ConditionalRequestConflict", "409")
CONFLICT_RETRIES = 4
CONFLICT_BACKOFF_SECONDS = 0.1
S3_KEY_MAX_BYTES = 1024
DEFAULT_MAX_ATTEMPTS = 6
# Objects a browser opens from a bucket behind a static web server: the report pages (batch.run.report_pages).
CONTENT_TYPES = {"html": "text/html; charset=utf-8", "ogg": "audio/ogg"}  # pages and review clips


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/"); the prefix ends with / unless empty."""
    bucket, prefix = split_object_url(url)
    prefix = prefix.lstrip("/")
    return bucket, (prefix.rstrip("/") + "/") if prefix.strip("/") else ""


def split_object_url(url: str) -> tuple[str, str]:
    """s3://bucket/calls/a.wav -> ("bucket", "calls/a.wav"), the key exactly as written. Not parsed as a URL: an
    S3 key may hold `#`, `?`, `;` and `%`, and they are part of it (s3://b/Meeting #3.mp3 is key `Meeting #3.mp3`)."""
    scheme, separator, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme.lower() != "s3" or not separator or not bucket:
        raise ValueError(f"not an S3 URL: {url_without_query(url)!r} (expected s3://bucket/prefix)")
    return bucket, key


def url_without_query(url: str) -> str:
    """A URL as logs may show it: a presigned URL's query string (its signature) and any user:password left out."""
    if url.lower().startswith(S3_SCHEME):
        return url  # an S3 URL has no query: all after the bucket is the key
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host += f":{parts.port}" if parts.port else ""
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    hidden = " (query string not shown)" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, "", "")) + hidden


def make_client(endpoint_url: str | None = None) -> Any:
    session = botocore.session.get_session()
    config = Config(retries=retry_settings(session), connect_timeout=10, read_timeout=120, max_pool_connections=32)
    return boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=endpoint_url or None, config=config
    )


def retry_settings(session: botocore.session.Session) -> dict[str, Any]:
    """botocore's own retries, for every request: throttling, 5xx and time-outs are retried with backoff.
    `standard` mode and DEFAULT_MAX_ATTEMPTS attempts unless AWS_RETRY_MODE / AWS_MAX_ATTEMPTS (or the profile's
    `retry_mode` / `max_attempts`) say otherwise; `adaptive` also slows the client down while it is throttled."""
    return {
        "mode": session.get_config_variable("retry_mode") or "standard",
        # total: the first attempt included, as AWS_MAX_ATTEMPTS counts (Config's `max_attempts` counts retries)
        "total_max_attempts": session.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS,
    }


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
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix))
        while (page := self._next_page(pages, full_prefix)) is not None:
            for obj in page.get("Contents", []):
                full = obj["Key"]
                if full.endswith("/") or (self._skip_prefix and full.startswith(self._skip_prefix)):
                    continue
                key = full[len(self.prefix) :]
                if not is_hidden(key):
                    yield key, obj

    def _next_page(self, pages: Iterator[dict[str, Any]], full_prefix: str) -> dict[str, Any] | None:
        """The listing's next page, or None after the last. A page that botocore's retries could not get ends
        the listing, and the run with it (exit 3): the listing is where the run's files come from."""
        try:
            return next(pages, None)
        except (BotoCoreError, ClientError) as exc:
            raise EnvironmentProblem(
                f"s3://{self.bucket}/{full_prefix} could not be listed, after retries: {describe_s3_error(exc)}; "
                "what was listed before is done, the next run goes on from there"
            ) from None

    def open(self, key: str, size: int | None = None, version: str | None = None) -> BinaryIO:
        """The object spooled to local disk (deleted when closed), only `version` when given (its ETag, as listed);
        over the size cap, the file fails clearly."""
        if size is not None and self.max_bytes is not None and size > self.max_bytes:
            raise FileFailure(f"the object is {size:,} bytes, over the download cap of {self.max_bytes:,} bytes")
        return spooled(self.client, self.bucket, self.prefix + key, self.spool_dir, self.address(key), version)

    def address(self, key: str) -> str:
        """Where the object is: s3://bucket/prefix/key."""
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def current_version(self, key: str) -> str | None:
        return head_version(self.client, self.bucket, self.prefix + key)

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
        content_type = CONTENT_TYPES.get(name.rpartition(".")[2])
        extra = {"ContentType": content_type} if content_type else None
        self.client.upload_fileobj(
            io.BytesIO(data), self.bucket, self._named(name), ExtraArgs=extra, Config=self._transfer
        )

    def _named(self, name: str) -> str:
        """The object key of a name of the store; a key longer than S3 takes is refused as a file system refuses
        a path too long (ENAMETOOLONG), and one that is not UTF-8 as a utf8only file system refuses it (EILSEQ),
        so that the file it belongs to fails alone. (Output names are always UTF-8: batch.storage.names.)"""
        key = self.prefix + name
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise OSError(errno.EILSEQ, "an S3 key must be valid UTF-8", key) from None
        if name_bytes(key) > S3_KEY_MAX_BYTES:
            raise OSError(errno.ENAMETOOLONG, f"over the {S3_KEY_MAX_BYTES} bytes of an S3 key", key)
        return key

    def read_bytes(self, name: str) -> bytes | None:
        found = self.read_with_version(name)
        return None if found is None else found[0]

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._named(name))
        except ClientError as exc:
            if error_code(exc) in _MISSING:
                return False
            raise
        return True

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._named(name))

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
            response = self.client.get_object(Bucket=self.bucket, Key=self._named(name))
        except ClientError as exc:
            if error_code(exc) in _MISSING:
                return None
            raise
        data = response["Body"].read()
        return AgedObject(data, response["ETag"], _age_seconds(response))

    def replace_if_version(self, name: str, data: bytes, version: str) -> str | None:
        """Overwrite only if the object is still the one read (If-Match on its ETag): the new ETag, or None."""
        return self._conditional_put(name, data, IfMatch=version)

    def delete_if_version(self, name: str, version: str) -> bool:
        """Delete only if the object is still this version (DeleteObject with If-Match); False otherwise. A store
        that ignores the condition deletes whatever is there: `batch.run.work.claims` probes for that first."""
        return (
            self._conditional(
                lambda: self.client.delete_object(Bucket=self.bucket, Key=self._named(name), IfMatch=version)
            )
            is not None
        )

    def _conditional_put(self, name: str, data: bytes, **condition: str) -> str | None:
        response = self._conditional(
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._named(name), Body=data, **condition)
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
                code = error_code(exc)
                if code in _CONFLICT and attempt < CONFLICT_RETRIES:
                    time.sleep(CONFLICT_BACKOFF_SECONDS * 2**attempt)
                    continue
                if code in _CONDITION_FAILED or code in _CONFLICT:
                    return None
                if code in UNSUPPORTED:
                    raise ConditionalWritesUnsupported(f"{self.location}: {code}") from None
                raise
        return None
