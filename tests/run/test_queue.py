"""Queue mode (--queue) with real consumer processes against moto's real server on 127.0.0.1: S3, SQS, and S3's event
notifications to SQS (moto's server delivers them to its own SQS queues, as AWS does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import ENGLISH, speak
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


def manifest(bucket: str, key: str) -> dict:
    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"out/{key}.manifest.json")["Body"].read()
    return json.loads(body)


def reports(bucket: str) -> list[dict]:
    s3 = boto3.client("s3")
    return [json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys_in(bucket, "out/_runs/")]


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
    wait_until(lambda: messages_in(queue_url) == (0, 1))
    time.sleep(1.0)  # into the file's work: its download, the model's load
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
    that takes 10 s (on its clock) per file with --queue-idle 2 still takes all twelve messages."""
    from batch.run.config import SelectionConfig
    from batch.run.queue import QueueToDo
    from batch.storage.local import LocalStore
    from batch.storage.sqs import QueuedObjects, SqsQueue

    queue_url, _ = make_queue("slow-run", visibility=30)
    for index in range(12):
        put(bucket, f"in/call{index}.wav", b"not read here")
        body = json.dumps({"source": f"s3://{bucket}/in/call{index}.wav"})
        boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=body)
    now = [0.0]

    def clock() -> float:
        now[0] += 0.5  # every look at the clock moves it on: a poll that finds nothing takes time
        return now[0]

    queue = SqsQueue(queue_url, boto3.client("sqs"))
    queue.check()
    dest = LocalStore(tmp_path / "out")
    to_do = QueueToDo(
        queue, 2, SelectionConfig(), "hash", QueuedObjects(boto3.client("s3")), dest, lambda: False, clock
    )
    taken = []
    try:
        for item in to_do.pending(on_skipped=lambda key: None):
            taken.append(item.key)
            now[0] += 10  # the run works on the file before it asks for the next
        assert sorted(taken) == sorted(f"in/call{index}.wav" for index in range(12))
        # The queue went quiet with files in work: a pause, so that the pipeline finishes what it holds.
        assert to_do.more_to_come()
        for key in taken:
            to_do.written(key)  # their manifests are written: the messages are deleted
        paused_at = now[0]
        assert list(to_do.pending(on_skipped=lambda key: None)) == []
        assert not to_do.more_to_come()  # nothing in work, and empty for --queue-idle: the end
        assert now[0] - paused_at >= 2
    finally:
        to_do.close()
    assert messages_in(queue_url) == (0, 0)


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
