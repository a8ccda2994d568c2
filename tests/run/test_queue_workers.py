"""Queue mode with worker processes and decoder processes (--queue, --workers): the real command line, real
processes with Whisper tiny.en on the CPU, and an SQS queue on moto's server on 127.0.0.1; where a worker must
misbehave, real worker processes running the fake pipeline (tests.fakes:worker_pipeline)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from batch.run.job import Job
from batch.settings.options import load_settings
from tests.cli.test_limits import decoders_holding, joined, ten_minutes  # noqa: F401 - fixtures
from tests.conftest import LoggedProcess
from tests.run.test_pool import fake_workers
from tests.run.test_queue import (  # noqa: F401 - fixtures
    bucket,
    make_queue,
    manifest,
    messages_in,
    reports,
    send_source,
    speech,
    tones,
)
from tests.storage.test_s3 import aws_environment, moto_url, put  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("aws_environment")


class Consumer(LoggedProcess):
    """`python -m batch run --queue URL --workers 2` in the background, its log read as it comes."""

    def __init__(self, queue_url: str, out: str, model: str, *extra: str):
        command = [sys.executable, "-m", "batch", "run", "--queue", queue_url, "--out", out, "--model", model]
        super().__init__([*command, "--no-align", "--device", "cpu", "--threads", "2", "--workers", "2", *extra])

    def count(self, pattern: str) -> int:
        return sum(bool(re.search(pattern, line)) for line in list(self.lines))

    def wait_for(self, pattern: str, times: int = 1, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.count(pattern) < times:
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {times} lines matched {pattern!r}:\n" + "".join(self.lines)
            time.sleep(0.05)


def send(queue_url: str, bucket: str, keys: list[str], body: bytes) -> None:  # noqa: F811
    for key in keys:
        put(bucket, key, body)
        boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{bucket}/{key}"}))


def test_workers_outlive_a_quiet_queue_and_take_the_files_that_come_after_it(
    bucket: str,  # noqa: F811
    speech: bytes,  # noqa: F811
    tiny_en: str,
) -> None:
    """Three files, a quiet moment (the run finishes what it holds and waits), three more: the workers kept from
    the first pass transcribe them; the run ends by --queue-idle with every message deleted."""
    queue_url, _ = make_queue("pause-workers", visibility=30)
    first, then = [f"in/first{index}.mp3" for index in range(3)], [f"in/then{index}.mp3" for index in range(3)]
    send(queue_url, bucket, first, speech)
    # Idle counts only polls that found nothing, one after another, never the time spent on the files in work:
    # the three files come right after the pause, well within it.
    consumer = Consumer(queue_url, f"s3://{bucket}/out", tiny_en, "--queue-idle", "8")
    consumer.wait_for(r"waiting for more")  # the first pass is over: its files written, their messages deleted
    assert messages_in(queue_url) == (0, 0)
    send(queue_url, bucket, then, speech)
    code, log = consumer.finish()
    assert code == 0, log
    for key in first + then:
        assert manifest(bucket, key)["status"] == "succeeded", key
    assert messages_in(queue_url) == (0, 0)
    (run,) = reports(bucket)
    assert sorted(run["succeeded"]) == sorted(first + then)
    assert run["queue"]["received"] == run["queue"]["deleted"] == 6 and run["queue"]["returned"] == 0
    assert sorted(worker["restarts"] for worker in run["workers"]) == [0, 0]
    assert [worker["state"] for worker in run["workers"]] == ["exited", "exited"]
    assert consumer.count(r"worker cpu\d: starting on") == 2  # the same two workers did both passes


def test_a_file_that_kills_its_decoder_twice_fails_alone_and_its_neighbours_gain_no_receive(
    bucket: str,  # noqa: F811
    speech: bytes,  # noqa: F811
    ten_minutes: Path,  # noqa: F811
    tmp_path: Path,
    tiny_en: str,
) -> None:
    """A decode that dies (kill -9) takes down its child process, not the consumer: the file is decoded once more,
    dies again and fails alone, with its manifest; its message goes back and, not tried again, on to the dead-letter
    queue; the consumer goes on, so the messages beside it are received once and done."""
    # A released message comes back after at most the visibility timeout: 3 s, within --queue-idle 5.
    queue_url, dead_letters = make_queue("decoder-deaths", visibility=3, dead_letters_after=2)
    hour = joined(ten_minutes, 6, tmp_path / "hour.webm", piped=True)
    size = hour.stat().st_size
    send(queue_url, bucket, ["in/a.mp3"], speech)
    send(queue_url, bucket, ["in/b-hour.webm"], hour.read_bytes())
    send(queue_url, bucket, ["in/c.mp3"], speech)
    command = [sys.executable, "-m", "batch", "run", "--queue", queue_url, "--out", f"s3://{bucket}/out"]
    command += ["--model", tiny_en, "--no-align", "--device", "cpu", "--threads", "2", "--queue-idle", "5"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    while len(killed) < 2:  # the download is spooled to a file with no name: its decoder is known by its size
        assert process.poll() is None, process.communicate()[1]
        for pid in decoders_holding(lambda fd: fd.stat().st_size == size):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.01)  # a look at /proc a hundred times a second: the hour takes a second or more to decode
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    doomed = manifest(bucket, "in/b-hour.webm")
    assert doomed["status"] == "failed" and doomed["error"]["type"] == "DecoderDied", doomed
    for key in ("in/a.mp3", "in/c.mp3"):
        done = manifest(bucket, key)
        assert done["status"] == "succeeded" and done["receive_count"] == 1, done
    assert stderr.count("took down or hung what worked on it before: not tried again") == 1  # its second receive
    (run,) = reports(bucket)
    assert [failed["key"] for failed in run["failed"]] == ["in/b-hour.webm"]  # decoded on its first receive only
    assert run["queue"]["received"] == 4 and run["queue"]["deleted"] == 2 and run["queue"]["returned"] == 2
    assert messages_in(queue_url) == (0, 0)
    assert dead_letters is not None and messages_in(dead_letters)[0] == 1  # the redrive policy took it


def test_a_file_that_loses_the_cuda_context_twice_is_poison_its_neighbours_are_received_once(
    bucket: str,  # noqa: F811
    tones: dict[float, bytes],  # noqa: F811
) -> None:
    """A file whose batch loses the CUDA context in every worker (PyTorch's sticky error, through the pipeline's
    guard) fails alone (WorkerDied) as a file that kills its worker twice does: its message goes back, is not tried
    again, and goes to the dead-letter queue; the run goes on and the messages beside it are received once, done."""
    queue_url, dead_letters = make_queue("context-lost", visibility=2, dead_letters_after=2)
    for key in ("in/a.wav", "in/b-lost.wav", "in/c.wav"):
        put(bucket, key, tones[1.0])
        send_source(queue_url, f"s3://{bucket}/{key}")
    settings = {"queue": queue_url, "out": f"s3://{bucket}/out", "device": "cpu", "queue_idle": 5}
    loaded = load_settings(settings, environ={})
    report = Job(loaded, environ={}, pipeline=fake_workers(loaded, [{"FAKE_CONTEXT_LOST": "lost"}])).run()
    assert report.exit_code == 1, report.summary()
    doomed = manifest(bucket, "in/b-lost.wav")
    assert doomed["status"] == "failed" and doomed["error"]["type"] == "WorkerDied", doomed
    assert doomed["error"]["message"].count("the CUDA context is lost: CUDA error: an illegal memory access") == 2
    for key in ("in/a.wav", "in/c.wav"):
        done = manifest(bucket, key)
        assert done["status"] == "succeeded" and done["receive_count"] == 1, done
    assert [failed.key for failed in report.failed] == ["in/b-lost.wav"]  # tried on its first receive only
    assert report.queue is not None and report.queue.received == 4 and report.queue.deleted == 2
    assert messages_in(queue_url) == (0, 0)
    assert dead_letters is not None and messages_in(dead_letters)[0] == 1  # the redrive policy took it
