"""SOURCE, DEST and the queue of one scenario, reached directly (never through the fault proxy): the soak writes
the inputs, sends the events and reads DEST back here, and remembers every version of every input it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from soak.plan import CLAIM_TTL_SECONDS, MAX_RECEIVES, VISIBILITY_SECONDS, InputPlan, Scenario
from soak.proxy import Place

REGION = "us-east-1"
SMALL_DEST_BYTES = 48 * 1024  # a DEST that fills after a few files (tmpfs counts whole 4 KiB pages)
SMALL_SPOOL_BYTES = 32 * 1024  # a spool that holds the smallest recordings only


@dataclass
class Version:
    """One version of an input as the soak wrote it."""

    key: str
    word: str | None  # the code word it says (None: an input with no speech of its own)
    size: int
    sha256: str
    token: str  # what a listing shows: the mtime in ns (folder) or the ETag (S3)
    written_at: float
    in_place: bool = False


class Places:
    """One scenario's SOURCE (a folder, an S3 prefix or a drop bucket), DEST (a folder, a small file system, an S3
    prefix) and queue, with the versions of every input."""

    def __init__(self, scenario: Scenario, workdir: Path, s3: Any, sqs: Any):
        self.scenario, self.workdir, self.s3, self.sqs = scenario, workdir, s3, sqs
        tag = f"{scenario.seed}-{scenario.index}".lower()
        self.source_bucket = f"soak-src-{tag}"
        self.dest_bucket = self.source_bucket if scenario.dest_inside_source else f"soak-dst-{tag}"
        self.source_dir = workdir / "in"
        self.dest_dir = workdir / "out"
        self.versions: dict[str, list[Version]] = {}
        self._written = threading.Condition()  # told of each version written
        self.deleted: dict[str, float] = {}  # key -> when
        self.queue_url = self.dead_letters_url = ""
        self.spool_dir = workdir / "spool"
        self.mounts: list[Path] = []
        self.mount_problem: str | None = None

    # --- where things are -------------------------------------------------------------------------------------

    @property
    def source_prefix(self) -> str:
        return "" if self.scenario.mode == "queue" else "in/"

    @property
    def dest_prefix(self) -> str:
        return "in/out/" if self.scenario.dest_inside_source else "out/"

    @property
    def source_url(self) -> str:
        if self.scenario.mode == "folder":
            return str(self.source_dir)
        return f"s3://{self.source_bucket}/{self.source_prefix}"

    @property
    def dest_url(self) -> str:
        if self.scenario.dest == "s3":
            return f"s3://{self.dest_bucket}/{self.dest_prefix}"
        return str(self.dest_dir)

    def proxy_places(self) -> list[Place]:
        places = []
        if self.scenario.mode != "folder":
            places.append(Place("source", self.source_bucket, self.source_prefix))
        if self.scenario.dest == "s3":
            places.append(Place("dest", self.dest_bucket, self.dest_prefix))
        return places

    # --- setting up -----------------------------------------------------------------------------------------

    def create(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.scenario.mode == "folder":
            self.source_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.s3.create_bucket(Bucket=self.source_bucket)
        if self.scenario.dest == "s3" and self.dest_bucket != self.source_bucket:
            self.s3.create_bucket(Bucket=self.dest_bucket)
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        if self.scenario.dest == "tmpfs":
            self._mount(self.dest_dir, SMALL_DEST_BYTES)
        if self.scenario.spool_full:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._mount(self.spool_dir, SMALL_SPOOL_BYTES)
        if self.scenario.mode == "queue":
            self._queues()

    def _queues(self) -> None:
        name = f"soak-{self.scenario.seed}-{self.scenario.index}"
        self.dead_letters_url = self.sqs.create_queue(QueueName=name + "-dlq")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.dead_letters_url, AttributeNames=["QueueArn"])
        redrive = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": MAX_RECEIVES}
        attributes = {"VisibilityTimeout": str(VISIBILITY_SECONDS), "RedrivePolicy": json.dumps(redrive)}
        self.queue_url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    def _mount(self, folder: Path, size: int) -> None:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            self.mount_problem = (done.stderr or done.stdout).strip() or f"mount exited {done.returncode}"
            return
        self.mounts.append(folder)

    def mounted(self, folder: Path) -> bool:
        return folder in self.mounts

    def grow(self) -> None:
        """Before the clean final run: a full DEST or spool gets room."""
        for folder in self.mounts:
            subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)

    def tear_down(self) -> None:
        for folder in self.mounts:
            for _ in range(20):
                if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
        self.mounts = []

    # --- inputs ---------------------------------------------------------------------------------------------

    def write(self, item: InputPlan, content: bytes, word: str | None, in_place: bool = False) -> Version:
        if self.scenario.mode == "folder":
            token = self._write_file(item.key, content, in_place)
        else:
            answer = self.s3.put_object(Bucket=self.source_bucket, Key=self.source_prefix + item.key, Body=content)
            token = answer["ETag"].strip('"')
        version = Version(
            item.key, word, len(content), hashlib.sha256(content).hexdigest(), token, time.monotonic(), in_place
        )
        with self._written:
            self.versions.setdefault(item.key, []).append(version)
            self.deleted.pop(item.key, None)
            self._written.notify_all()
        return version

    def wait_for_version(self, key: str, word: str, timeout: float) -> bool:
        """Whether the version of `key` saying `word` is written, waiting up to `timeout` s for a write under way:
        S3 sends an object's event once the object is written, never before (its content may take a while to make)."""
        with self._written:
            return self._written.wait_for(lambda: self._version_saying(key, word) is not None, timeout)

    def _write_file(self, key: str, content: bytes, in_place: bool) -> str:
        path = self.source_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if in_place and path.exists():
            # As a client that copies over the old file: truncated, half written, a pause, the rest.
            with path.open("r+b") as out:
                out.truncate(0)
                out.write(content[: len(content) // 2])
                out.flush()
                time.sleep(0.3)
                out.write(content[len(content) // 2 :])
        else:
            hidden = path.with_name(f".soak-{os.getpid()}-{time.monotonic_ns()}")
            hidden.write_bytes(content)
            hidden.rename(path)
        return str(path.stat().st_mtime_ns)

    def delete(self, key: str) -> None:
        if self.scenario.mode == "folder":
            with contextlib.suppress(FileNotFoundError):
                (self.source_dir / key).unlink()
        else:
            self.s3.delete_object(Bucket=self.source_bucket, Key=self.source_prefix + key)
        self.deleted[key] = time.monotonic()

    def current(self, key: str) -> Version | None:
        if key in self.deleted or key not in self.versions:
            return None
        return self.versions[key][-1]

    def version_of(self, key: str, token: str | None, fingerprint: str | None) -> Version | None:
        """The version of `key` a manifest's input record names (its listing token, or its content hash)."""
        for version in reversed(self.versions.get(key, [])):
            if token == version.token or fingerprint in (f"sha256:{version.sha256}",):
                return version
            if fingerprint and fingerprint.startswith("etag:") and fingerprint.split(":")[1] == version.token:
                return version
        return None

    # --- the queue ------------------------------------------------------------------------------------------

    def send(self, body: str) -> str:
        return self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)["MessageId"]

    def event_body(self, keys: list[str], removal: bool = False, word: str | None = None) -> str:
        records = []
        for key in keys:
            version = self._version_saying(key, word)
            obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": f"{time.monotonic_ns():X}"}
            if version is not None and not removal:
                obj |= {"size": version.size, "eTag": version.token}
            records.append(
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": REGION,
                    "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                    "eventName": "ObjectRemoved:Delete" if removal else "ObjectCreated:Put",
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "bucket": {"name": self.source_bucket, "arn": f"arn:aws:s3:::{self.source_bucket}"},
                        "object": obj,
                    },
                }
            )
        return json.dumps({"Records": records})

    def _version_saying(self, key: str, word: str | None) -> Version | None:
        versions = self.versions.get(key, [])
        if word is None:
            return versions[-1] if versions else None
        return next((version for version in versions if version.word == word), None)

    def queue_counts(self, url: str) -> tuple[int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        got = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return int(got[names[0]]), int(got[names[1]])

    def queue_bodies(self, url: str) -> list[str]:
        """The bodies of the messages waiting in a queue (read with a visibility of 0: left where they are)."""
        bodies, seen = [], set()
        for _ in range(20):
            answer = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
            fresh = [m for m in answer.get("Messages", []) if m["MessageId"] not in seen]
            if not fresh:
                break
            for message in fresh:
                seen.add(message["MessageId"])
                bodies.append(message["Body"])
        return bodies

    # --- DEST -----------------------------------------------------------------------------------------------

    def dest_files(self) -> dict[str, bytes]:
        """Every file in DEST, by its name relative to DEST."""
        if self.scenario.dest == "s3":
            files = {}
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.dest_bucket, Prefix=self.dest_prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    body = self.s3.get_object(Bucket=self.dest_bucket, Key=obj["Key"])["Body"].read()
                    files[obj["Key"][len(self.dest_prefix) :]] = body
            return files
        files = {}
        for path in sorted(self.dest_dir.rglob("*")):
            if path.is_file():
                with contextlib.suppress(OSError):
                    files[os.fsdecode(path.relative_to(self.dest_dir))] = path.read_bytes()
        return files

    def manifests(self, files: dict[str, bytes] | None = None) -> dict[str, tuple[str, dict[str, Any] | None]]:
        """Input key -> (manifest name, the manifest or None when it is not JSON), from every *.manifest.json."""
        found: dict[str, tuple[str, dict[str, Any] | None]] = {}
        for name, body in (self.dest_files() if files is None else files).items():
            if not name.endswith(".manifest.json") or name.startswith(("_claims/", "_runs/")):
                continue
            try:
                document = json.loads(body)
                key = document["input"]["key"]
            except (ValueError, KeyError, TypeError):
                found[f"?{name}"] = (name, None)
                continue
            found[key] = (name, document)
        return found

    def claims_left(self) -> list[str]:
        return [name for name in self.dest_files() if name.startswith("_claims/") and "/.probe-" not in name]


def claim_wait_seconds() -> float:
    """How long a claim of a run killed outright can hold its file: the TTL, and a little for clocks."""
    return CLAIM_TTL_SECONDS + 1.0
