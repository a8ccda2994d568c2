"""whisperx-batch: turn a folder of recordings into timed, speaker-labelled transcripts.

The Python API (see batch.run.job): `Job(load_settings({...})).run()` or `run_job(settings)` returns a RunReport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batch.run.job import Job, run_job
    from batch.run.report import RunReport
    from batch.settings.options import Settings, load_settings

__all__ = ["Job", "RunReport", "Settings", "load_settings", "run_job"]

_LAZY = {
    "Job": "batch.run.job",
    "run_job": "batch.run.job",
    "RunReport": "batch.run.report",
    "Settings": "batch.settings.options",
    "load_settings": "batch.settings.options",
}


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so `import batch` (and the command line's start) stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batch' has no attribute {name!r}")
