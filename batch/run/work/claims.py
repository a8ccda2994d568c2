"""Claims: plain parallel workers (no engine-given index) share one job by claiming each file before work
(`Claimed`, a source of work around the listing or the queue: only the files whose claim this worker won).

A claim is a small object DEST/_claims/KEY.claim created with a conditional write (S3 `If-None-Match: *`, or
O_EXCL on a folder), so exactly one worker wins it. A claim expires after `claim_ttl` seconds: a crashed
worker's files are then taken over, again by a conditional write (`If-Match` on the expired claim's ETag), so
two workers cannot both take over the same one. While the file is in work its claim is renewed (the same
conditional write, every third of the TTL), so a file that takes longer than the TTL keeps it. A claim is released
when the file's manifest is written, and only by its owner: a delete on the claim's ETag (`If-Match`), or, where
the store ignores that, by reading it, comparing the owner, and deleting. A store that ignores `If-None-Match`,
or `If-Match` on a write, is refused at the start (`Claims.check`).

A claim's age is the store's to say where it can (S3: its response's Date less the object's Last-Modified, one
clock), so that workers whose clocks disagree never both hold a file; the TTL it is compared with is the writer's
(its `expires_at` less its `claimed_at`, both from the writer's clock). A folder cannot say: there the writer's
`expires_at` is compared with the reader's clock, which the machines sharing the folder must keep in step.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from batch.common.errors import ConfigError
from batch.common.logs import file_context
from batch.run.report import RunReport
from batch.run.work import WorkSource
from batch.storage import ConditionalWritesUnsupported, InputFile, Store
from batch.storage.base import StoreClock
from batch.storage.names import output_base

log = logging.getLogger(__name__)

CLAIMS_FOLDER = "_claims"
IN_FLIGHT_WAIT_SECONDS = 5.0
# S3's Date and Last-Modified are whole seconds: an age read from them may be up to this much more than the truth,
# so a claim counts as expired only once its age less this reaches its TTL (never early; late by 2 s at most).
STORE_CLOCK_RESOLUTION_SECONDS = 1.0


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
        self.conditional_delete = True  # until the probe finds the store deletes whatever is there

    def check(self) -> None:
        """Probe DEST once: two exclusive creates of one name cannot both succeed, and a write on a version
        cannot succeed once it is stale nor fail while it is current (else --claim is refused: every worker
        would win every claim, or renewals and takeovers would not hold); and whether a delete on a stale
        version is refused (else claims are released by reading, comparing the owner, then deleting)."""
        probe = f"{CLAIMS_FOLDER}/.probe-{os.getpid()}-{os.urandom(4).hex()}.claim"
        try:
            self._probe(probe)
        except ConditionalWritesUnsupported as exc:
            raise ConfigError(
                "claim",
                f"DEST {self.dest.location} cannot write on a condition ({exc}), so claims cannot hold; use "
                "--shard, or a store that can",
            ) from None
        finally:
            self.dest.delete(probe)
        if not self.conditional_delete:
            log.info("DEST %s ignores If-Match on delete: claims are released by owner", self.dest.location)

    def _probe(self, probe: str) -> None:
        first = self.dest.create_exclusive(probe, b"first")
        second = self.dest.create_exclusive(probe, b"second") if first is not None else None
        if first is None or second is not None:
            raise ConfigError(
                "claim",
                f"DEST {self.dest.location} does not keep exclusive creates exclusive: two creates of one "
                "name both succeeded (the store ignores If-None-Match, as older MinIO and Ceph releases do), "
                "so every worker would win every claim; use --shard, or a store that honours it",
            )
        self._check_replace_if_version(probe, first)
        try:
            self.conditional_delete = not self.dest.delete_if_version(probe, '"stale-version"')
        except ConditionalWritesUnsupported:
            self.conditional_delete = False

    def _check_replace_if_version(self, probe: str, current: str) -> None:
        stale = self.dest.replace_if_version(probe, b"stale", '"stale-version"')
        renewed = self.dest.replace_if_version(probe, b"renewed", current) if stale is None else None
        if stale is None and renewed is not None:
            return
        what = "a write on a stale version succeeded" if stale is not None else "a write on the current version failed"
        raise ConfigError(
            "claim",
            f"DEST {self.dest.location} does not honour If-Match on a write ({what}), so claims could not be "
            "renewed or taken over safely: two workers could hold one file; use --shard, or a store that honours it",
        )

    def claim(self, key: str) -> str | None:
        """The claim's version when this worker now holds `key` (a new claim, or one taken over after it
        expired), else None."""
        name = claim_name(key)
        version = self.dest.create_exclusive(name, self._body())
        if version is not None:
            return version
        current = self._read(name)
        if current is None:  # released between our two requests: try once more
            return self.dest.create_exclusive(name, self._body())
        body, version, age = current
        if self._is_ours(body):  # our create landed, its answer was lost, and botocore's retry found it there
            return version
        if not self._expired(body, age):
            return None
        taken = self.dest.replace_if_version(name, self._body(), version) or self._ours_now(name)
        if taken is not None:
            log.warning("took over the expired claim on %s (held by %s)", key, body[:200].decode(errors="replace"))
        return taken

    def _read(self, name: str) -> tuple[bytes, str, float | None] | None:
        """A claim, its version, and its age by the store's clock where the store can say (else None)."""
        if isinstance(self.dest, StoreClock):
            found = self.dest.read_with_age(name)
            return None if found is None else (found.data, found.version, found.age_seconds)
        current = self.dest.read_with_version(name)
        return None if current is None else (*current, None)

    def _expired(self, body: bytes, age: float | None) -> bool:
        """Past its writer's TTL by the store's clock; where the store cannot say, the writer's `expires_at`
        against this worker's clock. An unreadable claim is expired."""
        try:
            holder = json.loads(body)
            expires_at, claimed_at = float(holder["expires_at"]), float(holder["claimed_at"])
        except (ValueError, KeyError, TypeError):
            return True
        if age is None:
            return expires_at <= self.clock()
        return age - STORE_CLOCK_RESOLUTION_SECONDS >= expires_at - claimed_at  # one clock each side

    def renew(self, key: str, version: str) -> str | None:
        """The claim pushed `ttl` seconds on, if it is still the one this worker wrote: its new version, else
        None (it expired and another worker took it over)."""
        name = claim_name(key)
        return self.dest.replace_if_version(name, self._body(), version) or self._ours_now(name)

    def _ours_now(self, name: str) -> str | None:
        """The claim's version if what is there is this worker's: a conditional write that landed though its answer
        was lost, whose retry by botocore then failed its own condition. Else None."""
        current = self.dest.read_with_version(name)
        return current[1] if current is not None and self._is_ours(current[0]) else None

    def _is_ours(self, body: bytes) -> bool:
        try:
            holder = json.loads(body)
        except ValueError:
            return False
        return isinstance(holder, dict) and {field: holder.get(field) for field in self.owner} == self.owner

    def release(self, key: str, version: str | None) -> bool:
        """Delete the claim only if it is still ours: a claim another worker took over stays theirs. `version`
        None: whatever version is there, if this worker wrote it (a renewal may have written one it never
        learned). Whether it was deleted; an error is logged (the claim expires anyway)."""
        name = claim_name(key)
        try:
            if self.conditional_delete and version is not None and self.dest.delete_if_version(name, version):
                return True
            return self._release_by_owner(name)  # a version this worker never learned may be there, still ours
        except Exception as exc:
            log.warning("could not release the claim on %s: %s", key, exc)
            return False

    def _release_by_owner(self, name: str) -> bool:
        current = self.dest.read_with_version(name)
        if current is None or not self._is_ours(current[0]):
            return False
        self.dest.delete(name)
        return True

    def _body(self) -> bytes:
        now = self.clock()
        return json.dumps(self.owner | {"claimed_at": now, "expires_at": now + self.ttl}).encode()


class HeldClaims:
    """The claims this worker holds: taken before a file is decoded, renewed while it is in work (every third of
    the TTL), given back once its manifest is written, or at the end of the run, whatever ended it, for files
    never written (a stop, an error, an abandon), so none waits for its TTL.

    A renewal's write (which botocore may retry for minutes) runs outside the lock, so giving a claim back never
    waits behind it: the claim is deleted at once on the version last known; should a renewal in flight have
    written a newer one, that is deleted too, as this worker's (by owner), and whichever of the two requests
    lands second finds nothing to do."""

    def __init__(self, claims: Claims, still_to_do: Callable[[InputFile], bool]):
        self.claims = claims
        self.still_to_do = still_to_do  # re-checked once the claim is won (another worker may have finished it)
        self._held: dict[str, str] = {}  # key -> the version of its claim
        self._unsure: set[str] = set()  # keys a renewal may have rewritten without this worker learning the version
        self._lock = threading.Lock()  # taken on prefetch threads, the renewer's, the writer's and the caller's
        self._closed = threading.Event()
        self._renewer: threading.Thread | None = None
        self._taking = threading.Condition()  # claims being taken right now, on prefetch threads
        self._in_flight = 0

    def take(self, item: InputFile) -> bool:
        """Claim the file, unless another worker holds it or finished it since this worker's skip check.

        Workers write the manifest before releasing a claim, so a claim won after a release sees the manifest.
        """
        with self._taking:
            if self._closed.is_set():
                return False
            self._in_flight += 1
        try:
            version = self.claims.claim(item.key)
        finally:
            with self._taking:
                self._in_flight -= 1
                self._taking.notify_all()
        if version is None:
            return False
        with self._lock:
            closed = self._closed.is_set()
            if not closed:
                self._held[item.key] = version
                if self._renewer is None:
                    self._renewer = threading.Thread(target=self._renew, name="claims-renewal", daemon=True)
                    self._renewer.start()
        if closed:  # given back while this claim was in flight (an abandon): not ours to keep
            self.claims.release(item.key, version)
            return False
        if not self.still_to_do(item):
            self.give_back(item.key)
            return False
        return True

    def give_back(self, key: str) -> None:
        with self._lock:
            version = self._held.pop(key, None)
            unsure = key in self._unsure
        if version is None:
            return
        if self.claims.release(key, version):
            return
        if unsure and self.claims.release(key, None):  # a renewal in flight had written a newer version
            return
        log.warning("the claim on %s was another worker's by the time it was released: kept", key)

    def give_back_all(self) -> None:
        """Every claim held, and those in flight on prefetch threads (waited for briefly: a run being abandoned
        exits next), goes back; no claim is taken after this."""
        with self._taking:
            self._closed.set()
            self._taking.wait_for(lambda: self._in_flight == 0, timeout=IN_FLIGHT_WAIT_SECONDS)
        with self._lock:
            keys = sorted(self._held)
        for key in keys:
            self.give_back(key)

    def _renew(self) -> None:
        every = max(0.2, self.claims.ttl / 3)
        while not self._closed.wait(every):
            with self._lock:
                keys = list(self._held)
            for key in keys:
                self._renew_one(key)

    def _renew_one(self, key: str) -> None:
        with self._lock:
            version = self._held.get(key)
            if version is None or self._closed.is_set():
                return
            self._unsure.add(key)
        try:
            renewed = self.claims.renew(key, version)  # not under the lock: see the class's docstring
        except Exception as exc:  # the next round tries again, within the TTL; it may have been written
            log.warning("could not renew the claim on %s: %s", key, exc)
            return
        with self._lock:
            self._unsure.discard(key)
            held = self._held.get(key)
            if held == version:
                if renewed is None:
                    log.warning(
                        "the claim on %s expired and was taken over before its renewal: another worker may do it too",
                        key,
                    )
                    del self._held[key]
                else:
                    self._held[key] = renewed
                return
        if held is None and renewed is not None:  # given back while the renewal was in flight: ours to delete
            self.claims.release(key, renewed)


class Claimed:
    """A source of work shared by plain parallel workers (--claim): of the files its inner source (the listing, or
    the queue) offers, only those whose claim this worker wins.

    A claim is taken as the run pulls the file, before it is decoded (so this worker holds no more claims than files
    it pulled ahead of the pipeline), one at a time on the thread that pulls, and re-checked against DEST once won.
    It is given back once the file's write has ended, and every claim still held when the source closes, whatever
    ended the run. A file that fails before it is fetched (DEST cannot hold its manifest) is handed out unclaimed, to
    fail alone; one whose claim could not be taken (DEST's error) is handed out to fail with that error, as a fault
    that is not its own."""

    def __init__(
        self,
        inner: WorkSource,
        claims: Claims,
        run_started_at: str,
        on_claimed_elsewhere: Callable[[str], None] = lambda key: None,
    ):
        self.inner, self.checks, self.waits = inner, inner.checks, inner.waits
        self.held = HeldClaims(claims, lambda item: self.checks.still_to_do(item, run_started_at))
        self.on_claimed_elsewhere = on_claimed_elsewhere  # hears of each file another worker holds or finished
        self._unclaimed: dict[str, Exception] = {}  # files whose claim could not be taken: why

    def pending(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        for item in self.inner.pending(on_skipped):
            if self.inner.problem(item.key) is None and not self._take(item):
                self.on_claimed_elsewhere(item.key)
                continue
            yield item

    def _take(self, item: InputFile) -> bool:
        """Whether the file is this worker's to do: its claim won, or DEST could not be asked (the file then fails
        with that error, not its own fault, and a later run does it)."""
        with file_context(item.key):
            try:
                return self.held.take(item)
            except Exception as exc:
                self._unclaimed[item.key] = exc
                return True

    def look(self, on_skipped: Callable[[str], None]) -> Iterator[InputFile]:
        """The files this worker would try to claim; none is claimed."""
        return self.inner.look(on_skipped)

    def problem(self, key: str) -> Exception | None:
        return self.inner.problem(key) or self._unclaimed.get(key)

    def finished(self, key: str) -> None:
        """The inner source hears first (a queue's message goes once DEST holds the manifest), then the claim goes:
        a worker that wins it after that sees the manifest."""
        self._unclaimed.pop(key, None)
        try:
            self.inner.finished(key)
        finally:
            self.held.give_back(key)

    def more_to_come(self) -> bool:
        return self.inner.more_to_come()

    def close(self) -> None:
        try:
            self.held.give_back_all()
        finally:
            self.inner.close()

    def record(self, report: RunReport) -> None:
        self.inner.record(report)
