"""How the program ends on SIGTERM and SIGINT outside a run's own handling (`batch.cli.console.graceful_stop`):
always with an exit code that docs/reruns-and-exit-codes.md lists, and at once, as the signal's default would."""

from __future__ import annotations

import atexit
import signal
from typing import Any

from batch.common.errors import exit_code_for_signal
from batch.common.runtime import exit_at_once

# The run's exit code once all its work is written: what a signal that comes after it exits with.
_exit_code_when_over: int | None = None


def exit_cleanly_on_signals() -> None:
    """For the whole life of the program (its entry point calls this first): SIGTERM, and SIGINT once the run is
    over, end the process at once with an exit code that docs/reruns-and-exit-codes.md lists, never by the signal
    itself (a parent would see -15). Before a run: 143 (SIGINT stays Python's KeyboardInterrupt, said as 130).
    During a run, `graceful_stop` handles them. After it, with all work written: the run's own code, the one its
    summary says. The process ends without waiting for library threads (a model download's workers would hold a
    SystemExit until they finish), as the default action did, its output flushed first. Process-wide, so not for
    a program that runs the app in-process."""

    def on_signal(signum: int, _frame: Any) -> None:
        if _exit_code_when_over is None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        exit_at_once(_exit_code_when_over if _exit_code_when_over is not None else exit_code_for_signal(signum))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    atexit.register(_ignore_signals_while_python_shuts_down)


def _ignore_signals_while_python_shuts_down() -> None:
    # Registered first, so the last exit callback to run. After it Python finalizes, and on the way resets every
    # Python-level handler to the default action (a late SIGTERM would then kill the process: -15), but it leaves an
    # ignored signal ignored. The process is ending with its own exit code anyway.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def run_over(exit_code: int) -> None:
    """All of the run's work is written: from now on a signal ends the process with the run's own exit code."""
    global _exit_code_when_over
    _exit_code_when_over = exit_code
