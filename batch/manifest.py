"""Per-file manifests: the record of what was done, and the only mark that a file is done.

A manifest is written last, atomically. A file counts as done only when its manifest says
`succeeded`, for the same input (fingerprint) and the same settings hash, and its outputs exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from batch.storage import Dest, InputFile, output_base

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
RUNS_FOLDER = "_runs"


def manifest_name(key: str) -> str:
    return output_base(key) + MANIFEST_SUFFIX


FORMAT_SUFFIXES = {"turns": "turns.json"}


def output_name(key: str, fmt: str) -> str:
    return f"{output_base(key)}.{FORMAT_SUFFIXES.get(fmt, fmt)}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_manifest(dest: Dest, key: str) -> dict[str, Any] | None:
    raw = dest.read_bytes(manifest_name(key))
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError:
        return None  # unreadable: treated as not done, and rewritten
    return manifest if isinstance(manifest, dict) else None


def is_done(
    manifest: dict[str, Any] | None,
    item: InputFile,
    settings_hash: str,
    fingerprint: Callable[[InputFile], str],
    dest: Dest,
) -> bool:
    """Whether `item` was already transcribed with these settings, so a rerun can skip it.

    The input is the same when size and version (mtime, ETag) match; when only the version moved
    (a copy, a touch), the content fingerprint decides.
    """
    if not manifest or manifest.get("status") != "succeeded" or manifest.get("settings_hash") != settings_hash:
        return False
    recorded = manifest.get("input") or {}
    if recorded.get("key") != item.key or recorded.get("size") != item.size:
        return False
    if recorded.get("version") != item.version and recorded.get("fingerprint") != fingerprint(item):
        return False
    outputs = manifest.get("outputs")
    return bool(outputs) and all(isinstance(name, str) and dest.exists(name) for name in outputs)


def encode(document: dict[str, Any]) -> bytes:
    # backslashreplace: a file name that is not valid UTF-8 (kept by Python as lone surrogates) is written as
    # a JSON \udcXX escape, so the JSON stays valid and the key reads back exactly.
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8", "backslashreplace")
