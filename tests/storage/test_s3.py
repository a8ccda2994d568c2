"""S3 sources and destinations against a real S3 HTTP server (moto's server mode on 127.0.0.1) with real boto3."""

from __future__ import annotations

import contextlib
import errno
import http.client
import http.server
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote

import boto3
import pytest
from moto.server import ThreadedMotoServer

from batch.common.errors import is_file_problem
from batch.storage import open_job_stores, open_store
from batch.storage.s3 import make_client
from tests.cli.test_status import manifest_document
from tests.conftest import ENGLISH, speak


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket(moto_url: str, request: pytest.FixtureRequest) -> str:
    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak(ENGLISH, tmp_path_factory.mktemp("speech") / "memo.mp3").read_bytes()


def put(bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def keys_in(bucket: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_listing_is_paginated_and_streamed(bucket: str) -> None:
    client = make_client()
    for index in range(1205):
        client.put_object(Bucket=bucket, Key=f"in/calls/{index:05d}.wav", Body=b"x")
    client.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="in/.hidden.wav", Body=b"x")
    calls = []
    client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))
    listing = open_store(f"s3://{bucket}/in", client=client).list()
    first = next(listing)
    assert first.key == "calls/00000.wav" and len(calls) == 1  # work can start after one page
    rest = [item.key for item in listing]
    assert len(calls) == 2 and len(rest) == 1204 and rest == sorted(rest)
    assert first.size == 1 and first.version  # the ETag


def test_list_names_and_dest_inside_source_on_s3(bucket: str) -> None:
    for key in (
        "in/a.mp3",
        "in/a.mp3.manifest.json",
        "in/.a.mp3.manifest.json",
        "in/_runs/r1.json",
        "in/_runs/old/r0.json",
        "in/_runsx.json",
        "in/out/b.mp3",
        "in/out/b.mp3.manifest.json",
        "other/c.mp3",
    ):
        put(bucket, key, b"x")
    store = open_store(f"s3://{bucket}/in/")
    assert list(store.list_names(suffix=".manifest.json")) == ["a.mp3.manifest.json", "out/b.mp3.manifest.json"]
    assert list(store.list_names("_runs", ".json")) == ["_runs/old/r0.json", "_runs/r1.json"]
    source, dest = open_job_stores(
        f"s3://{bucket}/in", f"s3://{bucket}/in/out", endpoint_url=None, spool_dir=None, max_input_bytes=None
    )
    assert [item.key for item in source.list()] == ["a.mp3"]  # DEST inside SOURCE is never listed
    assert list(dest.list_names()) == ["b.mp3", "b.mp3.manifest.json"]
    dest.check_writable()
    assert keys_in(bucket, "in/out/") == ["in/out/b.mp3", "in/out/b.mp3.manifest.json"]  # the probe is gone


def test_a_name_past_s3s_key_limit_is_refused_as_a_path_too_long(bucket: str) -> None:
    """Issue 34 #11: the skip check takes ENAMETOOLONG for the one file's path blocked, on S3 as in a folder."""
    dest = open_store(f"s3://{bucket}/" + "p" * 1000)
    for attempt in (
        lambda: dest.read_bytes("x" * 20 + ".manifest.json"),
        lambda: dest.write_bytes("x" * 20 + ".json", b"{}"),
        lambda: dest.exists("x" * 20 + ".json"),
    ):
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.ENAMETOOLONG and "1024 bytes of an S3 key" in str(raised.value)
    dest.write_bytes("x" * 18 + ".json", b"{}")  # 1024 bytes in all: taken
    assert keys_in(bucket) == ["p" * 1000 + "/" + "x" * 18 + ".json"]


def test_a_name_that_is_not_utf8_is_refused_as_a_name_dest_cannot_hold(bucket: str) -> None:
    """A name S3 cannot hold is one file's path blocked (EILSEQ, as a utf8only file system says), never an
    encoding error taken for DEST unreadable: that left the file for the next run, every run (exit 3)."""
    from batch.common.errors import DestPathBlocked, is_path_blocked

    dest = open_store(f"s3://{bucket}/out")
    with pytest.raises(OSError) as raised:
        dest.read_bytes(os.fsdecode(b"\xff.wav.manifest.json"))
    assert raised.value.errno == errno.EILSEQ and is_path_blocked(raised.value)
    assert "UTF-8" in str(DestPathBlocked(os.fsdecode(b"\xff.wav.manifest.json"), raised.value))


def test_s3_to_local_with_hostile_keys_never_writes_outside_dest(
    cli, bucket: str, speech: bytes, tmp_path: Path, tiny_en: str
) -> None:
    # `%2E%2E/x.mp3` is a key of its own, not `../x.mp3` respelled: the two never share their outputs.
    hostile = ["../x.mp3", "a//b.mp3", "/lead.mp3", "ü ñ/é 1+&=%.mp3", "%2E%2E/x.mp3"]
    names = ["%2E%2E/x.mp3", "a/%2F/b.mp3", "%2F/lead.mp3", "ü ñ/é 1+&=%25.mp3", "%252E%252E/x.mp3"]
    for key in hostile:
        put(bucket, "in/" + key, speech)
    out = tmp_path / "dest" / "out"
    result = cli("run", f"s3://{bucket}/in", "--out", out, "--model", tiny_en, "--no-align")
    assert result.exit_code == 0, result.stderr
    written = [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    for key, name in zip(hostile, names, strict=True):
        manifest = json.loads((out / f"{name}.manifest.json").read_text())
        assert manifest["status"] == "succeeded" and manifest["input"]["key"] == key
        assert manifest["input"]["fingerprint"].startswith("etag:")
        assert "meeting" in json.loads((out / f"{name}.json").read_text())["segments"][0]["text"].lower()
    rerun = cli("run", f"s3://{bucket}/in", "--out", out, "--model", tiny_en, "--no-align")
    assert "0 succeeded, 5 skipped" in rerun.stderr  # no key redoes another's outputs

    to_s3 = cli("run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out", "--model", tiny_en, "--no-align")
    assert to_s3.exit_code == 0, to_s3.stderr
    stored = keys_in(bucket, "")
    outside = [k for k in stored if not k.startswith(("in/", "out/"))]
    written = [k for k in stored if k.startswith("out/")]
    assert not outside and not [k for k in written if "/../" in k or "//" in k or "/./" in k]
    for name in names:
        assert f"out/{name}.manifest.json" in stored


def test_local_to_s3_then_s3_to_s3_with_reruns(cli, bucket: str, speech: bytes, tmp_path: Path, tiny_en: str) -> None:
    source = tmp_path / "in"
    for key in ("a/one.mp3", "b/two words.mp3"):
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(speech)
    args = ["--model", tiny_en, "--no-align", "--formats", "srt"]
    first = cli("run", source, "--out", f"s3://{bucket}/local-out", *args)
    assert first.exit_code == 0, first.stderr
    stored = keys_in(bucket, "local-out/")
    for key in ("a/one.mp3", "b/two words.mp3"):
        assert {f"local-out/{key}.json", f"local-out/{key}.srt", f"local-out/{key}.manifest.json"} <= set(stored)
    assert any(k.startswith("local-out/_runs/") for k in stored)
    again = cli("run", source, "--out", f"s3://{bucket}/local-out", *args)
    assert "0 succeeded, 2 skipped" in again.stderr and "models loaded" not in again.stderr

    for key in ("calls/x.mp3", "calls/y.mp3"):
        put(bucket, "in/" + key, speech)
    s3_to_s3 = cli("run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/in/out", *args)  # DEST inside SOURCE
    assert s3_to_s3.exit_code == 0, s3_to_s3.stderr
    assert "2 succeeded" in s3_to_s3.stderr
    rerun = cli("run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/in/out", *args)
    assert "0 succeeded, 2 skipped, 0 failed" in rerun.stderr
    put(bucket, "in/calls/y.mp3", speech + b"\0" * 10)  # a changed object (new ETag) is redone
    changed = cli("run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/in/out", *args)
    assert "1 succeeded, 1 skipped" in changed.stderr


def test_a_local_file_name_that_is_not_utf8_is_transcribed_into_s3_under_an_escaped_name(
    cli, bucket: str, speech: bytes, tmp_path: Path, tiny_en: str
) -> None:
    """S3 keys must be UTF-8: a file named with byte 0xFF gets outputs named with `%FF` (a name that really holds
    `%FF` gets `%25FF`), its manifest keeps the real name, and reruns, claims and status find it there."""
    source = tmp_path / "in"
    source.mkdir()
    raw_name, literal_name = b"bytes-\xff-latin1.mp3", "bytes-%FF-latin1.mp3"
    with open(os.fsencode(source) + b"/" + raw_name, "wb") as made:  # a bytes path: the name's bytes exactly
        made.write(speech)
    (source / literal_name).write_bytes(speech)
    key = os.fsdecode(raw_name)
    args = ["--model", tiny_en, "--no-align", "--formats", "srt", "--claim"]
    first = cli("run", source, "--out", f"s3://{bucket}/out", *args)
    assert first.exit_code == 0, first.stderr
    assert "2 succeeded, 0 skipped, 0 failed" in first.stderr
    stored = set(keys_in(bucket, "out/"))
    for base in ("bytes-%FF-latin1.mp3", "bytes-%25FF-latin1.mp3"):
        assert {f"out/{base}.json", f"out/{base}.srt", f"out/{base}.manifest.json"} <= stored
    assert not any(name.startswith("out/_claims/") for name in stored)  # each claim was let go, under its name
    manifest = boto3.client("s3").get_object(Bucket=bucket, Key="out/bytes-%FF-latin1.mp3.manifest.json")
    raw = manifest["Body"].read()
    assert b'"bytes-\\udcff-latin1.mp3"' in raw and json.loads(raw)["input"]["key"] == key
    again = cli("run", source, "--out", f"s3://{bucket}/out", *args)
    assert again.exit_code == 0 and "0 succeeded, 2 skipped, 0 failed" in again.stderr, again.stderr
    status = cli("status", f"s3://{bucket}/out", "--json")
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["succeeded"] == 2


def test_large_outputs_upload_in_parts(bucket: str) -> None:
    dest = open_store(f"s3://{bucket}/out")
    payload = os.urandom(9 * 1024 * 1024)
    dest.write_bytes("big.json", payload)
    head = boto3.client("s3").head_object(Bucket=bucket, Key="out/big.json")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    assert dest.read_bytes("big.json") == payload and dest.read_bytes("missing.json") is None
    assert dest.exists("big.json") and not dest.exists("missing.json")


def test_download_cap_fails_the_file_clearly(cli, bucket: str, speech: bytes, tmp_path: Path, tiny_en: str) -> None:
    put(bucket, "in/memo.mp3", speech)
    out = tmp_path / "out"
    result = cli("run", f"s3://{bucket}/in", "--out", out, "--model", tiny_en, "--no-align", "--max-input-size", "1KiB")
    assert result.exit_code == 1
    error = json.loads((out / "memo.mp3.manifest.json").read_text())["error"]
    assert "over the download cap of 1,024 bytes" in error["message"]


def test_unreachable_endpoint_is_an_environment_error_before_any_model(
    cli, tmp_path: Path, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    source = tmp_path / "in"
    source.mkdir()
    result = cli(
        "run", source, "--out", "s3://nowhere/out", "--model", tiny_en, "--s3-endpoint-url", "http://127.0.0.1:9"
    )
    assert result.exit_code == 3
    assert "DEST s3://nowhere/out is not writable" in result.stderr
    assert "models loaded" not in result.stderr and "testing-secret-value" not in result.stderr


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards to the S3 server, but answers 503 SlowDown or drops the connection on some requests."""

    def __init__(self, upstream: str, every: int):
        self.upstream = upstream.removeprefix("http://")
        self.every, self.count, self.faults, self.lock = every, 0, 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), FlakyHandler)

    def fault_now(self) -> int:
        with self.lock:
            self.count += 1
            if self.count % self.every:
                return 0
            self.faults += 1
            return 1 + self.faults % 2  # alternate: 1 = 503, 2 = drop


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = self.server.fault_now()
        if fault == 2:
            self.close_connection = True
            self.connection.close()
            return
        if fault == 1:
            payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
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


def test_transient_faults_are_ridden_out_with_nothing_lost(
    cli, bucket: str, speech: bytes, moto_url: str, tiny_en: str
) -> None:
    for index in range(3):
        put(bucket, f"in/call{index}.mp3", speech)
    proxy = FlakyProxy(moto_url, every=4)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        result = cli(
            "run",
            f"s3://{bucket}/in",
            "--out",
            f"s3://{bucket}/out",
            "--model",
            tiny_en,
            "--no-align",
            "--formats",
            "srt",
            "--s3-endpoint-url",
            f"http://127.0.0.1:{proxy.server_port}",
        )
    finally:
        proxy.shutdown()
    assert result.exit_code == 0, result.stderr
    assert proxy.faults >= 3
    stored = set(keys_in(bucket, "out/"))
    for index in range(3):
        assert {f"out/call{index}.mp3.json", f"out/call{index}.mp3.srt", f"out/call{index}.mp3.manifest.json"} <= stored
        manifest = json.loads(
            boto3.client("s3").get_object(Bucket=bucket, Key=f"out/call{index}.mp3.manifest.json")["Body"].read()
        )
        assert manifest["status"] == "succeeded"


class FaultProxy(FlakyProxy):
    """Forwards to the S3 server, but answers 503 SlowDown to the requests a rule picks: each rule is
    (method, a test of the unquoted path and query, how many times: None for every time)."""

    def __init__(self, upstream: str, rules: list[tuple[str, Callable[[str], bool], int | None]]):
        super().__init__(upstream, every=1)
        self.RequestHandlerClass = FaultHandler
        self.rules, self.used = rules, [0] * len(rules)

    def fault_now(self) -> int:
        return 0  # FlakyHandler's own faults: none

    def fault_for(self, method: str, path: str) -> bool:
        with self.lock:
            for index, (wanted, matches, times) in enumerate(self.rules):
                if method == wanted and matches(path) and (times is None or self.used[index] < times):
                    self.used[index] += 1
                    self.faults += 1
                    return True
        return False


class FaultHandler(FlakyHandler):
    def _forward(self) -> None:
        if not self.server.fault_for(self.command, unquote(self.path)):
            super()._forward()
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@contextlib.contextmanager
def fault_proxy(moto_url: str, rules: list[tuple[str, Callable[[str], bool], int | None]]) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_url, rules)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.shutdown()


def latest_report(bucket: str, prefix: str = "out/") -> dict:
    client = boto3.client("s3")
    reports = [
        json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in keys_in(bucket, prefix + "_runs/")
        if key.endswith(".json")  # each beside its page, RUN_ID.html
    ]
    return max(reports, key=lambda report: report["started_at"])


def test_a_manifest_unreadable_after_retries_leaves_its_file_for_the_next_run_and_the_run_goes_on(
    cli, bucket: str, speech: bytes, moto_url: str, tiny_en: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 34 #13: the skip check's manifest GET is retried by botocore (call0's fault is ridden out); one that
    fails every time (call1's) leaves that file, neither done nor failed, and the others are done; exit 3."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # botocore's standard mode, honoured: 3 attempts, short backoff
    for index in range(3):
        put(bucket, f"in/call{index}.mp3", speech)
    rules: list[tuple[str, Callable[[str], bool], int | None]] = [
        ("GET", lambda path: path.endswith("/out/call0.mp3.manifest.json"), 2),
        ("GET", lambda path: path.endswith("/out/call1.mp3.manifest.json"), None),
    ]
    options = ("--out", f"s3://{bucket}/out", "--model", tiny_en, "--no-align")
    metrics = tmp_path / "run.prom"
    with fault_proxy(moto_url, rules) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.server_port}"
        result = cli("run", f"s3://{bucket}/in", *options, "--s3-endpoint-url", endpoint, "--metrics-textfile", metrics)
    assert proxy.used[0] == 2 and proxy.used[1] == 3  # every attempt botocore made for call1
    assert result.exit_code == 3, result.stderr
    assert "left for the next run call1.mp3" in result.stderr and "unexpected" not in result.stderr
    report = latest_report(bucket)
    assert sorted(report["succeeded"]) == ["call0.mp3", "call2.mp3"] and not report["failed"]
    [left] = report["left_for_next_run"]
    assert left["key"] == "call1.mp3" and "SlowDown" in left["error"]["message"] and report["exit_code"] == 3
    assert "out/call1.mp3.manifest.json" not in keys_in(bucket, "out/")
    assert 'whisperx_batch_files_total{error_type="ClientError",outcome="left_for_next_run"} 1.0' in metrics.read_text()

    rerun = cli("run", f"s3://{bucket}/in", *options)
    assert rerun.exit_code == 0, rerun.stderr
    again = latest_report(bucket)
    assert again["succeeded"] == ["call1.mp3"] and sorted(again["skipped"]) == ["call0.mp3", "call2.mp3"]


def test_a_dest_whose_manifests_cannot_be_read_stops_the_run_after_three_files(
    cli, bucket: str, moto_url: str, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for index in range(5):
        put(bucket, f"in/call{index}.mp3", b"not even audio")
    rules: list[tuple[str, Callable[[str], bool], int | None]] = [
        ("GET", lambda path: path.endswith(".manifest.json"), None)
    ]
    with fault_proxy(moto_url, rules) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.server_port}"
        result = cli(
            "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out", "--model", tiny_en, "--s3-endpoint-url", endpoint
        )
    assert result.exit_code == 3, result.stderr
    assert "the manifests of the last 3 files could not be read in DEST" in result.stderr
    report = latest_report(bucket)
    assert report["exit_code"] == 3 and not report["succeeded"] and not report["failed"]
    assert [left["key"] for left in report["left_for_next_run"]] == ["call0.mp3", "call1.mp3"]
    assert "models loaded" not in result.stderr


def test_a_listing_page_that_fails_after_retries_ends_the_run_with_exit_3_and_says_why(
    cli, bucket: str, moto_url: str, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    put(bucket, "in/call0.mp3", b"x")
    rules: list[tuple[str, Callable[[str], bool], int | None]] = [
        # the listing's pages, not the start-up probe that lists one key
        ("GET", lambda path: "list-type=2" in path and "prefix=in/" in path and "max-keys=1" not in path, None)
    ]
    with fault_proxy(moto_url, rules) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.server_port}"
        result = cli(
            "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out", "--model", tiny_en, "--s3-endpoint-url", endpoint
        )
    assert proxy.used == [2]  # botocore tried twice
    assert result.exit_code == 3, result.stderr
    assert f"s3://{bucket}/in/ could not be listed, after retries: SlowDown" in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    report = latest_report(bucket)
    assert report["exit_code"] == 3 and "could not be listed" in report["error"]["message"]


def test_spool_is_cleaned_after_each_download(bucket: str, speech: bytes, tmp_path: Path) -> None:
    put(bucket, "in/memo.mp3", speech)
    spool = tmp_path / "spool"
    spool.mkdir()
    source = open_store(f"s3://{bucket}/in", spool_dir=str(spool))
    item = next(source.list())
    with source.open(item.key, item.size) as stream:
        assert stream.read() == speech
    assert not list(spool.iterdir())
    shutil.rmtree(spool)


@pytest.mark.parametrize("size", [1000, 9 * 1024 * 1024], ids=["one-get", "ranged-gets"])
def test_an_object_replaced_after_its_listing_is_not_read_as_the_version_listed(bucket: str, size: int) -> None:
    """Listed as one version, replaced before its download: the download asks for the version listed (If-Match)
    and is refused, so the new bytes are never recorded under the old version's ETag; the version now there reads."""
    from batch.storage.s3_reads import ObjectChanged

    put(bucket, "in/memo.wav", b"a" * size)
    source = open_store(f"s3://{bucket}/in")
    listed = next(source.list())
    put(bucket, "in/memo.wav", b"b" * size)
    with pytest.raises(ObjectChanged, match="replaced after it was listed"):
        source.open(listed.key, listed.size, listed.version)
    assert not is_file_problem(ObjectChanged("x"))  # no failed manifest: a later run does the new version
    current = next(source.list())
    with source.open(current.key, current.size, current.version) as stream:
        assert stream.read(1) == b"b"


def test_two_workers_with_claims_do_every_file_exactly_once(
    bucket: str, speech: bytes, moto_url: str, tiny_en: str
) -> None:
    import subprocess
    import sys

    for index in range(6):
        put(bucket, f"in/call{index}.mp3", speech)
    command = [
        sys.executable,
        "-m",
        "batch",
        "run",
        f"s3://{bucket}/in",
        "--out",
        f"s3://{bucket}/out",
        "--model",
        tiny_en,
        "--no-align",
        "--claim",
        "--prefetch",
        "1",
        "--threads",
        "1",
    ]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [worker.communicate(timeout=600)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    client = boto3.client("s3")
    reports = [
        json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read())
        for k in keys_in(bucket, "out/_runs/")
        if k.endswith(".json")
    ]
    done = [key for report in reports for key in report["succeeded"]]
    assert sorted(done) == [f"call{index}.mp3" for index in range(6)]  # each file once, by one worker
    assert sum(r["counts"]["claimed_elsewhere"] + r["counts"]["skipped"] for r in reports) == 6
    assert not keys_in(bucket, "out/_claims/")  # released after each manifest


class ServerClock:
    """A fake clock for S3 itself, at the HTTP seam: every response through `client` reads as if S3's clock were
    `offset` seconds on (its Date header), and an object as if written at S3's time then (its Last-Modified is
    moved on by the offset of the moment its ETag was written)."""

    def __init__(self, client: object):
        self.offset = 0.0
        self._written: dict[str, float] = {}  # ETag -> the offset when it was written
        client.meta.events.register("before-parse.s3.*", self._shift)  # type: ignore[attr-defined]

    def _shift(self, response_dict: dict, operation_model: object, **_: object) -> None:
        headers = response_dict["headers"]
        if getattr(operation_model, "name", "") in ("PutObject", "CopyObject") and headers.get("ETag"):
            self._written[headers["ETag"]] = self.offset
        for name, offset in (("Date", self.offset), ("Last-Modified", self._written.get(headers.get("ETag", "")))):
            if headers.get(name) and offset:
                moved = parsedate_to_datetime(headers[name]) + timedelta(seconds=offset)
                headers[name] = format_datetime(moved, usegmt=True)


def test_expired_claims_are_taken_over_by_exactly_one_worker(bucket: str) -> None:
    from batch.run.work.claims import Claims

    client = make_client()
    clock = ServerClock(client)
    dest = open_store(f"s3://{bucket}/out", client=client)
    first, second, third = (Claims(dest, run, ttl_seconds=60) for run in ("r1", "r2", "r3"))
    first.check()
    assert first.conditional_delete  # moto honours If-Match on DeleteObject, as AWS does
    lost = first.claim("a.wav")
    assert lost and not second.claim("a.wav")
    clock.offset += 62  # the first worker stalled: its claim expired (by S3's clock, to its whole second)
    stale = dest.read_with_version("_claims/a.wav.claim")
    taken = second.claim("a.wav")
    assert taken
    assert not dest.replace_if_version("_claims/a.wav.claim", b"{}", stale[1])  # a late taker loses
    assert first.renew("a.wav", lost) is None  # nor can the stalled owner renew it back
    first.release("a.wav", lost)  # the stalled worker finishes: the claim is the second's, and stays
    assert not third.claim("a.wav")
    clock.offset += 50
    renewed = second.renew("a.wav", taken)  # renewed while in work: not expired 62 s after it was taken
    assert renewed and renewed != taken
    clock.offset += 50
    assert not third.claim("a.wav")
    second.release("a.wav", renewed)
    assert third.claim("a.wav")


def test_an_s3_server_that_dies_mid_run_ends_it_with_exit_3_and_no_traceback(
    speech: bytes, tiny_en: str, tmp_path: Path
) -> None:
    """SOURCE local, DEST on an S3 server of its own that is stopped once the first file is written: the run
    stops (exit 3) with one line, what was written stays done, and nothing half-written is taken for done."""
    import subprocess
    import sys
    import time

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket="dying")
    for index in range(8):
        (tmp_path / "in" / f"call{index}.mp3").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"call{index}.mp3").write_bytes(speech)
    command = [
        sys.executable,
        "-m",
        "batch",
        "run",
        tmp_path / "in",
        "--out",
        "s3://dying/out",
        "--model",
        tiny_en,
        "--no-align",
        "--batch-size",
        "1",
        "--prefetch",
        "1",
        "--s3-endpoint-url",
        url,
    ]
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "AWS_MAX_ATTEMPTS": "2"}
    )
    try:
        deadline = time.monotonic() + 300
        while not any(key.endswith(".manifest.json") for key in _keys(client, "dying")):
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
            time.sleep(0.2)
        written = {key for key in _keys(client, "dying") if key.endswith(".manifest.json")}
    finally:
        server.stop()
    stdout, stderr = worker.communicate(timeout=300)
    assert worker.returncode == 3, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert "whisperx-batch: error: " in stderr and "testing-secret-value" not in stderr
    assert written  # at least the first file was done before the server went away


def _keys(client, bucket: str) -> list[str]:  # noqa: ANN001
    return [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_one_object_as_source_an_empty_prefix_and_pruned_reports(cli, bucket: str, speech: bytes, tiny_en: str) -> None:
    for key in ("in/calls/x.mp3", "in/calls/x.mp3.old.mp3", "in/calls/y.mp3"):
        put(bucket, key, speech)
    for index in range(3):
        run_id = f"20200101T00000{index}Z-aaaaaa"
        put(bucket, f"out/_runs/{run_id}.json", json.dumps({"run_id": run_id, "started_at": "2020"}).encode())
    args = ("--out", f"s3://{bucket}/out", "--model", tiny_en, "--device", "cpu", "--no-align")

    single = cli("run", f"s3://{bucket}/in/calls/x.mp3", *args, "--formats", "all")
    assert single.exit_code == 0, single.stderr
    written = {key for key in keys_in(bucket, "out/") if not key.startswith("out/_runs/")}
    formats = ("json", "srt", "vtt", "txt", "tsv", "turns.json", "manifest.json")
    assert written == {f"out/x.mp3.{ext}" for ext in formats}

    empty = cli("run", f"s3://{bucket}/in/none", *args)  # no such object: a prefix, with nothing under it
    assert empty.exit_code == 2 and "Traceback" not in empty.stderr
    assert empty.stderr.count(f"source: s3://{bucket}/in/none holds no files (is it mounted?)") == 1

    allowed = cli("run", f"s3://{bucket}/in/none", *args, "--allow-empty", "--keep-run-reports", "2")
    assert allowed.exit_code == 0, allowed.stderr
    reports = [key for key in keys_in(bucket, "out/_runs/") if key.endswith(".json")]
    assert len(reports) == 2 and not any(key.startswith("out/_runs/2020") for key in reports)
    pages = [key for key in keys_in(bucket, "out/_runs/") if key.endswith(".html")]  # each report's, pruned with it
    assert sorted(pages) == sorted(key.removesuffix(".json") + ".html" for key in reports)
    head = boto3.client("s3").head_object(Bucket=bucket, Key=pages[0])
    assert head["ContentType"].startswith("text/html")  # a static web server in front of the bucket shows it


class SlowProxy(FlakyProxy):
    """Forwards every request after a short wait, and counts how many were in flight at once."""

    def __init__(self, upstream: str, delay: float):
        super().__init__(upstream, every=1 << 30)
        self.delay, self.in_flight, self.most_in_flight = delay, 0, 0

    def fault_now(self) -> int:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        return 0


def test_status_reads_manifests_concurrently_in_a_stable_order(cli, bucket: str, moto_url: str) -> None:
    keys = [f"calls/{index:02d}.wav" for index in range(40)]
    for index, key in enumerate(keys):
        if index % 3:
            document = manifest_document(key, "failed", error={"type": "AudioDecodeError", "message": "empty file"})
        else:  # a succeeded manifest counts when its outputs are there
            document = manifest_document(key, "succeeded", outputs=[f"{key}.json"], audio_seconds=1.0)
            put(bucket, f"out/{key}.json", b"{}")
        put(bucket, f"out/{key}.manifest.json", json.dumps(document).encode())
    proxy = SlowProxy(moto_url, delay=0.05)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        env = {"WHISPERX_BATCH_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_port}"}
        result = cli("status", f"s3://{bucket}/out", "--json", env=env)
    finally:
        proxy.shutdown()
    assert result.exit_code == 1, result.stderr
    document = json.loads(result.stdout)
    failed = [key for index, key in enumerate(keys) if index % 3]
    assert (document["succeeded"], document["failed"]) == (40 - len(failed), len(failed))
    assert [failure["key"] for failure in document["failures"]] == failed  # listing order, whatever came back first
    assert proxy.most_in_flight >= 8


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.data


def test_a_queue_receive_that_fails_after_retries_ends_the_run_with_exit_3_and_says_why(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 34 #13, SQS: the receive is retried by botocore; past its retries the run stops, exit 3, saying so. The
    fault is injected at the real client's HTTP seam (botocore's before-send), the server never reached."""
    from botocore.awsrequest import AWSResponse

    from batch.run.job import Job
    from batch.settings.options import load_settings
    from tests.fakes import FakePipeline

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    url = boto3.client("sqs").create_queue(QueueName=bucket)["QueueUrl"]
    job = Job(
        load_settings({"queue": url, "out": f"s3://{bucket}/out", "device": "cpu", "queue_idle": 30}),
        environ={},
        pipeline=FakePipeline(),
    )
    attempts = []

    def internal_error(request: object, **_: object) -> AWSResponse:
        attempts.append(request)
        return AWSResponse(url, 500, {}, _Body(b'{"__type": "InternalError", "message": "We encountered an error"}'))

    job.queue.client.meta.events.register("before-send.sqs.ReceiveMessage", internal_error)
    report = job.run()
    assert len(attempts) == 2  # botocore's retries, honouring AWS_MAX_ATTEMPTS
    assert report.exit_code == 3 and report.error is not None
    assert f"queue {url} cannot be read, after retries" in report.error.message
