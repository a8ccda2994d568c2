"""whisperx-batch: turn a folder of recordings into timed, speaker-labelled transcripts.

The Python API (see batch.job): `Job(load_settings({...})).run()` or `run_job(settings)` returns a RunReport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batch.config import Settings, load_settings
    from batch.job import Job, run_job
    from batch.report import RunReport

__all__ = ["Job", "RunReport", "Settings", "load_settings", "run_job"]

_LAZY = {
    "Job": "batch.job",
    "run_job": "batch.job",
    "RunReport": "batch.report",
    "Settings": "batch.config",
    "load_settings": "batch.config",
}


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so `import batch` (and the command line's start) stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batch' has no attribute {name!r}")
