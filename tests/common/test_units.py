"""Memory sizes as written in the configuration and on the command line."""

from __future__ import annotations

import pytest

from batch.common.units import GiB, MiB, parse_bytes


def test_parse_bytes() -> None:
    assert parse_bytes("1GiB") == GiB
    assert parse_bytes("1.5 G") == 3 * GiB // 2
    assert parse_bytes("512MiB") == 512 * MiB
    assert parse_bytes("300mb") == 300 * MiB
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")
