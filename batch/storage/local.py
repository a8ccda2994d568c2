"""A local folder as a store: recordings scanned recursively, outputs written atomically.

Every write is atomic: a temporary file in the same folder (hidden: `.NAME.XXXX.tmp`), flushed to disk,
then renamed over the target, so nothing half-written ever stands in place of a real file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from batch.common.errors import EnvironmentProblem
from batch.storage.base import ConditionalWritesUnsupported, InputChanged, InputFile, ListingCounts
from batch.storage.names import NAME_MAX_BYTES, is_selected, name_bytes, safe_relative

log = logging.getLogger(__name__)

# Read once, at import, while the process is single-threaded (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class LocalStore:
    """A folder. Hidden files and folders, links that lead outside it, and `skip` are never listed.

    With `only`, the store lists that one file of the folder (SOURCE given as a file), whatever its extension.
    """

    def __init__(
        self, root: str | os.PathLike[str], skip: str | os.PathLike[str] | None = None, only: str | None = None
    ):
        self.root = Path(root)
        self.only = only
        self.location = str(self.root / only) if only else str(self.root)
        self._skip = Path(skip).resolve() if skip is not None else None

    # --- reading recordings ------------------------------------------------------------------------------

    def check_readable(self, role: str = "SOURCE") -> None:
        if self.only is not None:
            if not (self.root / self.only).is_file() or not os.access(self.root / self.only, os.R_OK):
                raise EnvironmentProblem(f"{role} is not a readable file: {self.location}")
        elif not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
            raise EnvironmentProblem(f"{role} is not a readable folder: {self.root}")

    def list(
        self, include: Iterable[str] = (), exclude: Iterable[str] = (), counts: ListingCounts | None = None
    ) -> Iterator[InputFile]:
        """Yield the selected files, streaming, in a stable sorted order."""
        include, exclude, counts = tuple(include), tuple(exclude), counts or ListingCounts()
        for relative in self._files(counts.unreadable):
            key = relative.as_posix()
            counts.listed += 1
            if not is_selected(key, include, exclude, named=self.only is not None):
                continue
            try:
                stat = (self.root / relative).stat()
            except (FileNotFoundError, NotADirectoryError):
                # Removed (or its folder replaced) since its folder was read: nothing to do, and no reason to
                # stop the listing of every other file.
                log.warning("%s: gone from SOURCE while it was listed; skipped", key)
                continue
            counts.selected += 1
            yield InputFile(key=key, size=stat.st_size, version=version_of(stat))

    def _files(self, unreadable: list[tuple[str, str]]) -> Iterator[PurePosixPath]:
        if self.only is None:
            yield from self._walk_from(PurePosixPath(), unreadable=unreadable)
        elif (self.root / self.only).is_file():
            yield PurePosixPath(self.only)

    def list_names(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """Every file name in the folder `prefix` (all of the store when empty) and below, ending with `suffix`.

        A directory whose name ends with `suffix` is listed too: it stands where such a file belongs, and
        whoever reads it must hear of it (reading it raises IsADirectoryError)."""
        folder = prefix.strip("/")
        start = safe_relative(folder) if folder else PurePosixPath()
        for relative in self._walk_from(start, with_dirs=bool(suffix)):
            if relative.name.endswith(suffix):
                yield relative.as_posix()

    def open(self, key: str, size: int | None = None, version: str | None = None) -> BinaryIO:
        """The file; with `version` (its mtime as listed), only while it is that version (InputChanged otherwise)."""
        if version is None:
            return self.path(key).open("rb")
        return ListedVersion(self.path(key), version)

    def address(self, key: str) -> str:
        """Where the file is: its path."""
        return str(self.path(key))

    def current_version(self, key: str) -> str | None:
        try:
            return version_of(self.path(key).stat())
        except OSError:
            return None

    def fingerprint(self, item: InputFile) -> str:
        """A content hash: the same bytes give the same fingerprint wherever the file moved."""
        with self.open(item.key) as handle:
            return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()

    def _walk_from(
        self, start: PurePosixPath, with_dirs: bool = False, unreadable: list[tuple[str, str]] | None = None
    ) -> Iterator[PurePosixPath]:
        real_root = self.root.resolve()
        found = unreadable if unreadable is not None else []
        yield from self._walk(self.root / start, start, real_root, set(), with_dirs, found)

    def _walk(
        self,
        folder: Path,
        relative: PurePosixPath,
        real_root: Path,
        seen: set[Path],
        with_dirs: bool,
        unreadable: list[tuple[str, str]],
    ) -> Iterator[PurePosixPath]:
        real = folder.resolve()
        if real in seen or (self._skip is not None and real == self._skip):
            return
        seen = seen | {real}
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed (or replaced by a file) since its parent was read: nothing of it to do
        except OSError as exc:  # permissions, an I/O error: its files exist, and must not pass for done
            log.warning(
                "%s: this folder cannot be read (%s); its files are left for the next run", relative, exc.strerror
            )
            unreadable.append((relative.as_posix(), exc.strerror or type(exc).__name__))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                kind = _kind(entry, real_root)
            except (OSError, RuntimeError) as exc:  # a symbolic link that loops: that entry alone is left out
                log.warning("%s: cannot be followed (%s); skipped", (relative / entry.name).as_posix(), exc)
                continue
            if kind == "dir":
                if with_dirs:
                    yield relative / entry.name
                yield from self._walk(Path(entry.path), relative / entry.name, real_root, seen, with_dirs, unreadable)
            elif kind == "file":
                yield relative / entry.name

    # --- writing and reading named files -----------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.root / safe_relative(name)

    def check_writable(self, role: str = "DEST") -> None:
        """Create the folder if needed and prove a file can be written there."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise EnvironmentProblem(f"{role} is not writable: {self.root} ({exc.strerror or exc})") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _temporary_beside(target)
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

    def create_exclusive(self, name: str, data: bytes) -> str | None:
        """Create the file only if it does not exist: its version, or None when another writer was first."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written whole first, then linked into place: link() fails if the name exists, and nobody ever
        # reads a half-written claim.
        handle, temporary = _temporary_beside(target)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.link(temporary, target)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):  # link(2): no hard links on this filesystem
                raise ConditionalWritesUnsupported(f"{self.location}: {exc.strerror}") from exc
            raise
        finally:
            os.unlink(temporary)
        return _version(data)

    def read_with_version(self, name: str) -> tuple[bytes, str] | None:
        data = self.read_bytes(name)
        return None if data is None else (data, _version(data))

    def replace_if_version(self, name: str, data: bytes, version: str) -> str | None:
        """Replace the file if its content is still the one read. Not atomic across machines, unlike S3's If-Match:
        two workers taking over the same expired claim at the same instant may both win (and both do the file)."""
        current = self.read_with_version(name)
        if current is None or current[1] != version:
            return None
        self.write_bytes(name, data)
        return _version(data)

    def delete_if_version(self, name: str, version: str) -> bool:
        """Delete the file if its content is still that version (read, compare, delete: not atomic either)."""
        current = self.read_with_version(name)
        if current is None or current[1] != version:
            return False
        self.delete(name)
        return True


def version_of(stat: os.stat_result) -> str:
    """A folder file's version, as its listing, its current state and its open file all say it: its mtime in ns."""
    return str(stat.st_mtime_ns)


class ListedVersion(io.BufferedReader):
    """A file read as the version its listing saw: one replaced since (renamed over, rewritten) is refused when
    opened, and one rewritten while it was read is refused when closed, so that its bytes are never recorded under
    the version listed. Its descriptor is what the decoder's process reads."""

    def __init__(self, path: Path, version: str):
        super().__init__(io.FileIO(path, "rb"))
        self._version, self._path = version, path
        try:
            self._check("was replaced after it was listed")
        except InputChanged:
            super().close()
            raise

    def _check(self, what: str) -> None:
        if version_of(os.fstat(self.fileno())) != self._version:
            raise InputChanged(f"{self._path} {what}; its new version is done by the next run")

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._check("changed while it was read")
        finally:
            super().close()


def _kind(entry: os.DirEntry[str], real_root: Path) -> str | None:
    """ "dir", "file", or None: a link that leads outside SOURCE or to nothing, or something else (a FIFO)."""
    if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(real_root):
        return None
    if entry.is_dir():
        return "dir"
    return "file" if entry.is_file() else None


def _temporary_beside(target: Path) -> tuple[int, str]:
    """A new hidden temporary file beside `target`, `.NAME.XXXXXXXX.tmp`, with NAME cut so that the temporary's
    own name fits NAME_MAX wherever the target's does: (its descriptor, its path)."""
    name = target.name
    while name and name_bytes(f".{name}.{'X' * 8}.tmp") > NAME_MAX_BYTES:
        name = name[:-1]
    return tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
