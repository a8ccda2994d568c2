"""A fault-injecting HTTP proxy in front of moto's server: S3 and SQS requests pass through it, and a schedule of
rules answers some of them with the faults a real endpoint has (5xx, throttling, access denied, a connection held
then dropped, a response lost after the request took effect).

Every request is told apart by service and operation, by the role of the place it touches (SOURCE, DEST and the
parts of DEST, the queue) and by the run that made it (boto3's User-Agent carries `app/<run tag>`, from
`AWS_SDK_UA_APP_ID`). The proxy also watches the queue: it remembers which message each receipt handle belongs to,
and before a DeleteMessage is let through it asks its `on_delete` hook (the soak's check that the message's files
have their manifests).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import random
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

S3_KINDS = ("s3_500", "s3_503", "s3_slowdown", "s3_timeout", "s3_lost_response", "s3_access_denied")
SQS_KINDS = ("sqs_500", "sqs_throttling", "sqs_timeout", "sqs_lost_response")
_UA_TAG = re.compile(r"app/([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class Place:
    """An S3 location whose requests share a role: `source`, `dest`, `drop` (a queue's bucket)."""

    role: str
    bucket: str
    prefix: str  # "" or ending with "/"


@dataclass(frozen=True)
class FaultRule:
    """Requests of `service` to places of `role` (any when None), of an operation in `ops` (any when empty), made
    between `start` and `end` seconds after the rules were armed, get fault `kind` with `probability`."""

    kind: str
    role: str | None
    start: float
    end: float
    probability: float
    ops: tuple[str, ...] = ()
    hold_seconds: float = 2.0  # time-outs: how long the connection is held before it is dropped

    @property
    def service(self) -> str:
        return self.kind.split("_", 1)[0]


@dataclass
class Request:
    service: str  # s3 | sqs
    op: str
    role: str | None
    bucket: str | None
    key: str | None
    run: str | None
    body: bytes


@dataclass
class ReceivedMessage:
    message_id: str
    body: str
    run: str | None
    at: float


@dataclass
class ProxyLog:
    """What the proxy saw and did; read by the soak's checks."""

    faults: Counter[str] = field(default_factory=Counter)  # kind -> count
    faults_by_op: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, op)
    faults_by_run: Counter[tuple[str | None, str]] = field(default_factory=Counter)  # (run, op)
    received: Counter[str | None] = field(default_factory=Counter)  # messages handed to each run
    deleted: Counter[str | None] = field(default_factory=Counter)  # DeleteMessage calls that took effect
    lost_receives: Counter[str] = field(default_factory=Counter)  # message id -> receives whose answer was dropped
    receipts: dict[str, ReceivedMessage] = field(default_factory=dict)
    requests: int = 0
    requests_by_run: Counter[tuple[str | None, str]] = field(default_factory=Counter)  # (run, op)


class FaultProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.places: list[Place] = []
        self.rules: list[FaultRule] = []
        self.armed_at = time.monotonic()
        self.random = random.Random(0)
        self.log = ProxyLog()
        self.lock = threading.Lock()
        self.on_delete: Callable[[ReceivedMessage], None] = lambda message: None
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-request (a run killed, a connection it timed out) is not news."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    # --- the schedule ----------------------------------------------------------------------------------------

    def reset(self, places: list[Place]) -> None:
        """A new scenario: its places, no rules, an empty log."""
        with self.lock:
            self.places = sorted(places, key=lambda place: len(place.prefix), reverse=True)
            self.rules, self.log = [], ProxyLog()

    def arm(self, rules: list[FaultRule], seed: str) -> None:
        with self.lock:
            self.rules, self.armed_at, self.random = list(rules), time.monotonic(), random.Random(seed)

    def disarm(self) -> None:
        with self.lock:
            self.rules = []

    def fault_for(self, request: Request) -> FaultRule | None:
        with self.lock:
            self.log.requests += 1
            self.log.requests_by_run[(request.run, request.op)] += 1
            now = time.monotonic() - self.armed_at
            for rule in self.rules:
                if rule.service != request.service or not rule.start <= now < rule.end:
                    continue
                if rule.role is not None and not _role_matches(rule.role, request.role):
                    continue
                if rule.ops and request.op not in rule.ops:
                    continue
                if self.random.random() < rule.probability:
                    self.log.faults[rule.kind] += 1
                    self.log.faults_by_op[(rule.kind, request.op)] += 1
                    self.log.faults_by_run[(request.run, request.op)] += 1
                    return rule
        return None

    def role_of(self, bucket: str | None, key: str | None) -> str | None:
        if bucket is None:
            return None
        for place in self.places:
            if place.bucket == bucket and (key or "").startswith(place.prefix):
                if place.role == "dest" and key is not None:
                    return dest_part(key[len(place.prefix) :])
                return place.role
        for place in self.places:  # a listing of the bucket's root, or a prefix above the place's
            if place.bucket == bucket:
                return place.role
        return None

    # --- the queue ------------------------------------------------------------------------------------------

    def saw_receive(self, request: Request, answer: bytes) -> None:
        try:
            messages = json.loads(answer).get("Messages", [])
        except ValueError:
            messages = []
        with self.lock:
            for message in messages:
                self.log.receipts[message["ReceiptHandle"]] = ReceivedMessage(
                    message["MessageId"], message.get("Body", ""), request.run, time.monotonic()
                )
                self.log.received[request.run] += 1

    def lost_receive(self, answer: bytes) -> None:
        try:
            messages = json.loads(answer).get("Messages", [])
        except ValueError:
            return
        with self.lock:
            for message in messages:
                self.log.lost_receives[message["MessageId"]] += 1

    def before_delete(self, request: Request) -> None:
        receipt = _sqs_field(request.body, "ReceiptHandle")
        with self.lock:
            message = self.log.receipts.get(receipt or "")
        if message is not None:
            self.on_delete(message)

    def saw_delete(self, request: Request) -> None:
        with self.lock:
            self.log.deleted[request.run] += 1


def _role_matches(wanted: str, role: str | None) -> bool:
    return role is not None and (role == wanted or role.startswith(wanted + "_"))


def dest_part(name: str) -> str:
    """The part of DEST a name belongs to: its claims, its run reports, a manifest, or another output."""
    if name.startswith("_claims/"):
        return "dest_claims"
    if name.startswith("_runs/"):
        return "dest_reports"
    if name.endswith(".manifest.json"):
        return "dest_manifests"
    return "dest_outputs"


def _sqs_field(body: bytes, name: str) -> str | None:
    try:
        return json.loads(body).get(name)
    except ValueError:
        values = parse_qs(body.decode("utf-8", "replace")).get(name)
        return values[0] if values else None


def classify(proxy: FaultProxy, method: str, path: str, headers: http.client.HTTPMessage, body: bytes) -> Request:
    agent = _UA_TAG.search(headers.get("User-Agent", ""))
    run = agent.group(1) if agent else None
    target = headers.get("X-Amz-Target", "")
    if target.startswith("AmazonSQS."):
        return Request("sqs", target.removeprefix("AmazonSQS."), "queue", None, None, run, body)
    if method == "POST" and b"Action=" in body[:200] and "/" in path and not path.startswith("/?"):
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        if action:
            return Request("sqs", action, "queue", None, None, run, body)
    parts = urlsplit(path)
    bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    query = parse_qs(parts.query, keep_blank_values=True)
    op = _s3_operation(method, bool(key), query, headers)
    prefix = query.get("prefix", [None])[0]
    role = proxy.role_of(bucket or None, key or prefix)
    return Request("s3", op, role, bucket or None, key or None, run, body)


def _s3_operation(method: str, has_key: bool, query: dict[str, list[str]], headers: http.client.HTTPMessage) -> str:
    if not has_key:
        if method == "GET":
            return "ListObjectsV2" if "list-type" in query else "ListObjects"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        return f"Bucket{method.title()}"
    if method == "GET":
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "CopyObject" if headers.get("x-amz-copy-source") else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    return method


_ERRORS = {
    "s3_500": (500, b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"),
    "s3_503": (
        503,
        b"<Error><Code>ServiceUnavailable</Code><Message>Service is unable to handle request.</Message></Error>",
    ),
    "s3_slowdown": (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "s3_access_denied": (403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"),
    "sqs_500": (500, b'{"__type": "com.amazonaws.sqs#InternalError", "message": "internal error"}'),
    "sqs_throttling": (400, b'{"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded"}'),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        body = self._body()
        proxy = self.server
        request = classify(proxy, self.command, self.path, self.headers, body)
        rule = proxy.fault_for(request)
        if rule is not None and rule.kind in _ERRORS:
            status, payload = _ERRORS[rule.kind]
            self._answer(
                status,
                payload,
                {"Content-Type": "application/xml" if rule.service == "s3" else "application/x-amz-json-1.0"},
            )
            return
        if rule is not None and rule.kind.endswith("_timeout"):
            time.sleep(rule.hold_seconds)  # the connection is held, then dropped with no answer
            self._drop()
            return
        if request.service == "sqs" and request.op == "DeleteMessage":
            proxy.before_delete(request)
        status, headers, answer = self._upstream(body)
        if request.service == "sqs" and status == 200:
            if request.op == "ReceiveMessage":
                if rule is None:
                    proxy.saw_receive(request, answer)
                else:
                    proxy.lost_receive(answer)
            if request.op == "DeleteMessage":
                proxy.saw_delete(request)
        if rule is not None:  # lost response: the request took effect, its answer never arrives
            self._drop()
            return
        self._answer(status, answer, headers)

    def _upstream(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "expect")}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = {
                name: value
                for name, value in response.getheaders()
                if name.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            return response.status, kept, data
        finally:
            upstream.close()

    def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward
