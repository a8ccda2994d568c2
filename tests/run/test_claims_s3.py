"""Claims that hold, with real worker processes against moto's real S3 server on 127.0.0.1: renewed while a file is
in work, given back on every exit (an abandoned run's too), and refused on a store that ignores If-None-Match."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import ENGLISH, speak
from tests.storage.test_s3 import ServerClock, aws_environment, keys_in, moto_url, put  # noqa: F401 - fixtures

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


def wait_for(
    condition: Callable[[], object], what: str, seconds: float = 120, process: subprocess.Popen | None = None
) -> Any:
    """Poll until `condition` gives something true (and return it), failing after `seconds` or once `process`
    has ended."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert process is None or process.poll() is None, f"the run ended before {what}"
        time.sleep(0.05)
    return found


def claim_versions(bucket: str, seen: set[str]) -> int:
    """How many versions of the claims now in DEST have been seen so far (each renewal writes a new one)."""
    s3 = boto3.client("s3")
    for key in keys_in(bucket, "out/_claims/"):
        with contextlib.suppress(ClientError):  # released since it was listed
            seen.add(s3.head_object(Bucket=bucket, Key=key)["ETag"] + key)
    return len(seen)


def reports(bucket: str) -> list[dict]:
    s3 = boto3.client("s3")
    return [
        json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in keys_in(bucket, "out/_runs/")
        if key.endswith(".json")
    ]


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
    claims = wait_for(lambda: len(keys_in(bucket, "out/_claims/")), "the first worker's claims", process=first)
    seen: set[str] = set()
    # Renewed every third of the TTL: once each claim has been written five times, it is older than the TTL.
    wait_for(lambda: claim_versions(bucket, seen) >= 5 * claims, "five versions of each claim", process=first)
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
        # No grace at all: the stop abandons the run at once, whichever stage its files are in (with a grace
        # period, whether a file outlasts it is a guess about the machine's speed).
        process = subprocess.Popen([*command, "--grace-seconds", "0"], stdout=subprocess.DEVNULL, stderr=stderr)
        # The models load as the first claimed file is handed over: from then this run holds claims.
        wait_for(lambda: "models loaded" in log.read_text(), "the models loaded", process=process)
        assert keys_in(bucket, "out/_claims/")
        process.send_signal(signal.SIGTERM)
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
    stripped: tuple[str, ...] = ("if-none-match", "if-match")  # the request headers left out

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        self._answer(*self._relay())

    def _relay(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """The request sent on to moto's server (less the stripped headers): its answer."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.stripped}
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        return response.status, response.getheaders(), data

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

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
    from batch.run.work.claims import Claims
    from batch.storage import open_store
    from batch.storage.s3 import make_client

    client = make_client()
    clock = ServerClock(client)
    dest = open_store(f"s3://{bucket}/out", client=client)
    first, second = (Claims(dest, run, ttl_seconds=60) for run in ("r1", "r2"))
    first.conditional_delete = second.conditional_delete = False
    stale = first.claim("a.wav")
    clock.offset += 62
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
    stripped = ()

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
        self._answer(*self._relay())

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def test_a_409_conditional_request_conflict_is_retried_not_taken_for_a_lost_claim(bucket: str, moto_url: str) -> None:  # noqa: F811
    from batch.run.work.claims import Claims
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


class StripIfMatch(StripConditions):
    """An S3-compatible store that honours If-None-Match but ignores If-Match (on writes and deletes)."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.RequestHandlerClass = StripIfMatchHandler


class StripIfMatchHandler(StripHandler):
    stripped = ("if-match",)


def test_claims_are_refused_on_a_store_that_ignores_if_match_on_writes(
    cli,
    bucket: str,
    moto_url: str,  # noqa: F811
    tiny_en: str,
) -> None:
    proxy = StripIfMatch(moto_url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    put(bucket, "in/call.mp3", b"any")
    try:
        result = cli(
            "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out", "--model", tiny_en, "--claim",
            "--s3-endpoint-url", f"http://127.0.0.1:{proxy.server_address[1]}",
        )  # fmt: skip
    finally:
        proxy.shutdown()
    assert result.exit_code == 2, result.stderr
    assert "does not honour If-Match on a write (a write on a stale version succeeded)" in result.stderr
    assert keys_in(bucket, "out/") == []  # nothing done, no probe left behind


class HoldRenewals(StripConditions):
    """In front of moto's server: the first PUT with If-Match (a claim's renewal) is held until `release` is set,
    before it reaches moto (`landed` False) or once moto has written it, its answer held (`landed` True), as a
    write that botocore retries for minutes would be."""

    def __init__(self, upstream: str, landed: bool):
        super().__init__(upstream)
        self.RequestHandlerClass = HoldHandler
        self.landed = landed
        self.held = threading.Event()
        self.release = threading.Event()


class HoldHandler(StripHandler):
    stripped = ()

    def _forward(self) -> None:
        server = self.server
        renewal = self.command == "PUT" and "If-Match" in self.headers and ".probe-" not in self.path
        renewal = renewal and not server.held.is_set()  # the first renewal (not the start-up probe's write)
        if renewal and not server.landed:
            server.held.set()
            server.release.wait()
        status, headers, data = self._relay()
        if renewal and server.landed:
            server.held.set()
            server.release.wait()
        self._answer(status, headers, data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.mark.parametrize("landed", [False, True], ids=["renewal-not-yet-written", "renewal-written-answer-late"])
def test_giving_claims_back_never_waits_behind_a_slow_renewal(bucket: str, moto_url: str, landed: bool) -> None:  # noqa: F811
    """A renewal stuck in flight must not hold the claims back past the grace period (a SIGKILL follows it)."""
    from batch.run.work.claims import Claims, HeldClaims
    from batch.storage import InputFile, open_store
    from batch.storage.s3 import make_client

    proxy = HoldRenewals(moto_url, landed)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        client = make_client(f"http://127.0.0.1:{proxy.server_address[1]}")
        held = HeldClaims(Claims(open_store(f"s3://{bucket}/out", client=client), "r1", 0.6), lambda item: True)
        assert held.take(InputFile("a.wav", 1, "v1"))
        assert proxy.held.wait(timeout=30), "no renewal came"
        giving = threading.Thread(target=held.give_back_all)
        giving.start()
        giving.join(timeout=10)
        assert not giving.is_alive(), "giving the claims back waited behind the renewal"
        assert keys_in(bucket, "out/_claims/") == []
        proxy.release.set()
        assert held._renewer is not None
        held._renewer.join(timeout=30)  # the renewal answered: it leaves nothing behind either
        assert keys_in(bucket, "out/_claims/") == []
    finally:
        proxy.release.set()
        proxy.shutdown()


def test_a_claim_expires_by_the_stores_clock_whatever_the_workers_clocks_say(bucket: str) -> None:
    """Workers whose clocks are an hour apart: a claim lives its writer's TTL by S3's clock, no more, no less."""
    from batch.run.work.claims import Claims
    from batch.storage import open_store
    from batch.storage.s3 import make_client

    client = make_client()
    clock = ServerClock(client)
    dest = open_store(f"s3://{bucket}/out", client=client)
    behind = Claims(dest, "r1", ttl_seconds=60, clock=lambda: time.time() - 3600)
    assert behind.claim("a.wav")
    assert Claims(dest, "r2", ttl_seconds=60).claim("a.wav") is None  # just made: r1's, whatever r2's clock says
    ahead = Claims(dest, "r3", ttl_seconds=60, clock=lambda: time.time() + 3600)
    assert ahead.claim("b.wav")
    taker = Claims(dest, "r4", ttl_seconds=600)
    clock.offset += 59
    assert taker.claim("b.wav") is None  # within r3's TTL by S3's clock
    clock.offset += 3
    assert taker.claim("b.wav")  # past it (r3's TTL, not the reader's), though r3's clock says 3600 s more


def test_a_stopped_worker_leaves_no_claim_though_a_renewal_hangs(
    bucket: str,
    moto_url: str,  # noqa: F811
    long_speech: bytes,
    tiny_en: str,
) -> None:
    """A real worker whose store stops answering its renewals, then SIGTERM: it gives its claims back and exits
    within its grace period, so the SIGKILL that follows (Kubernetes) finds nothing held."""
    for index in range(2):
        put(bucket, f"in/call{index}.mp3", long_speech)
    proxy = HoldRenewals(moto_url, landed=False)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        process = worker(bucket, tiny_en, "--claim-ttl", "3", "--grace-seconds", "2", "--s3-endpoint-url", endpoint)
        wait_for(proxy.held.is_set, "a renewal in flight", process=process)
        assert keys_in(bucket, "out/_claims/")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)  # the grace period (2 s), and exiting
        except subprocess.TimeoutExpired:
            process.kill()  # as Kubernetes would, at the end of its grace period
            process.wait()
            pytest.fail("the worker did not exit: it waited behind its renewal")
        assert keys_in(bucket, "out/_claims/") == [], process.stderr.read() if process.stderr else ""
    finally:
        proxy.release.set()
        proxy.shutdown()


class LoseFirstAnswer(StripConditions):
    """In front of moto's server: the first PUT carrying `header` reaches moto and is written, but its answer is
    lost (the connection closed without one), as on a network that drops a response; botocore then retries it."""

    def __init__(self, upstream: str, header: str):
        super().__init__(upstream)
        self.RequestHandlerClass = LoseFirstAnswerHandler
        self.header = header
        self.lost: list[str] = []


class LoseFirstAnswerHandler(StripHandler):
    stripped = ()

    def _forward(self) -> None:
        answer = self._relay()
        if self.command == "PUT" and self.server.header in self.headers and not self.server.lost:
            self.server.lost.append(self.path)
            self.close_connection = True
            return
        self._answer(*answer)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.mark.parametrize("header", ["If-None-Match", "If-Match"], ids=["claim", "renewal"])
def test_a_claim_write_whose_answer_was_lost_is_still_this_workers(bucket: str, moto_url: str, header: str) -> None:  # noqa: F811
    """A claim's create (or renewal) lands, its answer is lost, botocore's retry finds its own condition failed
    (412): the worker still holds the claim, learns its version, and gives it back at the end, never leaving a
    claim of its own behind to block the other workers for its TTL."""
    from batch.run.work.claims import Claims
    from batch.storage import open_store
    from batch.storage.s3 import make_client

    proxy = LoseFirstAnswer(moto_url, header)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        claims = Claims(
            open_store(f"s3://{bucket}/out", client=make_client(f"http://127.0.0.1:{proxy.server_address[1]}")),
            "r1",
            60,
        )
        version = claims.claim("a.wav")
        assert version is not None
        renewed = claims.renew("a.wav", version)
        assert proxy.lost == [f"/{bucket}/out/_claims/a.wav.claim"]
        assert renewed is not None
        assert claims.release("a.wav", renewed)
    finally:
        proxy.shutdown()
    assert keys_in(bucket, "out/_claims/") == []
