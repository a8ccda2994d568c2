"""Names: which keys are selected, which keys are safe paths, and what outputs of a key are called.

A key is an input's name relative to SOURCE, in POSIX form (`calls/2024/a.wav`); on S3 any string can be
one, `../x.wav` and `a//b.wav` included. Outputs of a key are named `output_base(key)` + a suffix under DEST.

The output base of a key is the key, component by component (split on `/`), with two rules applied in order:

1. every `%` is written `%25`, and every character UTF-8 cannot hold is written as a `%` escape: a byte of a
   non-UTF-8 file name (which Python reads as the surrogate escape U+DC80-U+DCFF) as `%` and its two hex digits
   (`\\udcff` -> `%FF`, always 80 to FF), any other lone surrogate as `%u` and its four (`\\ud800` -> `%uD800`);
2. then a component that is empty or all dots and means something to a file system is respelled:
   "" -> `%2F`, "." -> `%2E`, ".." -> `%2E%2E`.

Every other character (spaces, unicode, `+&=`) is kept as it is, so `calls/été 1.wav` is written as
`calls/été 1.wav.json`. Every output name is valid UTF-8, so every DEST can hold it: S3 keys must be UTF-8, and
the same name on every store lets outputs be copied from one to another. (Before, the surrogate escapes were kept as is
on a local DEST: outputs of such a file written then are redone once, under the new name.)

3. Last, a component longer than MAX_COMPONENT_BYTES (counted in UTF-8 bytes, as file systems count NAME_MAX)
   is shortened: its start, cut to fit, then `%~`, the first 16 hex digits of the SHA-256 of the key's whole
   component, and the component's extension (`.wav`), so that outputs keep room for their suffixes
   (`.manifest.json`) under the 255 bytes a name may have. The manifest's `input.key` keeps the full key.

Why this can never write outside DEST: no output component is empty, `.` or `..`, so a folder or an S3
prefix (where some stores and proxies collapse dot segments) sees only plain names below DEST.

Why two different keys never share outputs (the rule is injective): after rule 1 every `%` in a component is
followed by `25`, by a byte's `80` to `FF` or by `u`, while each respelling of rule 2 holds a `%` followed by
`2F` or `2E`; so a respelled component can never equal an escaped one, and the respellings differ from each
other. Rule 1 alone is undone by reading `%25` back as `%`, `%XX` as the byte's surrogate escape and `%uXXXX` as
that surrogate: a key's own `%FF` is written `%25FF`, never `%FF`. No component gains or loses a `/`, so the
components of a key are found again by splitting its output base on `/`. Hence `../x.wav` -> `%2E%2E/x.wav` and
`%2E%2E/x.wav` -> `%252E%252E/x.wav`. A shortened component (rule 3) holds `%~`, which no other spelling does
(their every `%` is followed by `25`, `2F`, `2E`, `8`-`F` or `u`), and two shortened ones differ in their hash
unless SHA-256's first 64 bits collide. Every file of a long folder stays in one folder: a component's spelling
depends on that component alone.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

# Containers and codecs people record or export calls, interviews, podcasts and meetings in.
MEDIA_EXTENSIONS = frozenset(
    """
    wav wave mp3 m4a m4b aac flac ogg oga opus spx webm weba mp4 m4v mkv mka mov avi wmv wma
    aif aiff aifc amr 3gp 3g2 caf wv ac3 mpg mpeg mp2 ts mts m2ts vob flv
    """.split()
)

# `%`, and the lone surrogates a str may hold but UTF-8 (and so an S3 key) cannot.
_ESCAPED_CHARACTERS = re.compile("[%\ud800-\udfff]")
_SURROGATE_ESCAPE_OFFSET = 0xDC00  # os.fsdecode reads an undecodable byte b as chr(0xDC00 + b)
_SURROGATE_ESCAPES_FROM, _SURROGATE_ESCAPES_TO = 0xDC80, 0xDCFF
_COMPONENT_SPELLINGS = {"": "%2F", ".": "%2E", "..": "%2E%2E"}

NAME_MAX_BYTES = 255  # the longest file name most file systems take (ext4, XFS, Btrfs, APFS), in bytes
# Kept free in every component for what an output adds to its name: `.manifest.json`, the longest, has 14 bytes.
SUFFIX_ROOM_BYTES = 16
MAX_COMPONENT_BYTES = NAME_MAX_BYTES - SUFFIX_ROOM_BYTES
_SHORTENED_MARK = "%~"
_HASH_DIGITS = 16
_KEPT_EXTENSION_BYTES = 16  # an extension longer than this is not one worth keeping in a shortened name


def output_base(key: str) -> str:
    """The name the outputs of `key` are written under (see the module's docstring for the rule)."""
    return "/".join(_spell(part) for part in key.split("/"))


def _spell(component: str) -> str:
    escaped = _escaped(component)
    spelled = _COMPONENT_SPELLINGS.get(escaped, escaped)
    return spelled if name_bytes(spelled) <= MAX_COMPONENT_BYTES else _shortened(component)


def _escaped(text: str) -> str:
    """Rule 1: `%` and every character UTF-8 cannot hold written as `%` escapes."""
    return _ESCAPED_CHARACTERS.sub(lambda match: _escape_character(match.group()), text)


def _escape_character(character: str) -> str:
    if character == "%":
        return "%25"
    code = ord(character)
    if _SURROGATE_ESCAPES_FROM <= code <= _SURROGATE_ESCAPES_TO:
        return f"%{code - _SURROGATE_ESCAPE_OFFSET:02X}"  # the byte os.fsdecode could not read: 0x80 to 0xFF
    return f"%u{code:04X}"  # any other lone surrogate (a JSON string can hold one)


def name_bytes(name: str) -> int:
    """A name's length as a file system counts it, in bytes (a non-UTF-8 name's surrogate escapes counted at
    three, never fewer than they take)."""
    return len(name.encode("utf-8", "surrogatepass"))


def _shortened(component: str) -> str:
    """Rule 3: the start of `component`, `%~`, a hash of all of it, and its extension."""
    digest = hashlib.sha256(component.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_DIGITS]
    extension = PurePosixPath(component).suffix
    if name_bytes(extension) > _KEPT_EXTENSION_BYTES:
        extension = ""
    tail = _SHORTENED_MARK + digest + _escaped(extension)
    budget = MAX_COMPONENT_BYTES - name_bytes(tail)
    stem, used = [], 0
    for character in component[: len(component) - len(extension)]:  # whole escapes only, never one cut in half
        spelled = _escaped(character)
        used += name_bytes(spelled)
        if used > budget:
            break
        stem.append(spelled)
    return "".join(stem) + tail


def safe_relative(key: str) -> PurePosixPath:
    """A key as a relative path that cannot climb out of its root; refuses anything else (ValueError)."""
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts) or "\x00" in key:
        raise ValueError(f"unsafe key {key!r}")
    return PurePosixPath(*parts)


def is_hidden(name: str) -> bool:
    """A name with a component that starts with a dot (`.cache/a.wav`, `.a.json.k2j3.tmp`); `.` and `..` are not."""
    return any(part.startswith(".") and part not in (".", "..") for part in name.split("/"))


def is_selected(key: str, include: Iterable[str] = (), exclude: Iterable[str] = (), named: bool = False) -> bool:
    """Whether a key is taken: by media extension, or by --include globs when given; never if excluded.

    Globs follow fnmatch, matched against the whole key, so `*` also crosses folders, and ignore case as the
    extension filter does (`*.wav` takes `CALL.WAV`). A `named` key (SOURCE is that one file) needs no media
    extension.
    """
    include, exclude = tuple(include), tuple(exclude)
    if include:
        chosen = any(_matches(key, pattern) for pattern in include)
    else:
        chosen = named or PurePosixPath(key).suffix.lower().lstrip(".") in MEDIA_EXTENSIONS
    return chosen and not any(_matches(key, pattern) for pattern in exclude)


def _matches(key: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(key.lower(), pattern.lower())
