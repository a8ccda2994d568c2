"""Faults that are not a file's own (issue 34 #1): access denied, a store that refuses a write, a full spool disk.
Only the file's own faults (undecodable, empty, gone) give it a failed manifest; any other fault leaves it with no
manifest, for a later run or for its queue message to come back, and a run whose files all meet one stops with
exit 3. Real S3 and SQS (moto's server on 127.0.0.1), real files and decoding; faults injected at the HTTP seam with
botocore's `before-send` hook on the very client the run's stores use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from batch.run.job import Job
from batch.run.manifest import Manifest
from batch.run.report import RunReport
from batch.settings.options import load_settings
from tests.conftest import mounted_tmpfs, tone
from tests.fakes import FakePipeline
from tests.run.test_queue import make_queue, messages_in, wait_until
from tests.storage.test_s3 import aws_environment, keys_in, moto_url, put  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("aws_environment")

KMS_DENIED = "User: arn:aws:iam::123456789012:role/batch is not authorized to perform: kms:Decrypt"


@pytest.fixture
def bucket(moto_url: str, request: pytest.FixtureRequest) -> str:  # noqa: F811
    name = "f-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tone(tmp_path_factory.mktemp("tone") / "tone.wav", seconds=2.0).read_bytes()  # 64 KB


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def refuse(client: Any, operation: str, prefix: str, code: str, message: str, status: int = 403) -> list[str]:
    """Every `operation` request of `client` for an object whose bucket/key starts with `prefix` is answered as S3
    answers a refusal; the URLs refused are listed as they come."""
    refused: list[str] = []

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        if not unquote(urlsplit(request.url).path).lstrip("/").startswith(prefix):
            return None
        refused.append(request.url)
        error = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        body = b"" if request.method == "HEAD" else error.encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Body(body))

    client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return refused


def delete_before_reading(client: Any, bucket: str, key: str) -> None:
    """The object is deleted (for real) just before the run's first request to read it: it is gone."""

    def before_send(request: Any, **_: Any) -> None:
        if f"/{key}" in request.url and request.method in ("HEAD", "GET"):
            boto3.client("s3").delete_object(Bucket=bucket, Key=key)

    client.meta.events.register("before-send.s3.HeadObject", before_send)
    client.meta.events.register("before-send.s3.GetObject", before_send)


def s3_job(bucket: str, **flags: object) -> Job:
    settings = {"source": f"s3://{bucket}/in", "out": f"s3://{bucket}/out", "device": "cpu", **flags}
    return Job(load_settings(settings, environ={}), environ={}, pipeline=FakePipeline())


def queue_job(bucket: str, queue_url: str) -> Job:
    settings = {"queue": queue_url, "queue_idle": 1, "out": f"s3://{bucket}/out", "device": "cpu"}
    return Job(load_settings(settings, environ={}), environ={}, pipeline=FakePipeline())


def stored_manifest(bucket: str, key: str) -> Manifest | None:
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=f"out/{key}.manifest.json")["Body"].read()
    except boto3.client("s3").exceptions.NoSuchKey:
        return None
    return Manifest.decode(body)


def failures(report: RunReport) -> dict[str, tuple[str, bool | None]]:
    return {failed.key: (failed.error.type, failed.error.file_problem) for failed in report.failed}


def test_an_object_the_run_may_not_read_gets_no_manifest_and_one_that_is_gone_fails_alone(
    bucket: str, recording: bytes
) -> None:
    for name in ("a.wav", "b.wav", "c.wav", "gone.wav"):
        put(bucket, f"in/{name}", recording)
    job = s3_job(bucket)
    refused = refuse(job.source.client, "GetObject", f"{bucket}/in/b.wav", "AccessDenied", KMS_DENIED)  # no kms:Decrypt
    delete_before_reading(job.source.client, bucket, "in/gone.wav")
    report = job.run()

    assert refused and report.exit_code == 1 and report.error is None
    assert sorted(report.succeeded) == ["a.wav", "c.wav"]
    assert failures(report) == {"b.wav": ("StoreUnavailable", False), "gone.wav": ("ObjectGone", True)}
    (denied,) = (failed.error for failed in report.failed if failed.key == "b.wav")
    assert "kms:Decrypt" in denied.message and f"s3://{bucket}/in/b.wav" in denied.message
    assert "not the file's fault" in denied.message
    assert stored_manifest(bucket, "b.wav") is None  # not the file's failure: nothing recorded against it
    gone = stored_manifest(bucket, "gone.wav")
    assert gone is not None and gone.status == "failed" and gone.error is not None and gone.error.file_problem
    assert gone.input.location == f"s3://{bucket}/in/gone.wav"  # a failed manifest says where the file was

    rerun = s3_job(bucket).run()  # the key policy fixed: the file left for later is done now
    assert rerun.succeeded == ["b.wav"] and rerun.exit_code == 0
    done = stored_manifest(bucket, "b.wav")
    assert done is not None and done.status == "succeeded" and done.input.location == f"s3://{bucket}/in/b.wav"


def test_a_store_that_refuses_every_object_stops_the_run_with_exit_3_and_records_nothing(
    bucket: str, recording: bytes
) -> None:
    for index in range(6):
        put(bucket, f"in/{index}.wav", recording)
    job = s3_job(bucket)
    refuse(job.source.client, "GetObject", f"{bucket}/in/", "AccessDenied", "Access Denied")  # a bucket policy
    report = job.run()
    assert report.exit_code == 3 and report.error is not None
    assert "files failed with StoreUnavailable" in report.error.message
    assert report.succeeded == [] and 3 <= len(report.failed) < 6  # stopped, not drained
    assert not [key for key in keys_in(bucket, "out/") if key.endswith(".manifest.json")]


def test_a_transcript_dest_refuses_gets_no_failed_manifest(bucket: str, recording: bytes) -> None:
    for name in ("a.wav", "b.wav"):
        put(bucket, f"in/{name}", recording)
    job = s3_job(bucket)
    refused = refuse(job.dest.client, "PutObject", f"{bucket}/out/b.wav.json", "AccessDenied", "Access Denied")
    report = job.run()
    assert refused and report.succeeded == ["a.wav"] and report.exit_code == 1
    assert failures(report) == {"b.wav": ("AccessDenied", False)}
    assert "DEST did not take its outputs or manifest" in report.failed[0].error.message
    assert stored_manifest(bucket, "b.wav") is None


def test_a_queue_message_whose_object_cannot_be_read_comes_back_until_the_dead_letter_queue_takes_it(
    bucket: str, recording: bytes
) -> None:
    queue_url, dead_letters = make_queue("denied", visibility=2, dead_letters_after=2)  # comes back after 2 s
    put(bucket, "in/x.wav", recording)
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/x.wav"}))
    for receive in (1, 2):  # a bucket policy that denies the consumer's role: HEAD and GET refused
        wait_until(lambda: messages_in(queue_url) == (1, 0))  # released with a back-off: visible again
        job = queue_job(bucket, queue_url)
        for operation in ("HeadObject", "GetObject"):
            refuse(job.source.client, operation, f"{bucket}/in/x.wav", "AccessDenied", "Access Denied")
        report = job.run()
        assert report.exit_code == 3, report.error  # its one file failed, not for a reason of its own
        assert failures(report) == {"in/x.wav": ("StoreUnavailable", False)}
        assert report.queue is not None and report.queue.deleted == 0 and report.queue.received == 1, receive
        assert stored_manifest(bucket, "in/x.wav") is None
    assert dead_letters is not None
    # Once back, its next receive finds it past maxReceiveCount: the redrive policy takes it to the dead letters.
    wait_until(
        lambda: (
            sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages") is None
            and messages_in(dead_letters)[0] == 1
        )
    )
    assert messages_in(queue_url) == (0, 0)


def test_a_queue_file_whose_manifest_cannot_be_read_is_left_and_its_message_comes_back(
    bucket: str, recording: bytes
) -> None:
    queue_url, _ = make_queue("unreadable-manifest", visibility=30)
    for name in ("a.wav", "b.wav"):
        put(bucket, f"in/{name}", recording)
        boto3.client("sqs").send_message(
            QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/{name}"})
        )
    job = queue_job(bucket, queue_url)
    refused = refuse(job.dest.client, "GetObject", f"{bucket}/out/in/b.wav.manifest", "AccessDenied", "Access Denied")
    report = job.run()
    assert refused and report.exit_code == 3 and report.error is None  # left for the next run: retry the run
    assert report.succeeded == ["in/a.wav"]
    assert [left.key for left in report.left_for_next_run] == ["in/b.wav"]
    assert report.queue is not None and report.queue.deleted == 1 and report.queue.returned == 1
    assert stored_manifest(bucket, "in/b.wav") is None
    assert messages_in(queue_url) == (0, 1)  # b's message comes back after a back-off, not at once to this run


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs as the spool folder, so a download fills it for real (mounting needs root)."""
    with mounted_tmpfs(tmp_path / "spool", "64k") as mount_point:
        yield mount_point


def test_a_full_spool_disk_is_not_the_files_fault_and_stops_the_run(
    bucket: str, recording: bytes, small_spool: Path
) -> None:
    for index in range(4):
        put(bucket, f"in/{index}.wav", recording + bytes(64 * 1024))  # larger than the spool
    report = s3_job(bucket, spool_dir=str(small_spool)).run()
    assert report.exit_code == 3 and report.error is not None
    assert "failed with SpoolUnusable" in report.error.message and "No space left on device" in report.error.message
    assert report.succeeded == [] and all(failed.error.file_problem is False for failed in report.failed)
    assert not [key for key in keys_in(bucket, "out/") if key.endswith(".manifest.json")]
    assert not list(small_spool.iterdir())  # no spool file left behind


def test_a_claim_dest_refuses_fails_its_file_alone_not_for_its_own_fault_and_the_others_are_done(
    bucket: str, recording: bytes
) -> None:
    """--claim: a file whose claim cannot be taken (DEST refuses the claim's write) fails, not for a fault of its own
    (no manifest, so a later run does it), and holds no claim; the other files are done."""
    for name in ("a.wav", "b.wav", "c.wav"):
        put(bucket, f"in/{name}", recording)
    job = s3_job(bucket, claim=True)
    refused = refuse(job.dest.client, "PutObject", f"{bucket}/out/_claims/b.wav", "AccessDenied", "Access Denied")
    report = job.run()
    assert refused and sorted(report.succeeded) == ["a.wav", "c.wav"] and report.exit_code == 1
    assert failures(report) == {"b.wav": ("AccessDenied", False)}
    assert report.claimed_elsewhere == []
    assert stored_manifest(bucket, "b.wav") is None and keys_in(bucket, "out/_claims/") == []
