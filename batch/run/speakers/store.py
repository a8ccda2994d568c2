"""Reading and changing a library file in a folder or S3: every change is read, made and written on the condition
that nobody wrote the file meanwhile (S3's If-None-Match / If-Match, as the run's manifests and claims), and made
again on the newer file when somebody did, so that two enrolments at once both land."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from batch.common.errors import EnvironmentProblem
from batch.engine.speakers.encoder import EncoderIdentity
from batch.run.speakers.library import Library, LibraryProblem, decode_library, empty_library, refuse_another_encoder
from batch.storage import ConditionalWritesUnsupported, Store, is_s3_url, open_store

log = logging.getLogger(__name__)

#: Tries of a read-change-write before giving up: each lost race means another writer changed the file meanwhile.
MAX_TRIES = 20

T = TypeVar("T")


@dataclass(frozen=True)
class LibraryPlace:
    """A library file: the store of its folder or S3 prefix, and its name there."""

    store: Store
    name: str
    location: str  # as the user gave it

    @classmethod
    def at(cls, location: str, endpoint_url: str | None = None, client: Any = None) -> LibraryPlace:
        if is_s3_url(location):
            parent, _, name = location.rpartition("/")
            if not name or parent in ("s3:/", "s3:"):
                raise LibraryProblem(f"{location}: name the library file itself (s3://bucket/prefix/speakers.json)")
            return cls(open_store(parent, endpoint_url=endpoint_url, client=client), name, location)
        path = Path(location)
        if path.is_dir():
            raise LibraryProblem(f"{location} is a folder: name the library file itself (speakers.json)")
        return cls(open_store(str(path.parent)), path.name, location)

    def read(self) -> tuple[Library, str] | None:
        """The library and its version in the store (an ETag, a content digest), or None when there is none."""
        found = self.store.read_with_version(self.name)
        if found is None:
            return None
        data, version = found
        return decode_library(data, self.location), version

    def load(self) -> Library:
        """The library; LibraryProblem when there is none."""
        found = self.read()
        if found is None:
            raise LibraryProblem(f"{self.location}: no library there (enrol a voice to make one)")
        return found[0]

    def update(self, change: Callable[[Library], tuple[Library, T]], encoder: EncoderIdentity | None = None) -> T:
        """Apply `change` to the library (a new one of `encoder` when there is none) and write it, again on the
        newer library whenever another writer got there first. `change` returns the new library and what to hand
        back; it may be called several times, so it must only compute."""
        with self._local_lock():
            for _ in range(MAX_TRIES):
                found = self.read()
                if found is None:
                    if encoder is None:
                        raise LibraryProblem(f"{self.location}: no library there (enrol a voice to make one)")
                    current, version = empty_library(encoder), None
                else:
                    current, version = found
                    if encoder is not None:
                        refuse_another_encoder(current, encoder, self.location)
                changed, result = change(current)
                if found is not None and changed.version == current.version:
                    return result
                if self._write(changed.encode(), version):
                    return result
                log.info("%s changed while it was updated: updating the newer library", self.location)
        raise EnvironmentProblem(
            f"{self.location}: changed by others {MAX_TRIES} times while it was updated; try again"
        )

    def _write(self, data: bytes, version: str | None) -> bool:
        try:
            if version is None:
                return self.store.create_exclusive(self.name, data) is not None
            return self.store.replace_if_version(self.name, data, version) is not None
        except ConditionalWritesUnsupported:
            log.warning("%s: the store cannot write on a condition; written without one", self.location)
            self.store.write_bytes(self.name, data)
            return True

    @contextlib.contextmanager
    def _local_lock(self) -> Iterator[None]:
        """A folder's replace-if-version reads, compares and writes (batch.storage.local): not atomic between two
        processes. A lock beside the file makes the whole read-change-write one at a time on this machine."""
        path = getattr(self.store, "path", None)
        if path is None:
            yield
            return
        lock_path = Path(path(f".{self.name}.lock"))
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            os.close(handle)
