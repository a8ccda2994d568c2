"""Queue mode (--queue) with real consumer processes against moto's real server on 127.0.0.1: S3, SQS, and S3's event
notifications to SQS (moto's server delivers them to its own SQS queues, as AWS does)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from batch.cli.console import graceful_stop
from batch.run.config import SelectionConfig
from batch.run.job import Job
from batch.run.manifest import manifest_name
from batch.run.work.queue import QueueSource
from batch.settings.options import load_settings
from batch.storage import InputFile
from batch.storage.local import LocalStore
from batch.storage.sqs import QueuedObjects, SqsQueue, UnreadableMessage, objects_named
from tests.conftest import ENGLISH, speak, tone
from tests.fakes import FakePipeline
from tests.storage.test_s3 import aws_environment, keys_in, moto_url, put  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("aws_environment")


@pytest.fixture
def bucket(moto_url: str, request: pytest.FixtureRequest) -> str:  # noqa: F811
    name = "q-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(ENGLISH, tmp_path_factory.mktemp("speech") / "memo.mp3").read_bytes()


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(" ".join([ENGLISH] * 6), tmp_path_factory.mktemp("speech") / "long.mp3").read_bytes()


def make_queue(name: str, visibility: int, dead_letters_after: int | None = None) -> tuple[str, str | None]:
    """(queue URL, dead-letter queue URL or None)."""
    sqs = boto3.client("sqs")
    attributes = {"VisibilityTimeout": str(visibility)}
    dead_letters = None
    if dead_letters_after is not None:
        dead_letters = sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": dead_letters_after})
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"], dead_letters


def notify(bucket: str, queue_url: str) -> None:
    """S3 event notifications of new objects under in/ to the queue (S3 sends an s3:TestEvent first)."""
    arn = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    boto3.client("s3").put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn["Attributes"]["QueueArn"],
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "in/"}]}},
                }
            ]
        },
    )


def messages_in(queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    got = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return int(got[names[0]]), int(got[names[1]])


def consumer(queue_url: str, out: str, model: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "batch", "run", "--queue", queue_url, "--out", out, "--model", model]
    command += ["--no-align", "--threads", "1", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float = 120) -> None:
    """Read the process's log until a line matches `pattern` (what follows is left unread)."""
    found = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if re.search(pattern, line):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"no line of the log matched {pattern!r}"


def manifest(bucket: str, key: str) -> dict:
    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"out/{key}.manifest.json")["Body"].read()
    return json.loads(body)


def reports(bucket: str) -> list[dict]:
    s3 = boto3.client("s3")
    return [
        json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in keys_in(bucket, "out/_runs/")
        if key.endswith(".json")
    ]


def wait_until(condition, timeout: float = 120, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def test_two_consumers_share_a_queue_each_file_done_once_a_corrupt_one_failing_alone(
    bucket: str, speech: bytes, tiny_en: str
) -> None:
    # A visibility timeout far shorter than a file's work: without the heartbeat the other consumer would take
    # a message in work and do its file twice.
    queue_url, _ = make_queue("shared", visibility=2)
    notify(bucket, queue_url)
    keys = [f"in/call {index}+x.mp3" for index in range(4)]  # URL-encoded in the events: spaces as +, + as %2B
    for key in keys:
        put(bucket, key, speech)
    put(bucket, "in/broken.mp3", b"this is no audio at all" * 100)
    put(bucket, "in/notes.txt", b"not a recording")
    boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/extra.mp3"}))
    put(bucket, "extra.mp3", speech)
    out = f"s3://{bucket}/out"
    first, second = (consumer(queue_url, out, tiny_en, "--queue-idle", "4") for _ in range(2))
    results = [finish(first), finish(second)]
    assert sorted(code for code, _ in results) in ([0, 1], [1, 1]), results  # the one with the corrupt file: 1
    assert messages_in(queue_url) == (0, 0)  # every message deleted, the test event and the .txt's included
    for key in [*keys, "extra.mp3"]:
        assert manifest(bucket, key)["status"] == "succeeded"
        assert manifest(bucket, key)["receive_count"] == 1
    broken = manifest(bucket, "in/broken.mp3")
    assert broken["status"] == "failed" and broken["error"]["message"]
    runs = reports(bucket)
    done = [key for run in runs for key in run["succeeded"]]
    assert sorted(done) == sorted([*keys, "extra.mp3"])  # each exactly once, over both consumers
    assert [f["key"] for run in runs for f in run["failed"]] == ["in/broken.mp3"]
    assert sum(run["queue"]["test_events"] for run in runs) == 1
    assert sum(run["queue"]["deleted"] for run in runs) == sum(run["queue"]["received"] for run in runs) == 8

    # A message for a file done with the same settings: deleted, not redone.
    boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/extra.mp3"}))
    code, stderr = finish(consumer(queue_url, out, tiny_en, "--queue-idle", "2"))
    assert code == 0, stderr
    again = [run for run in reports(bucket) if run["run_id"] not in {r["run_id"] for r in runs}]
    assert again[0]["skipped"] == ["extra.mp3"] and again[0]["succeeded"] == []
    assert messages_in(queue_url) == (0, 0)


def test_a_consumer_killed_mid_file_leaves_its_message_to_come_back(
    bucket: str, long_speech: bytes, tiny_en: str
) -> None:
    queue_url, _ = make_queue("killed", visibility=3)
    put(bucket, "in/long.mp3", long_speech)
    boto3.client("sqs").send_message(
        QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/long.mp3"})
    )
    out = f"s3://{bucket}/out"
    doomed = consumer(queue_url, out, tiny_en)
    wait_for_line(doomed, r"queue message \S+: 1 objects")  # taken: its download and decoding begin
    doomed.kill()
    doomed.wait()
    assert keys_in(bucket, "out/") == []  # nothing written: the file was not done
    code, stderr = finish(consumer(queue_url, out, tiny_en, "--queue-idle", "6"))
    assert code == 0, stderr
    done = manifest(bucket, "in/long.mp3")
    # 2, or 3 when moto's server answered the killed consumer's long poll that was still open: SQS counts a
    # receive whose answer no one read too.
    assert done["status"] == "succeeded" and done["receive_count"] in (2, 3)
    assert [run["succeeded"] for run in reports(bucket)] == [["in/long.mp3"]]
    assert messages_in(queue_url) == (0, 0)


def test_sigterm_makes_unfinished_messages_visible_at_once(bucket: str, speech: bytes, tiny_en: str) -> None:
    queue_url, _ = make_queue("stopped", visibility=600)  # only the consumer's release can bring them back soon
    sqs = boto3.client("sqs")
    for index in range(4):
        put(bucket, f"in/{index}.mp3", speech)
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/{index}.mp3"}))
    process = consumer(queue_url, f"s3://{bucket}/out", tiny_en, "--prefetch", "2")
    wait_until(lambda: messages_in(queue_url)[1] >= 2)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 143, stderr
    visible, in_flight = messages_in(queue_url)
    done = [key for key in keys_in(bucket, "out/") if key.endswith(".manifest.json")]
    assert in_flight == 0 and visible + len(done) == 4  # none lost, none held
    (run,) = reports(bucket)
    assert run["queue"]["returned"] == visible - (4 - run["queue"]["received"])
    assert run["stopped_by_signal"] == signal.SIGTERM


def test_a_message_that_keeps_coming_back_goes_to_the_dead_letter_queue(bucket: str, tiny_en: str) -> None:
    queue_url, dead_letters = make_queue("poison", visibility=1, dead_letters_after=2)
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=queue_url, MessageBody="this is not an S3 event")
    code, stderr = finish(consumer(queue_url, f"s3://{bucket}/out", tiny_en, "--queue-idle", "4"))
    assert code == 0, stderr
    assert "left for the dead letters" in stderr
    assert messages_in(queue_url) == (0, 0)
    assert dead_letters is not None and messages_in(dead_letters)[0] == 1
    (run,) = reports(bucket)
    assert run["queue"]["unreadable"] == 2 and run["queue"]["deleted"] == 0


def test_queue_settings_are_checked(cli, tmp_path: Path) -> None:
    both = cli("run", str(tmp_path), "--queue", "http://127.0.0.1:1/q", "--out", str(tmp_path / "out"))
    assert both.exit_code == 2 and "SOURCE or --queue" in both.stderr
    idle = cli("run", str(tmp_path), "--queue-idle", "5", "--out", str(tmp_path / "out"))
    assert idle.exit_code == 2 and "queue_idle" in idle.stderr


def test_worker_processes_share_a_queues_files_as_in_a_folder_run(bucket: str, speech: bytes, tiny_en: str) -> None:
    queue_url, _ = make_queue("workers", visibility=2)
    sqs = boto3.client("sqs")
    keys = [f"in/{index}.mp3" for index in range(4)]
    for key in keys:
        put(bucket, key, speech)
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/{key}"}))
    command = [sys.executable, "-m", "batch", "run", "--queue", queue_url, "--out", f"s3://{bucket}/out"]
    command += ["--model", tiny_en, "--no-align", "--workers", "2", "--threads", "2", "--queue-idle", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run,) = reports(bucket)
    assert sorted(run["succeeded"]) == keys
    assert sum(worker["files"] for worker in run["workers"]) == 4 and len(run["workers"]) == 2
    assert run["queue"]["deleted"] == 4 and messages_in(queue_url) == (0, 0)


def test_a_queue_that_still_holds_messages_is_not_idle_however_slowly_the_run_takes_them(
    bucket: str, tmp_path: Path
) -> None:
    """--queue-idle counts polls that found nothing in a row, not the time spent on files between polls: a run
    that takes 10 s (on its clock) per file with --queue-idle 2 still takes all twelve messages; nor does the time
    it spends finishing its files after a pause count: a message sent meanwhile is taken."""
    queue_url, _ = make_queue("slow-run", visibility=30)
    sqs = boto3.client("sqs")
    for index in range(12):
        put(bucket, f"in/call{index}.wav", b"not read here")
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/call{index}.wav"}))
    to_do, now, dest = slow_queue_to_do(queue_url, tmp_path, idle_seconds=2)
    taken: list[InputFile] = []
    try:
        for item in to_do.pending(on_skipped=lambda key: None):
            taken.append(item)
            now[0] += 10  # the run works on the file before it asks for the next
        assert sorted(item.key for item in taken) == sorted(f"in/call{index}.wav" for index in range(12))
        # The queue went quiet with files in work: a pause, so that the pipeline finishes what it holds.
        assert to_do.more_to_come()
        now[0] += 100  # finishing them takes long; a message comes meanwhile
        put(bucket, "in/late.wav", b"not read here")
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/late.wav"}))
        for item in taken:
            write_manifest(dest, item)
            to_do.finished(item.key)  # their manifests are written: the messages are deleted
        paused_at = now[0]
        late = list(to_do.pending(on_skipped=lambda key: None))
        assert [item.key for item in late] == ["in/late.wav"]  # polled again: the pause was no idle time
        assert to_do.more_to_come()
        write_manifest(dest, late[0])
        to_do.finished("in/late.wav")
        assert list(to_do.pending(on_skipped=lambda key: None)) == []
        assert not to_do.more_to_come()  # nothing in work, and empty for --queue-idle: the end
        assert now[0] - paused_at >= 2
    finally:
        to_do.close()
    assert messages_in(queue_url) == (0, 0)


def slow_queue_to_do(
    queue_url: str, tmp_path: Path, idle_seconds: float
) -> tuple[QueueSource, list[float], LocalStore]:
    """A QueueSource over a real queue with a clock of its own, which each poll moves on by the time it may wait (as
    long polls that find nothing take): (the to-do, the clock's time, its DEST)."""
    now = [0.0]
    sqs = boto3.client("sqs")
    sqs.meta.events.register(
        "before-parameter-build.sqs.ReceiveMessage",
        lambda params, **_: now.__setitem__(0, now[0] + params["WaitTimeSeconds"]),
    )
    queue = SqsQueue(queue_url, sqs)
    queue.check()
    dest = LocalStore(tmp_path / "out")
    to_do = QueueSource(
        queue,
        idle_seconds,
        SelectionConfig(),
        "hash",
        QueuedObjects(boto3.client("s3")),
        dest,
        lambda: False,
        lambda: now[0],
    )
    return to_do, now, dest


def write_manifest(dest: LocalStore, item: InputFile) -> None:
    """The manifest the run would write for this version of the object."""
    document = {
        "status": "succeeded",
        "input": {"key": item.key, "size": item.size, "version": item.version},
        "settings_hash": "hash",
        "settings": {},
        "timings": {},
        "batch_size": 1,
        "model": "tiny.en",
        "device": "cpu",
        "compute_type": "int8",
        "threads": 1,
        "versions": {},
        "run_id": "r",
        "started_at": "",
        "finished_at": "",
    }
    dest.write_bytes(manifest_name(item.key), json.dumps(document).encode())


def test_a_consumer_without_an_idle_limit_finishes_each_burst_without_waiting_for_the_next(
    bucket: str, speech: bytes, tiny_en: str
) -> None:
    """A long-running consumer (no --queue-idle): three files, fewer than a batch, are finished and their messages
    deleted once the queue goes quiet, not held until another message comes; a later burst is done the same way."""
    queue_url, _ = make_queue("long-running", visibility=60)
    sqs = boto3.client("sqs")

    def send(names: list[str]) -> None:
        for name in names:
            put(bucket, f"in/{name}.mp3", speech)
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/in/{name}.mp3"}))

    def manifests() -> set[str]:
        return {key for key in keys_in(bucket, "out/in/") if key.endswith(".manifest.json")}

    send(["a", "b", "c"])
    process = consumer(queue_url, f"s3://{bucket}/out", tiny_en, "--batch-size", "8")
    try:
        wait_until(lambda: len(manifests()) == 3 and messages_in(queue_url) == (0, 0), timeout=180)
        send(["d", "e"])
        wait_until(lambda: len(manifests()) == 5 and messages_in(queue_url) == (0, 0), timeout=180)
    finally:
        process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 143, stderr
    (run,) = reports(bucket)
    assert sorted(run["succeeded"]) == [f"in/{name}.mp3" for name in "abcde"]


# --- the queue's files in-process, the pipeline a fake at its seam (tests/fakes.py), faults at the HTTP seam ---


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> dict[float, bytes]:
    """Real recordings by length in seconds: two versions of one object are told apart by it."""
    folder = tmp_path_factory.mktemp("tones")
    return {seconds: tone(folder / f"{seconds}.wav", seconds).read_bytes() for seconds in (1.0, 2.0)}


def queue_job(queue_url: str, out: str, pipeline: FakePipeline | None = None, **flags: object) -> Job:
    settings = {"queue": queue_url, "out": out, "device": "cpu", "queue_idle": 1, **flags}
    return Job(load_settings(settings, environ={}), environ={}, pipeline=pipeline or FakePipeline())


def send_source(queue_url: str, url: str) -> None:
    boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": url}))


def etag(bucket: str, key: str) -> str:
    return boto3.client("s3").head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def stored_manifest(bucket: str, key: str) -> dict | None:
    try:
        return manifest(bucket, key)
    except boto3.client("s3").exceptions.NoSuchKey:
        return None


def versions_at_deletes(job: Job, bucket: str, key: str) -> list[str | None]:
    """The version DEST's manifest of `key` names at each DeleteMessage the job sends (None: no manifest)."""
    seen: list[str | None] = []

    def on_delete(**_: object) -> None:
        found = stored_manifest(bucket, key)
        seen.append(found["input"]["version"] if found else None)

    job.queue.client.meta.events.register("before-call.sqs.DeleteMessage", on_delete)
    return seen


def test_one_event_delivered_twice_is_done_once_and_each_message_deleted_after_the_manifest(
    bucket: str, tones: dict[float, bytes]
) -> None:
    """S3 delivers an event twice, or a client retries its PUT: the second message comes while the file is in
    work. It waits for the first to be written, is then found done (the same version), and both messages go, each
    only once DEST holds the manifest of the version it saw. One batch of two files would take both otherwise."""
    queue_url, _ = make_queue("twice", visibility=30)
    put(bucket, "in/a.wav", tones[1.0])
    for _ in range(2):
        send_source(queue_url, f"s3://{bucket}/in/a.wav")
    job = queue_job(queue_url, f"s3://{bucket}/out", FakePipeline(batch_size=2))
    deleted_at = versions_at_deletes(job, bucket, "in/a.wav")
    report = job.run()
    assert report.exit_code == 0 and report.error is None
    assert report.succeeded == ["in/a.wav"] and report.skipped == ["in/a.wav"] and report.failed == []
    assert deleted_at == [etag(bucket, "in/a.wav")] * 2
    assert report.queue is not None and report.queue.received == report.queue.deleted == 2
    assert messages_in(queue_url) == (0, 0)


def test_a_message_that_comes_back_to_the_run_holding_it_is_held_on_under_its_new_receipt(
    bucket: str, tmp_path: Path
) -> None:
    """SQS refuses the heartbeat's extensions, so the message's visibility runs out while its file is in work and
    the same run receives it again. The file is not handed out twice, the message is deleted once under its newest
    receipt (the only one SQS heeds), and the counts account for both receives (soak seed 81 scenario 4: a run
    starved of CPU received 6 messages and deleted 5)."""
    queue_url, _ = make_queue("back-to-holder", visibility=1)
    put(bucket, "in/a.wav", b"not read here")
    send_source(queue_url, f"s3://{bucket}/in/a.wav")
    to_do, _, dest = slow_queue_to_do(queue_url, tmp_path, idle_seconds=30)
    to_do.queue.client.meta.events.register("before-send.sqs.ChangeMessageVisibilityBatch", refuse_extensions)
    receipts: list[str] = []
    to_do.queue.client.meta.events.register(
        "after-call.sqs.ReceiveMessage",
        lambda parsed, **_: receipts.extend(message["ReceiptHandle"] for message in parsed.get("Messages", [])),
    )
    try:
        taken = list(to_do.pending(on_skipped=lambda key: None))
        assert [item.key for item in taken] == ["in/a.wav"]
        give_up_at = time.monotonic() + 60
        while len(receipts) < 2 and time.monotonic() < give_up_at:  # each look polls the queue once more
            assert list(to_do.pending(on_skipped=lambda key: None)) == []  # never handed out twice
        assert len(receipts) == 2, "the message never came back"
        write_manifest(dest, taken[0])
        deletes: list[str] = []
        to_do.queue.client.meta.events.register(
            "before-parameter-build.sqs.DeleteMessage", lambda params, **_: deletes.append(params["ReceiptHandle"])
        )
        to_do.finished("in/a.wav")
        assert deletes == [receipts[1]]
    finally:
        to_do.close()
    counts = to_do.counts
    assert (counts.received, counts.received_again, counts.deleted, counts.returned) == (2, 1, 1, 0)
    assert messages_in(queue_url) == (0, 0)


def test_objects_under_dest_are_never_transcribed_so_a_run_never_clips_its_own_clips(
    bucket: str, tones: dict[float, bytes]
) -> None:
    """DEST under the notification's prefix: the run's own outputs come back as events. The review clips are media,
    so a run that took them would cut clips of its clips all night; every object under DEST is passed over."""
    queue_url, _ = make_queue("own-clips", visibility=30)
    put(bucket, "in/a.wav", tones[1.0])
    put(bucket, "in/out/_review/clips/0123.ogg", tones[1.0])  # as a run with DEST s3://BUCKET/in/out/ writes
    put(bucket, "in/out/b.wav", tones[1.0])  # even a recording: DEST's own
    for key in ("in/out/_review/clips/0123.ogg", "in/out/b.wav", "in/a.wav"):
        send_source(queue_url, f"s3://{bucket}/{key}")
    pipeline = FakePipeline(batch_size=1)
    report = queue_job(queue_url, f"s3://{bucket}/in/out", pipeline).run()
    assert report.exit_code == 0 and report.succeeded == ["in/a.wav"] and pipeline.pulled == ["in/a.wav"]
    assert report.queue is not None and (report.queue.received, report.queue.deleted) == (3, 3)
    assert messages_in(queue_url) == (0, 0)


def refuse_extensions(request: AWSPreparedRequest, **_: object) -> AWSResponse | None:
    """SQS answers 500 to every visibility extension (a release to 0 goes through)."""
    if b'"VisibilityTimeout": 0' in (request.body or b"") or b"VisibilityTimeout=0" in (request.body or b""):
        return None
    body = b'{"__type": "InternalError", "message": "We encountered an internal error."}'
    return AWSResponse(request.url, 500, {"Content-Type": "application/x-amz-json-1.0"}, RawBody(body))


def test_an_object_overwritten_while_in_work_is_redone_with_its_new_version(
    bucket: str, tones: dict[float, bytes]
) -> None:
    """Two PUTs of one key: the second's message comes while the first version is in work, and the object is
    overwritten once the first is downloaded. The second waits, then sees the new version and redoes the file:
    the last manifest names the new version and its transcript is the new version's (2 s, not 1 s). Taken at
    once, both would be in one batch, the first written under the second's version."""
    queue_url, _ = make_queue("overwritten", visibility=30)
    put(bucket, "in/a.wav", tones[1.0])
    for _ in range(2):
        send_source(queue_url, f"s3://{bucket}/in/a.wav")
    job = queue_job(queue_url, f"s3://{bucket}/out", FakePipeline(batch_size=2))
    downloaded, overwritten = threading.Event(), threading.Event()

    def overwrite_once_downloaded(params: dict, **_: object) -> None:
        """The next look at the object once its first version is downloaded sees the second."""
        if params["Key"] == "in/a.wav" and downloaded.is_set() and not overwritten.is_set():
            overwritten.set()
            put(bucket, "in/a.wav", tones[2.0])

    def note_the_key(params: dict, context: dict, **_: object) -> None:
        context["key"] = params["Key"]

    def on_download(context: dict, **_: object) -> None:
        if context.get("key") == "in/a.wav":  # not a manifest's read
            downloaded.set()

    events = job.source.client.meta.events
    events.register("before-parameter-build.s3.HeadObject", overwrite_once_downloaded)
    events.register("before-parameter-build.s3.GetObject", note_the_key)
    events.register("after-call.s3.GetObject", on_download)
    manifest_at_transcript_puts = []

    def note_the_manifest(params: dict, **_: object) -> None:
        if params["Key"] == "out/in/a.wav.json":
            manifest_at_transcript_puts.append(stored_manifest(bucket, "in/a.wav"))

    events.register("before-parameter-build.s3.PutObject", note_the_manifest)
    deleted_at = versions_at_deletes(job, bucket, "in/a.wav")
    first_version = etag(bucket, "in/a.wav")
    report = job.run()
    assert report.exit_code == 0 and report.error is None and report.succeeded == ["in/a.wav", "in/a.wav"]
    written = manifest(bucket, "in/a.wav")
    assert written["input"]["version"] == etag(bucket, "in/a.wav") != first_version
    assert written["audio_seconds"] == 2.0
    transcript = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="out/in/a.wav.json")["Body"].read())
    assert transcript["segments"][0]["end"] == 2.0
    assert deleted_at == [first_version, etag(bucket, "in/a.wav")]  # each after the manifest of what it saw
    assert manifest_at_transcript_puts == [None, None]  # the first version's went before its outputs changed
    assert messages_in(queue_url) == (0, 0)


def test_a_redelivered_message_of_a_done_file_whose_object_is_gone_leaves_its_manifest_whole(
    bucket: str, tones: dict[float, bytes]
) -> None:
    queue_url, _ = make_queue("gone", visibility=30)
    put(bucket, "in/a.wav", tones[1.0])
    send_source(queue_url, f"s3://{bucket}/in/a.wav")
    out = f"s3://{bucket}/out"
    assert queue_job(queue_url, out).run().succeeded == ["in/a.wav"]
    done = boto3.client("s3").get_object(Bucket=bucket, Key="out/in/a.wav.manifest.json")["Body"].read()
    boto3.client("s3").delete_object(Bucket=bucket, Key="in/a.wav")  # a lifecycle rule, say
    send_source(queue_url, f"s3://{bucket}/in/a.wav")  # the event, delivered again
    report = queue_job(queue_url, out).run()
    assert report.exit_code == 0 and report.skipped == ["in/a.wav"] and report.failed == []
    assert boto3.client("s3").get_object(Bucket=bucket, Key="out/in/a.wav.manifest.json")["Body"].read() == done
    assert messages_in(queue_url) == (0, 0)  # nothing to redo: the message is deleted


def test_an_s3_uri_is_split_at_the_bucket_only_and_event_keys_are_url_decoded(bucket: str, tones: dict) -> None:
    queue_url, _ = make_queue("odd-keys", visibility=30)
    sqs = boto3.client("sqs")
    keys = ["in/Meeting #3.wav", "in/what?;x=1.wav", "in/a+b %41 #2?.wav"]
    for key in keys:
        put(bucket, key, tones[1.0])
    send_source(queue_url, f"s3://{bucket}/{keys[0]}")
    send_source(queue_url, f"s3://{bucket}/{keys[1]}")
    # S3 URL-encodes the keys of its event records: a space as +, + as %2B, # as %23, ? as %3F, % as %25
    event = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(keys[2])}},
    }
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [event]}))
    report = queue_job(queue_url, f"s3://{bucket}/out").run()
    assert report.exit_code == 0 and sorted(report.succeeded) == sorted(keys)
    for key in keys:
        written = boto3.client("s3").get_object(Bucket=bucket, Key="out/" + manifest_name(key))["Body"].read()
        assert json.loads(written)["input"]["key"] == key
    assert messages_in(queue_url) == (0, 0)


def test_the_objects_a_message_names() -> None:
    assert objects_named(json.dumps({"source": "s3://b/Meeting #3.mp3"})) == ([("b", "Meeting #3.mp3")], False)
    assert objects_named(json.dumps({"source": "s3://b/a?b;c=%41.mp3"})) == ([("b", "a?b;c=%41.mp3")], False)
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "a+%2B%23%3F.mp3"}}}
    assert objects_named(json.dumps({"Records": [record]})) == ([("b", "a +#?.mp3")], False)
    not_utf8 = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "\udcff.mp3"}}}
    refused = ({"source": "s3://b/"}, {"source": "s3:///a.mp3"}, {"source": "b/a.mp3"}, {"source": "s3://b/\udcff.mp3"})
    for body in (*refused, {"Records": [not_utf8]}):  # a JSON string may hold a lone surrogate, no S3 key can
        with pytest.raises(UnreadableMessage):
            objects_named(json.dumps(body))


def test_a_presigned_url_in_a_message_is_refused_without_its_query_string() -> None:
    """A presigned URL (or any with a query string) is no S3 URI: the message goes to the dead letters, and the
    error logged names the URL without its signature."""
    presigned = "https://b.s3.amazonaws.com/a.mp3?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=0123456789abcdef"
    with pytest.raises(UnreadableMessage) as refused:
        objects_named(json.dumps({"source": presigned}))
    assert "https://b.s3.amazonaws.com/a.mp3" in str(refused.value)
    assert "Signature" not in str(refused.value) and "AKIDEXAMPLE" not in str(refused.value)


@pytest.mark.parametrize("fault", ["blocked", "refused"])  # a directory where its manifest belongs; its PUT refused
def test_a_message_whose_file_got_no_manifest_comes_back_and_reaches_the_dead_letters(
    bucket: str, tones: dict[float, bytes], tmp_path: Path, fault: str
) -> None:
    """No manifest, so the message is not deleted; nor is it held by the heartbeat for ever: it is made visible
    again, comes back, and its redrive policy takes it to the dead-letter queue. No poll loop meanwhile."""
    # The back-off of a released message is never longer than the queue's visibility timeout: 2 s here.
    queue_url, dead_letters = make_queue(f"no-manifest-{fault}", visibility=2, dead_letters_after=2)
    put(bucket, "in/a.wav", tones[1.0])
    send_source(queue_url, f"s3://{bucket}/in/a.wav")
    if fault == "blocked":
        out = str(tmp_path / "out")
        (tmp_path / "out" / "in" / "a.wav.manifest.json").mkdir(parents=True)
        job = queue_job(queue_url, out, queue_idle=5)
    else:
        job = queue_job(queue_url, f"s3://{bucket}/out", queue_idle=5)
        job.dest.client.meta.events.register("before-send.s3.PutObject", refuse_manifest_puts)
    receives: list[int] = []
    job.queue.client.meta.events.register("after-call.sqs.ReceiveMessage", lambda **_: receives.append(1))
    report = job.run()
    if fault == "blocked":  # a directory where its manifest belongs: that one path, the file fails alone
        assert report.error is None and report.exit_code == 1
    else:  # DEST refusing writes is no file's fault: a run where nothing else happened stops with exit 3
        assert report.error is not None and report.error.type == "EnvironmentProblem" and report.exit_code == 3
    assert [failed.key for failed in report.failed] == ["in/a.wav", "in/a.wav"]  # received twice, then redriven
    assert messages_in(queue_url) == (0, 0)
    assert dead_letters is not None and messages_in(dead_letters)[0] == 1
    assert report.queue is not None and report.queue.deleted == 0 and report.queue.returned == 2
    assert len(receives) < 10  # a few polls, not a loop of them


def refuse_manifest_puts(request: AWSPreparedRequest, **_: object) -> AWSResponse | None:
    """S3 answers AccessDenied to any PUT of a manifest (a bucket policy, say)."""
    if not request.url.split("?")[0].endswith(".manifest.json"):
        return None
    body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, RawBody(body))


class RawBody:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.body


def test_queue_idle_zero_polls_once(bucket: str, tmp_path: Path) -> None:
    queue_url, _ = make_queue("idle-zero", visibility=30)
    to_do, _, _ = slow_queue_to_do(queue_url, tmp_path, idle_seconds=0)
    receives: list[int] = []
    to_do.queue.client.meta.events.register("after-call.sqs.ReceiveMessage", lambda **_: receives.append(1))
    try:
        assert list(to_do.pending(on_skipped=lambda key: None)) == []
    finally:
        to_do.close()
    assert len(receives) == 1 and not to_do.more_to_come()


def test_a_dry_run_of_a_queue_is_refused_and_leaves_it_untouched(cli, tmp_path: Path) -> None:
    queue_url, _ = make_queue("dry-run", visibility=30)
    send_source(queue_url, "s3://b/in/a.wav")
    result = cli("run", "--queue", queue_url, "--out", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 2 and "dry_run" in result.stderr and "dead-letter" in result.stderr
    assert messages_in(queue_url) == (1, 0)
    message = boto3.client("sqs").receive_message(QueueUrl=queue_url, MessageSystemAttributeNames=["All"])
    assert message["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "1"  # never received before


def test_a_version_another_consumer_finished_meanwhile_is_left_as_it_is_not_written_twice(
    bucket: str, tones: dict[float, bytes]
) -> None:
    """Two consumers given one event each for the same object (S3 delivering it twice, to two queues or to two
    consumers of one): while one transcribes it, the other finishes the same version with the same settings. The
    first leaves that manifest and its outputs as they are (counted skipped, not succeeded a second time) and
    still deletes its message, since DEST holds a manifest of the version it saw."""
    first_queue, _ = make_queue("alongside-1", visibility=30)
    other_queue, _ = make_queue("alongside-2", visibility=30)
    put(bucket, "in/a.wav", tones[1.0])
    send_source(first_queue, f"s3://{bucket}/in/a.wav")
    send_source(other_queue, f"s3://{bucket}/in/a.wav")
    other_reports = []

    def the_other_consumer_finishes_it(keys: list[str]) -> None:
        if not other_reports:
            other_reports.append(queue_job(other_queue, f"s3://{bucket}/out").run())

    pipeline = FakePipeline(batch_size=1, on_batch=the_other_consumer_finishes_it)
    report = queue_job(first_queue, f"s3://{bucket}/out", pipeline).run()
    (other,) = other_reports
    assert other.exit_code == 0 and other.succeeded == ["in/a.wav"]
    assert report.exit_code == 0 and report.error is None
    assert report.succeeded == [] and report.skipped == ["in/a.wav"] and report.failed == []
    assert manifest(bucket, "in/a.wav")["run_id"] == other.run_id
    assert messages_in(first_queue) == (0, 0) and messages_in(other_queue) == (0, 0)


def test_a_file_failed_for_its_own_fault_is_recorded_once_when_its_event_comes_twice(bucket: str) -> None:
    """S3 delivers the event of an empty object twice: the second message waits for the first try, then is looked
    at anew and finds this very version recorded (a failed manifest, its own fault): skipped and deleted, not
    failed a second time (docs/queue.md: the same version is skipped)."""
    queue_url, _ = make_queue("empty-twice", visibility=30)
    put(bucket, "in/empty.wav", b"")
    for _ in range(2):
        send_source(queue_url, f"s3://{bucket}/in/empty.wav")
    report = queue_job(queue_url, f"s3://{bucket}/out", FakePipeline(batch_size=2)).run()
    assert [(f.key, f.error.type, f.error.file_problem) for f in report.failed] == [
        ("in/empty.wav", "AudioDecodeError", True)
    ]
    assert report.skipped == ["in/empty.wav"] and report.exit_code == 1
    assert manifest(bucket, "in/empty.wav")["status"] == "failed"
    assert report.queue is not None and report.queue.received == report.queue.deleted == 2
    assert messages_in(queue_url) == (0, 0)


def test_a_sigterm_while_a_skipped_files_delete_is_in_flight_waits_for_it_before_the_report(
    bucket: str, tones: dict[float, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """The thread that reads the queue deletes the message of a file found done while the run takes SIGTERM: the
    run's end waits for that delete (within the grace period) before its report is written and the process may
    exit, so the report counts it and the message is gone, not left invisible until its timeout."""

    def sigterm() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    job, queue_url = job_with_a_readers_delete_in_flight(bucket, tones, caplog, sigterm, grace_seconds=25)
    with graceful_stop(job, grace_seconds=30):
        report = job.run()
    assert report.stopped_by_signal == signal.SIGTERM and report.succeeded == ["in/b.wav"]
    assert report.skipped == ["in/a.wav"]
    (stored,) = [run for run in reports(bucket) if run["run_id"] == report.run_id]
    assert stored["queue"]["received"] == 2 and stored["queue"]["deleted"] == 2
    assert messages_in(queue_url) == (0, 0)


def test_past_the_grace_period_the_runs_end_does_not_wait_for_the_queue(
    bucket: str, tones: dict[float, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """With no grace left (--grace-seconds 0) the run's end does not wait for the delete in flight: it says so."""
    job, queue_url = job_with_a_readers_delete_in_flight(
        bucket, tones, caplog, lambda: job.request_stop(signal.SIGTERM), grace_seconds=0
    )
    report = job.run()
    (stored,) = [run for run in reports(bucket) if run["run_id"] == report.run_id]
    assert stored["queue"]["received"] == 2 and stored["queue"]["deleted"] == 1  # the one in flight not waited for
    assert "a queue request still in flight at the run's end" in caplog.text
    wait_until(lambda: messages_in(queue_url) == (0, 0))  # it went through once let go


def job_with_a_readers_delete_in_flight(
    bucket: str, tones: dict[float, bytes], caplog: pytest.LogCaptureFixture, stop, grace_seconds: float
) -> tuple[Job, str]:
    """A queue job over a new file (b) and a done one (a) whose message's delete, sent by the thread that reads
    the queue, is held until the run's end says it waits for it, or its report is on its way; `stop` is called
    once that delete is in flight, while b is in the models."""
    queue_url, _ = make_queue(f"delete-in-flight-{grace_seconds}", visibility=30)
    out = f"s3://{bucket}/out"
    put(bucket, "in/a.wav", tones[1.0])
    send_source(queue_url, f"s3://{bucket}/in/a.wav")
    assert queue_job(queue_url, out).run().succeeded == ["in/a.wav"]
    put(bucket, "in/b.wav", tones[2.0])
    send_source(queue_url, f"s3://{bucket}/in/b.wav")  # a new file: in work when the signal comes
    send_source(queue_url, f"s3://{bucket}/in/a.wav")  # done already: its message is deleted by the queue's reader
    delete_in_flight, delete_may_go = threading.Event(), threading.Event()

    def hold_the_readers_delete(**_: object) -> None:
        if threading.current_thread().name == "feed":
            delete_in_flight.set()
            assert delete_may_go.wait(60)

    def stop_once_the_delete_is_in_flight(keys: list[str]) -> None:
        assert delete_in_flight.wait(60)
        stop()

    def on_report_put(request: AWSPreparedRequest, **_: object) -> None:
        if "/_runs/" in request.url:  # the report is on its way: the delete may go on (too late, without the wait)
            delete_may_go.set()

    pipeline = FakePipeline(batch_size=1, on_batch=stop_once_the_delete_is_in_flight)
    job = queue_job(queue_url, out, pipeline, grace_seconds=grace_seconds)
    job.queue.client.meta.events.register("before-send.sqs.DeleteMessage", hold_the_readers_delete)
    job.dest.client.meta.events.register("before-send.s3.PutObject", on_report_put)
    caplog.set_level(logging.INFO, logger="batch.run.work.queue")
    caplog.handler.addFilter(ReleaseOnWait(delete_may_go))
    return job, queue_url


class ReleaseOnWait(logging.Filter):
    """Sets `event` when the run's end says it waits for a queue request in flight (a filter of caplog's handler,
    which every record reaches); lets every record through."""

    def __init__(self, event: threading.Event):
        super().__init__()
        self.event = event

    def filter(self, record: logging.LogRecord) -> bool:
        if "waiting up to" in record.getMessage():
            self.event.set()
        return True
