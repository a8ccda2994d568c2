"""`install WHEELS SITE`: the carried wheels unpacked into SITE (a folder on PYTHONPATH), without pip.

A Python there may have no pip (`python3 -m pip` missing), and the kit installs its wheels with no dependencies
and runs no scripts, so pip adds nothing: a wheel is a zip whose top level is what goes into site-packages, and
whose `NAME-VERSION.data/purelib` and `/platlib` folders go there too (`scripts`, `headers` and `data` are not
needed by the steps and are left out). Each wheel is unpacked on its own, so that one that fails leaves the others
installed; every member's path is checked to stay inside SITE.
"""

from __future__ import annotations

import shutil
import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath

#: the folders of a wheel's `.data` directory that belong in site-packages (PEP 427)
SITE_SCHEMES = ("purelib", "platlib")


class UnsafeWheel(Exception):
    """A wheel member whose path would leave the site folder."""


def site_path(member: str) -> PurePosixPath | None:
    """Where `member` of a wheel goes, relative to the site folder; None for what the kit leaves out."""
    parts = PurePosixPath(member).parts
    if not parts or member.endswith("/"):
        return None
    if PurePosixPath(member).is_absolute() or ".." in parts:
        raise UnsafeWheel(f"wheel member {member!r} would leave the site folder")
    if parts[0].endswith(".data") and "-" in parts[0]:
        if len(parts) < 3 or parts[1] not in SITE_SCHEMES:
            return None
        return PurePosixPath(*parts[2:])
    return PurePosixPath(*parts)


def unpack_wheel(wheel: Path, site: Path) -> int:
    """Unpack `wheel` into `site`; the number of files written. Executable bits are kept (a zip's Unix mode)."""
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            relative = site_path(member.filename)
            if relative is None:
                continue
            target = site.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            mode = (member.external_attr >> 16) & 0o777
            if mode & stat.S_IXUSR:
                target.chmod(mode | stat.S_IRUSR | stat.S_IWUSR)
            written += 1
    return written


def install_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack every `*.whl` in `wheels` into `site`; one line per wheel, saying whether it was installed."""
    site.mkdir(parents=True, exist_ok=True)
    lines = []
    for wheel in sorted(wheels.glob("*.whl")):
        try:
            files = unpack_wheel(wheel, site)
        except (OSError, zipfile.BadZipFile, UnsafeWheel) as exc:
            lines.append(f"{wheel.name} NOT installed: {type(exc).__name__}: {exc}")
        else:
            lines.append(f"{wheel.name} installed ({files} files, unpacked)")
    return lines


def main(wheels: Path, site: Path) -> int:
    """Print one line per wheel; 1 when one was not installed (the steps that need it then say what fails)."""
    lines = install_wheels(wheels, site)
    print("\n".join(lines) if lines else f"no wheels in {wheels}")
    return 1 if any("NOT installed" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
