"""S3 (and S3-compatible stores) as SOURCE and DEST, behind the same interface as local folders.

Credentials and region come from boto3's standard chain (environment, shared config and profile, web
identity as on EKS, instance role); `AWS_ENDPOINT_URL` or `--s3-endpoint-url` reach MinIO, Ceph, R2.
Retries use botocore's "standard" mode; connect and read timeouts are set.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from batch.errors import EnvironmentProblem, FileFailure, redact
from batch.storage import InputFile, is_selected

# One request per object part above this size; transcripts are small, so this mostly serves large outputs.
MULTIPART_THRESHOLD = 8 * 1024 * 1024


def is_s3_url(location: str) -> bool:
    return location.startswith("s3://")


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


class S3Source:
    """Objects under s3://bucket/prefix; keys are relative to the prefix and are data, never paths."""

    def __init__(
        self,
        url: str,
        client: Any,
        skip_url: str | None = None,
        spool_dir: str | None = None,
        max_bytes: int | None = None,
    ):
        self.url = url
        self.bucket, self.prefix = split_url(url)
        self.client = client
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self._skip_prefix = None
        if skip_url is not None and is_s3_url(skip_url):
            bucket, prefix = split_url(skip_url)
            if bucket == self.bucket and prefix.startswith(self.prefix):
                self._skip_prefix = prefix

    def check_readable(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise EnvironmentProblem(f"SOURCE {self.url} is not readable: {describe_s3_error(exc)}") from None

    def list(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> Iterator[InputFile]:
        """Stream the selected objects page by page (never the whole listing in memory), in key order."""
        include, exclude = tuple(include), tuple(exclude)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                full = obj["Key"]
                if full.endswith("/") or (self._skip_prefix and full.startswith(self._skip_prefix)):
                    continue
                key = full[len(self.prefix) :]
                if any(part.startswith(".") and part not in (".", "..") for part in key.split("/")):
                    continue  # hidden, as in local folders
                if is_selected(key, include, exclude):
                    yield InputFile(key=key, size=obj["Size"], version=obj["ETag"].strip('"'))

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


class S3Dest:
    """Outputs under s3://bucket/prefix. Each object is written whole (S3 puts are atomic)."""

    def __init__(self, url: str, client: Any):
        self.url = url
        self.bucket, self.prefix = split_url(url)
        self.client = client
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )

    def check_writable(self) -> None:
        probe = f"{self.prefix}.write-check-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as exc:
            raise EnvironmentProblem(f"DEST {self.url} is not writable: {describe_s3_error(exc)}") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.prefix + name, Config=self._transfer)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Write only if nothing is there (If-None-Match: *); False when another writer was first."""
        return self._conditional_put(name, data, IfNoneMatch="*")

    def replace_if_version(self, name: str, data: bytes, version: str) -> bool:
        """Overwrite only if the object is still the one read (If-Match on its ETag)."""
        return self._conditional_put(name, data, IfMatch=version)

    def read_with_version(self, name: str) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def _conditional_put(self, name: str, data: bytes, **condition: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey"):
                return False
            raise
        return True
