"""The Python API is what `batch` exports: every name resolves, lazily (importing `batch` stays light), and
docs/python-api.md names each one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import batch

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves_and_is_documented() -> None:
    documented = (ROOT / "docs" / "python-api.md").read_text()
    for name in batch.__all__:
        assert getattr(batch, name) is not None
        assert f"`{name}`" in documented or f"batch.{name}" in documented, name
    assert batch.Job.__module__ == "batch.run.job" and batch.Pipeline.__module__ == "batch.engine.pipeline"


def test_importing_batch_loads_none_of_the_rooms() -> None:
    program = "import sys, batch; print(sorted(m for m in sys.modules if m.startswith('batch.')))"
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
