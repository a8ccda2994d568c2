"""The command line: `whisperx-batch run`, `doctor`, `status`, `models pull`, `corrections apply`, and what a
terminal or a scheduler sees around a run (the progress bar or log, signals, the summary, one line for an error).

May import every room below it: run, engine, formats, settings, storage, common. Nothing imports it.
"""

from batch.cli.app import app, main

__all__ = ["app", "main"]
