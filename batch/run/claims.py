"""Claims: plain parallel workers (no engine-given index) share one job by claiming each file before work.

A claim is a small object DEST/_claims/KEY.claim created with a conditional write (S3 `If-None-Match: *`, or
O_EXCL on a folder), so exactly one worker wins it. A claim expires after `claim_ttl` seconds: a crashed
worker's files are then taken over, again by a conditional write (`If-Match` on the expired claim's ETag), so
two workers cannot both take over the same one. A claim is released when the file's manifest is written.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from batch.storage import InputFile, Store
from batch.storage.names import output_base

log = logging.getLogger(__name__)

CLAIMS_FOLDER = "_claims"


def claim_name(key: str) -> str:
    return f"{CLAIMS_FOLDER}/{output_base(key)}.claim"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Claims:
    def __init__(self, dest: Store, run_id: str, ttl_seconds: float, clock: Callable[[], float] = time.time):
        self.dest = dest
        self.owner = {"worker": worker_id(), "run_id": run_id}
        self.ttl = ttl_seconds
        self.clock = clock

    def claim(self, key: str) -> bool:
        """True when this worker now holds `key`: a new claim, or one taken over after it expired."""
        name = claim_name(key)
        if self.dest.create_exclusive(name, self._body()):
            return True
        current = self.dest.read_with_version(name)
        if current is None:  # released between our two requests: try once more
            return self.dest.create_exclusive(name, self._body())
        body, version = current
        try:
            expires_at = float(json.loads(body)["expires_at"])
        except (ValueError, KeyError, TypeError):
            expires_at = 0.0  # unreadable: treated as expired
        if expires_at > self.clock():
            return False
        taken = self.dest.replace_if_version(name, self._body(), version)
        if taken:
            log.warning("took over the expired claim on %s (held by %s)", key, body[:200].decode(errors="replace"))
        return taken

    def release(self, key: str) -> None:
        try:
            self.dest.delete(claim_name(key))
        except Exception as exc:  # it expires anyway
            log.warning("could not release the claim on %s: %s", key, exc)

    def _body(self) -> bytes:
        now = self.clock()
        return json.dumps(self.owner | {"claimed_at": now, "expires_at": now + self.ttl}).encode()


class HeldClaims:
    """The claims this worker holds: taken before a file is decoded, given back once its manifest is written,
    or at the end of the run for files never written (a stop, an error), so none waits for its TTL."""

    def __init__(self, claims: Claims, still_to_do: Callable[[InputFile], bool]):
        self.claims = claims
        self.still_to_do = still_to_do  # re-checked once the claim is won (another worker may have finished it)
        self._held: set[str] = set()
        self._lock = threading.Lock()  # taken on prefetch threads, given back on the writer's and the caller's

    def take(self, item: InputFile) -> bool:
        """Claim the file, unless another worker holds it or finished it since this worker's skip check.

        Workers write the manifest before releasing a claim, so a claim won after a release sees the manifest.
        """
        if not self.claims.claim(item.key):
            return False
        with self._lock:
            self._held.add(item.key)
        if not self.still_to_do(item):
            self.give_back(item.key)
            return False
        return True

    def give_back(self, key: str) -> None:
        with self._lock:
            if key not in self._held:
                return
            self._held.discard(key)
        self.claims.release(key)

    def give_back_all(self) -> None:
        with self._lock:
            keys = sorted(self._held)
        for key in keys:
            self.give_back(key)
