"""whisperx-batch: turn a folder of recordings into timed, speaker-labelled transcripts.

The Python API (docs/python-api.md) is what this module exports: `Job(load_settings({...})).run()` or
`run_job(settings)` returns a RunReport; `Manifest` and `RunReport` read DEST's records back; `FileEvent` is what
`Job(on_file=...)` hears; `Pipeline` (with `DecodedFile`, `FileOutcome`) is the interface a custom pipeline
implements; `reuse_freed_memory` is the malloc setting the command line makes. Where they live inside the package
(its rooms: docs/how-it-runs.md) may change; these names stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch.common.runtime import reuse_freed_memory
    from batch.common.version import __version__ as __version__
    from batch.engine.pipeline import DecodedFile, FileOutcome, Pipeline
    from batch.run.job import Job, run_job
    from batch.run.manifest import Manifest
    from batch.run.report import RunReport
    from batch.run.tally import FileEvent
    from batch.settings.options import Settings, load_settings

__all__ = [
    "DecodedFile",
    "FileEvent",
    "FileOutcome",
    "Job",
    "Manifest",
    "Pipeline",
    "RunReport",
    "Settings",
    "load_settings",
    "reuse_freed_memory",
    "run_job",
]

_LAZY = {
    "Job": "batch.run.job",
    "run_job": "batch.run.job",
    "RunReport": "batch.run.report",
    "Manifest": "batch.run.manifest",
    "FileEvent": "batch.run.tally",
    "Settings": "batch.settings.options",
    "load_settings": "batch.settings.options",
    "Pipeline": "batch.engine.pipeline",
    "DecodedFile": "batch.engine.pipeline",
    "FileOutcome": "batch.engine.pipeline",
    "reuse_freed_memory": "batch.common.runtime",
    "__version__": "batch.common.version",
}


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so `import batch` (and the command line's start) stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batch' has no attribute {name!r}")
