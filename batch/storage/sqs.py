"""An SQS queue of new recordings (S3 event notifications, or `{"source": "s3://bucket/key"}`), and the store that
reads the objects its messages name.

The endpoint comes from boto3's usual settings (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, the shared config), so
any SQS-compatible server works. A message's keys are S3 keys, URL-encoded in event notifications (`+` a space);
in `{"source": "s3://bucket/key"}` the key is all after `bucket/`, exactly as written (`#` and `?` included).
The objects' keys in their bucket are the keys of the run (outputs are named after them in DEST).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from batch.common.errors import GONE_ERROR_CODES, EnvironmentProblem, FileFailure, error_code
from batch.storage.base import InputFile, ListingCounts
from batch.storage.s3 import retry_settings, split_object_url
from batch.storage.s3_reads import describe_s3_error, head_version, read_failure, spooled

# The longest long poll SQS allows; shorter when the run must look at its stop flag or idle time sooner.
LONGEST_POLL_SECONDS = 20
VISIBILITY_BATCH = 10  # ChangeMessageVisibilityBatch takes at most ten entries
GONE = "missing"  # the version of an object that is not there (any more) when its message comes


class UnreadableMessage(ValueError):
    """A message that names no S3 object: left in the queue, so its redrive policy takes it to the dead letters."""


@dataclass
class QueueMessage:
    message_id: str
    receipt: str
    receive_count: int
    objects: list[tuple[str, str]] = field(default_factory=list)  # (bucket, key) of each record
    test_event: bool = False


def objects_named(body: str) -> tuple[list[tuple[str, str]], bool]:
    """(bucket, key) of each object a message body names, and whether it is S3's `s3:TestEvent`."""
    try:
        document = json.loads(body)
    except ValueError:
        raise UnreadableMessage("the body is not JSON") from None
    if not isinstance(document, dict):
        raise UnreadableMessage("the body is not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return [], True
    if "source" in document:
        source = str(document["source"])
        try:
            bucket, key = split_object_url(source)
        except ValueError as exc:
            raise UnreadableMessage(str(exc)) from None
        if not key.strip("/"):
            raise UnreadableMessage(f"{source!r} names a bucket, not an object")
        return [(bucket, s3_key(key.rstrip("/")))], False
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise UnreadableMessage('neither S3 event records nor {"source": "s3://bucket/key"}')
    objects = []
    for record in records:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated:"):
                continue  # a removal or restore: nothing new to transcribe
            s3 = record["s3"]
            objects.append((str(s3["bucket"]["name"]), s3_key(unquote_plus(str(s3["object"]["key"])))))
        except (KeyError, TypeError):
            raise UnreadableMessage("an S3 event record without s3.bucket.name and s3.object.key") from None
    return objects, False


def s3_key(key: str) -> str:
    """A key a message names, refused when it is no S3 key: a JSON string may hold lone surrogates (`\\udcff`),
    which UTF-8, and so S3, cannot."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise UnreadableMessage(f"the key {key!r} is not valid UTF-8, as every S3 key is") from None
    return key


def make_sqs_client() -> Any:
    session = botocore.session.get_session()
    config = Config(retries=retry_settings(session), connect_timeout=10, read_timeout=60)
    return boto3.session.Session(botocore_session=session).client("sqs", config=config)


class SqsQueue:
    """The few SQS calls a run makes: receive one message at a time, delete it, change its visibility."""

    def __init__(self, url: str, client: Any = None):
        self.url, self.location = url, url
        self.client = client if client is not None else make_sqs_client()
        self.visibility_timeout = 30

    def check(self) -> None:
        """The queue is reachable; its visibility timeout is read (the heartbeat extends it by as much)."""
        try:
            attributes = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["VisibilityTimeout"])
        except (BotoCoreError, ClientError) as exc:
            raise EnvironmentProblem(f"queue {self.url} cannot be read: {describe_s3_error(exc)}") from None
        self.visibility_timeout = int(attributes["Attributes"].get("VisibilityTimeout", 30))

    def receive(self, wait_seconds: int) -> list[QueueMessage | tuple[str, str, int, UnreadableMessage]]:
        try:
            response = self.client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=max(0, min(LONGEST_POLL_SECONDS, wait_seconds)),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except (BotoCoreError, ClientError) as exc:  # after botocore's retries: the queue is the run's listing
            raise EnvironmentProblem(
                f"queue {self.url} cannot be read, after retries: {describe_s3_error(exc)}"
            ) from None
        received: list[QueueMessage | tuple[str, str, int, UnreadableMessage]] = []
        for raw in response.get("Messages", []):
            count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            try:
                objects, test_event = objects_named(raw.get("Body", ""))
            except UnreadableMessage as exc:
                received.append((raw["MessageId"], raw["ReceiptHandle"], count, exc))
                continue
            received.append(QueueMessage(raw["MessageId"], raw["ReceiptHandle"], count, objects, test_event))
        return received

    def delete(self, receipt: str) -> None:
        self.client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def set_visibility(self, receipts: Iterable[str], seconds: int) -> list[str]:
        """Each message's visibility set to `seconds` from now; the receipts SQS refused (a message gone)."""
        receipts, failed = list(receipts), []
        for start in range(0, len(receipts), VISIBILITY_BATCH):
            entries = [
                {"Id": str(index), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                for index, receipt in enumerate(receipts[start : start + VISIBILITY_BATCH])
            ]
            response = self.client.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
            failed += [entries[int(entry["Id"])]["ReceiptHandle"] for entry in response.get("Failed", [])]
        return failed


class QueuedObjects:
    """The store of the objects a queue's messages name: key `calls/a.wav` is s3://BUCKET/calls/a.wav, BUCKET the
    one its message named. SOURCE of a queue run: it lists nothing (the queue says what to do)."""

    def __init__(self, client: Any, spool_dir: str | None = None, max_bytes: int | None = None, location: str = ""):
        self.client, self.spool_dir, self.max_bytes = client, spool_dir, max_bytes
        self.location = location
        self._buckets: dict[str, str] = {}
        self._unreadable: dict[str, Exception] = {}  # objects whose HEAD failed, not for being gone: why

    def item(self, bucket: str, key: str) -> InputFile:
        """The object as it is now (a HEAD). One that is gone has size 0 and fails when opened (its own fault); one
        whose HEAD failed otherwise (access denied, throttling, 5xx) raises that error when opened: not its fault."""
        self._buckets[key] = bucket
        self._unreadable.pop(key, None)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            if error_code(exc) in GONE_ERROR_CODES:
                return InputFile(key=key, size=0, version=GONE)
            self._unreadable[key] = read_failure(exc, f"HEAD of {self.address(key)}")
            return InputFile(key=key, size=0, version="unknown")
        return InputFile(key=key, size=int(head["ContentLength"]), version=str(head["ETag"]).strip('"'))

    def address(self, key: str) -> str:
        """Where the object is: s3://bucket/key, the bucket its message named."""
        return f"s3://{self._buckets.get(key, '?')}/{key}"

    def check_readable(self, role: str = "SOURCE") -> None:
        return None  # each object is checked as its message comes

    def list(
        self, include: Iterable[str] = (), exclude: Iterable[str] = (), counts: ListingCounts | None = None
    ) -> Iterator[InputFile]:
        return iter(())

    def list_names(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        return iter(())

    def open(self, key: str, size: int | None = None, version: str | None = None) -> BinaryIO:
        if size is not None and self.max_bytes is not None and size > self.max_bytes:
            raise FileFailure(f"the object is {size:,} bytes, over the download cap of {self.max_bytes:,} bytes")
        unreadable = self._unreadable.pop(key, None)
        if unreadable is not None:
            raise unreadable
        bucket = self._buckets[key]
        return spooled(self.client, bucket, key, self.spool_dir, self.address(key), version)

    def current_version(self, key: str) -> str | None:
        bucket = self._buckets.get(key)
        return head_version(self.client, bucket, key) if bucket is not None else None

    def fingerprint(self, item: InputFile) -> str:
        return f"etag:{item.version}:size:{item.size}"
