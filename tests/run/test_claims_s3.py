"""Claims that hold, with real worker processes against moto's real S3 server on 127.0.0.1: renewed while a file is
in work, given back on every exit (an abandoned run's too), and refused on a store that ignores If-None-Match."""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import ENGLISH, speak
from tests.storage.test_s3 import aws_environment, keys_in, moto_url, put  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("aws_environment")


@pytest.fixture
def bucket(moto_url: str, request: pytest.FixtureRequest) -> str:  # noqa: F811
    name = "c-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(" ".join([ENGLISH] * 4), tmp_path_factory.mktemp("speech") / "long.mp3").read_bytes()


def worker(bucket: str, model: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "batch", "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out"]
    command += ["--model", model, "--no-align", "--claim", "--threads", "1", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def reports(bucket: str) -> list[dict]:
    s3 = boto3.client("s3")
    return [json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys_in(bucket, "out/_runs/")]


def test_claims_shorter_than_a_file_are_renewed_so_no_file_is_done_twice(
    bucket: str, tiny_en: str, tmp_path: Path
) -> None:
    # A 1 s TTL and files that take seconds each: the second worker starts once the first's claims are older than
    # the TTL, so without renewal it would take over the file the first is working on and those it holds ahead,
    # and do them again. Minutes of audio per file keep the first busy while the second loads its models.
    slow = speak(" ".join([ENGLISH] * 16), tmp_path / "slow.mp3").read_bytes()
    keys = [f"call{index:02d}.mp3" for index in range(12)]
    for key in keys:
        put(bucket, f"in/{key}", slow)
    first = worker(bucket, tiny_en, "--claim-ttl", "1", "--prefetch", "2")
    deadline = time.monotonic() + 120
    while not keys_in(bucket, "out/_claims/"):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    time.sleep(1.5)  # the first's claims are past their first TTL
    workers = [first, worker(bucket, tiny_en, "--claim-ttl", "1", "--prefetch", "2")]
    outputs = [process.communicate(timeout=600)[1] for process in workers]
    assert [process.returncode for process in workers] == [0, 0], outputs
    runs = reports(bucket)
    done = [key for report in runs for key in report["succeeded"]]
    assert sorted(done) == keys  # each file once, by one worker
    assert all(report["succeeded"] for report in runs), "the second worker did none: the test proves nothing"
    assert not any("took over" in output or "taken over" in output for output in outputs), outputs
    assert not keys_in(bucket, "out/_claims/")


def test_an_abandoned_run_gives_its_claims_back(bucket: str, long_speech: bytes, tiny_en: str, tmp_path: Path) -> None:
    very_long = speak(" ".join([ENGLISH] * 60), tmp_path / "very-long.mp3").read_bytes()  # seconds of ASR
    for index in range(4):
        put(bucket, f"in/call{index}.mp3", very_long)
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        command = [sys.executable, "-m", "batch", "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out"]
        command += ["--model", tiny_en, "--no-align", "--claim", "--threads", "1", "--prefetch", "2"]
        process = subprocess.Popen([*command, "--grace-seconds", "0.5"], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while "models loaded" not in log.read_text():  # the first file in the models, two claimed ahead
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)  # the file is in the models (minutes of audio: seconds of work)
        process.send_signal(signal.SIGTERM)  # the file outlasts the grace period: the run is abandoned
        process.wait(timeout=120)
    assert process.returncode == 143, log.read_text()
    assert "abandoning" in log.read_text()
    assert not keys_in(bucket, "out/_claims/")  # for the next worker now, not in claim_ttl (7200 s)
    assert not [key for key in keys_in(bucket, "out/") if key.endswith(".manifest.json")]


class StripConditions(http.server.ThreadingHTTPServer):
    """An S3-compatible store that ignores conditional headers (older MinIO, Ceph): a proxy in front of moto's
    server that drops If-None-Match and If-Match from every request."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        super().__init__(("127.0.0.1", 0), StripHandler)


class StripHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("if-none-match", "if-match")}
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.fixture
def careless_store(moto_url: str) -> Iterator[str]:  # noqa: F811
    proxy = StripConditions(moto_url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}"
    proxy.shutdown()


def test_claims_are_refused_on_a_store_that_ignores_if_none_match(
    cli, bucket: str, careless_store: str, tiny_en: str
) -> None:
    put(bucket, "in/call.mp3", b"any")
    result = cli(
        "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out", "--model", tiny_en, "--claim",
        "--s3-endpoint-url", careless_store,
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert f"DEST s3://{bucket}/out " in result.stderr and "If-None-Match" in result.stderr
    assert keys_in(bucket, "out/") == []  # nothing done, no probe left behind


def test_claims_are_released_by_their_owner_where_a_store_ignores_if_match_on_delete(bucket: str) -> None:
    """The fallback (read, compare the owner, delete), on moto with conditional deletes taken as unsupported."""
    from batch.run.claims import Claims
    from batch.storage import open_store

    now = [1000.0]
    dest = open_store(f"s3://{bucket}/out")
    first, second = (Claims(dest, run, ttl_seconds=60, clock=lambda: now[0]) for run in ("r1", "r2"))
    first.conditional_delete = second.conditional_delete = False
    stale = first.claim("a.wav")
    now[0] += 61
    assert stale and second.claim("a.wav")
    first.release("a.wav", stale)  # the owner is r2 now: kept
    assert keys_in(bucket, "out/_claims/") == ["out/_claims/a.wav.claim"]
    second.release("a.wav", "any version")
    assert keys_in(bucket, "out/_claims/") == []


class ConflictOnce(StripConditions):
    """Answers the first two conditional PUTs of each key 409 ConditionalRequestConflict, as S3 does while another
    conditional write to that key is in flight; forwards everything else (conditions kept) to moto's server."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.RequestHandlerClass = ConflictHandler
        self.conflicted: list[str] = []


class ConflictHandler(StripHandler):
    def _forward(self) -> None:
        conditional = self.command == "PUT" and "If-None-Match" in self.headers
        if conditional and self.server.conflicted.count(self.path) < 2:
            self.server.conflicted.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            payload = b"<Error><Code>ConditionalRequestConflict</Code><Message>in flight</Message></Error>"
            self.send_response(409)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self._pass_on()

    def _pass_on(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def test_a_409_conditional_request_conflict_is_retried_not_taken_for_a_lost_claim(bucket: str, moto_url: str) -> None:  # noqa: F811
    from batch.run.claims import Claims
    from batch.storage import open_store
    from batch.storage.s3 import make_client

    proxy = ConflictOnce(moto_url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        client = make_client(f"http://127.0.0.1:{proxy.server_address[1]}")
        claims = Claims(open_store(f"s3://{bucket}/out", client=client), "r1", ttl_seconds=60)
        assert claims.claim("a.wav")  # 409 twice, then won on a retry
        assert proxy.conflicted == [f"/{bucket}/out/_claims/a.wav.claim"] * 2
        assert not Claims(open_store(f"s3://{bucket}/out"), "r2", ttl_seconds=60).claim("a.wav")  # and held
    finally:
        proxy.shutdown()
