"""Where recordings come from and where outputs go, behind relative keys.

A key is the input's path relative to SOURCE in POSIX form (`calls/2024/a.wav`). Outputs are named
KEY + suffix under DEST, so inputs never collide. Every write is atomic: a temporary file in the same
folder, flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from batch.errors import EnvironmentProblem

# Read once, at import, while the process is single-threaded (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)

# Containers and codecs people record or export calls, interviews, podcasts and meetings in.
MEDIA_EXTENSIONS = frozenset(
    """
    wav wave mp3 m4a m4b aac flac ogg oga opus spx webm weba mp4 m4v mkv mka mov avi wmv wma
    aif aiff aifc amr 3gp 3g2 caf wv ac3 mpg mpeg mp2 ts mts m2ts vob flv
    """.split()
)


@dataclass(frozen=True)
class InputFile:
    """One recording to transcribe. `version` changes whenever the content may have (mtime, ETag)."""

    key: str
    size: int
    version: str


class Source(Protocol):
    """Where recordings come from: a folder (LocalSource) or an S3 prefix (batch.s3.S3Source)."""

    def check_readable(self) -> None: ...
    def list(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> Iterator[InputFile]: ...
    def open(self, key: str, size: int | None = None) -> BinaryIO: ...
    def fingerprint(self, item: InputFile) -> str: ...


class Dest(Protocol):
    """Where outputs go: a folder (LocalDest) or an S3 prefix (batch.s3.S3Dest). Names are relative keys."""

    def check_writable(self) -> None: ...
    def write_bytes(self, name: str, data: bytes) -> None: ...
    def read_bytes(self, name: str) -> bytes | None: ...
    def exists(self, name: str) -> bool: ...
    def delete(self, name: str) -> None: ...
    def create_exclusive(self, name: str, data: bytes) -> bool: ...
    def read_with_version(self, name: str) -> tuple[bytes, str] | None: ...
    def replace_if_version(self, name: str, data: bytes, version: str) -> bool: ...


def is_selected(key: str, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> bool:
    """Whether a key is taken: by media extension, or by --include globs when given; never if excluded.

    Globs follow fnmatch, matched against the whole key, so `*` also crosses folders.
    """
    include, exclude = tuple(include), tuple(exclude)
    if include:
        chosen = any(fnmatch.fnmatchcase(key, pattern) for pattern in include)
    else:
        chosen = PurePosixPath(key).suffix.lower().lstrip(".") in MEDIA_EXTENSIONS
    return chosen and not any(fnmatch.fnmatchcase(key, pattern) for pattern in exclude)


# Key components that mean something to a file system get a fixed spelling in output names, so a key
# such as `../x.wav`, `a//b.wav` or `/lead.wav` can never write outside DEST (a folder or an S3 prefix, where
# some stores and proxies also collapse dot segments). Every other character is kept as it is.
_COMPONENT_SPELLINGS = {"": "%2F", ".": "%2E", "..": "%2E%2E"}


def output_base(key: str) -> str:
    """The name outputs of `key` are written under: the key, with only empty and dot components respelled."""
    return "/".join(_COMPONENT_SPELLINGS.get(part, part) for part in key.split("/"))


def safe_relative(key: str) -> PurePosixPath:
    """A key as a relative path that cannot climb out of its root; refuses anything else."""
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts) or "\x00" in key:
        raise ValueError(f"unsafe key {key!r}")
    return PurePosixPath(*parts)


class LocalSource:
    """A folder of recordings, scanned recursively in sorted order."""

    def __init__(self, root: str | os.PathLike[str], skip: str | os.PathLike[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise EnvironmentProblem(f"SOURCE is not a readable folder: {self.root}")
        self._real_root = self.root.resolve()
        self._skip = Path(skip).resolve() if skip is not None else None

    def list(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> Iterator[InputFile]:
        """Yield the selected files, streaming, in a stable sorted order.

        Hidden files and folders, links that lead outside SOURCE, and the DEST folder are never taken.
        """
        include, exclude = tuple(include), tuple(exclude)
        for relative in self._walk(self._real_root, PurePosixPath(), set()):
            key = relative.as_posix()
            if not is_selected(key, include, exclude):
                continue
            stat = (self.root / relative).stat()
            yield InputFile(key=key, size=stat.st_size, version=str(stat.st_mtime_ns))

    def _walk(self, folder: Path, relative: PurePosixPath, seen: set[Path]) -> Iterator[PurePosixPath]:
        real = folder.resolve()
        if real in seen or (self._skip is not None and real == self._skip):
            return
        seen = seen | {real}
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not self._inside_root(path):
                continue
            if entry.is_dir():
                yield from self._walk(path, relative / entry.name, seen)
            elif entry.is_file():
                yield relative / entry.name

    def _inside_root(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self._real_root)

    def path(self, key: str) -> Path:
        return self.root / safe_relative(key)

    def open(self, key: str, size: int | None = None) -> BinaryIO:
        return self.path(key).open("rb")

    def check_readable(self) -> None:
        """Checked when the source is opened."""

    def fingerprint(self, item: InputFile) -> str:
        """A content hash: the same bytes give the same fingerprint wherever the file moved."""
        with self.open(item.key) as handle:
            return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


class LocalDest:
    """The output folder. Writes are atomic; nothing half-written is ever in place of a real file."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def check_writable(self) -> None:
        """Create DEST if needed and prove a file can be written there, or raise an environment error."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise EnvironmentProblem(f"DEST is not writable: {self.root} ({exc.strerror or exc})") from None

    def path(self, name: str) -> Path:
        return self.root / safe_relative(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create the file only if it does not exist (O_EXCL); False when another writer was first."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written whole first, then linked into place: link() fails if the name exists, and nobody ever
        # reads a half-written claim.
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.link(temporary, target)
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
        return True

    def read_with_version(self, name: str) -> tuple[bytes, str] | None:
        data = self.read_bytes(name)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def replace_if_version(self, name: str, data: bytes, version: str) -> bool:
        """Replace the file if its content is still the one read. Not atomic across machines, unlike S3's If-Match:
        two workers taking over the same expired claim at the same instant may both win (and both do the file)."""
        current = self.read_with_version(name)
        if current is None or current[1] != version:
            return False
        self.write_bytes(name, data)
        return True
