"""Memory sizes: `parse_bytes` reads one written by a person (config, command line), `format_bytes` writes one for
the log. K/M/G/T are powers of 1024."""

from __future__ import annotations

import re

MiB = 1024**2
GiB = 1024**3


def format_bytes(count: int | float | None) -> str:
    """`1.2 GiB`, `512 MiB`; `unknown` for None."""
    if count is None:
        return "unknown"
    return f"{count / GiB:.1f} GiB" if count >= GiB else f"{count / MiB:.0f} MiB"


def parse_bytes(text: str) -> int:
    """A size like `1.5GiB`, `512 MiB`, `2G`, `300MB` or `1073741824` in bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"not a memory size: {text!r} (examples: 1GiB, 512MiB, 1.5G)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit or "_"))
