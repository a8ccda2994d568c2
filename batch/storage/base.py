"""What every store shares: the recordings a listing yields, its counts, and the `Store` protocol that a folder
(`batch.storage.local`) and an S3 prefix (`batch.storage.s3`) each implement. Here, apart from the package's
`open_store`, so that the stores import what they implement without importing the package that picks them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

from batch.common.errors import EnvironmentFault

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class InputFile:
    """One recording to transcribe. `version` changes whenever the content may have (mtime, ETag); a file named by a
    queue message carries the message's `receive_count` (its receives, this one included), for its manifest."""

    key: str
    size: int
    version: str
    receive_count: int | None = field(default=None, compare=False)


@dataclass
class ListingCounts:
    """What a listing found: every file in SOURCE (hidden ones aside), how many of them were selected, and the
    folders it could not read (path under SOURCE, reason): their files are neither listed nor lost."""

    listed: int = 0
    selected: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class Store(Protocol):
    """One location, a folder (`batch.storage.local.LocalStore`) or an S3 prefix (`batch.storage.s3.S3Store`).

    `location` is the folder or URL as people read it. The `role` of a check ("SOURCE", "DEST") starts its
    error message; a failed check raises EnvironmentProblem.
    """

    location: str

    # Reading recordings (SOURCE); `counts`, when given, is kept up to date as the listing streams
    def list(
        self, include: Iterable[str] = (), exclude: Iterable[str] = (), counts: ListingCounts | None = None
    ) -> Iterator[InputFile]: ...
    def open(self, key: str, size: int | None = None, version: str | None = None) -> BinaryIO: ...
    def address(self, key: str) -> str: ...  # where the recording is, as people read it (s3://bucket/key, a path)
    def fingerprint(self, item: InputFile) -> str: ...
    def current_version(self, key: str) -> str | None: ...  # the version it holds now (None: gone, or unknown)
    def check_readable(self, role: str = "SOURCE") -> None: ...

    # Names of any kind (manifests, run reports), hidden ones left out, in a stable order
    def list_names(self, prefix: str = "", suffix: str = "") -> Iterator[str]: ...

    # Writing and reading named objects (DEST)
    def check_writable(self, role: str = "DEST") -> None: ...
    def write_bytes(self, name: str, data: bytes) -> None: ...
    def read_bytes(self, name: str) -> bytes | None: ...
    def exists(self, name: str) -> bool: ...
    def delete(self, name: str) -> None: ...
    # Conditional writes (claims, manifests): the new version when written, None when the condition failed;
    # ConditionalWritesUnsupported where the store cannot make the condition hold (no hard links, an S3 look-alike)
    def create_exclusive(self, name: str, data: bytes) -> str | None: ...
    def read_with_version(self, name: str) -> tuple[bytes, str] | None: ...
    def replace_if_version(self, name: str, data: bytes, version: str) -> str | None: ...
    def delete_if_version(self, name: str, version: str) -> bool: ...


class InputChanged(EnvironmentFault):
    """The input was replaced or rewritten between its listing and its reading (or while it was read): this run
    does not record it under the version listed; the new version is done by the next run, or after its own event."""


class ConditionalWritesUnsupported(Exception):
    """The store cannot write on a condition (a filesystem without hard links, an S3 look-alike that answers
    NotImplemented): the caller falls back to an unconditional write, or refuses what needs one (claims)."""


@dataclass(frozen=True)
class AgedObject:
    """A named object, its version, and how long ago it was written by the store's own clock (None: unknown)."""

    data: bytes
    version: str
    age_seconds: float | None


@runtime_checkable
class StoreClock(Protocol):
    """A store that can say how old an object is by its own clock (S3: its response's Date less the object's
    Last-Modified), so that claims expire without comparing the clocks of two machines. A folder cannot."""

    def read_with_age(self, name: str) -> AgedObject | None: ...


def is_s3_url(location: str) -> bool:
    return location.startswith(S3_SCHEME)
