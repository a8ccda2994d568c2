"""What every command shares: settings loading, and one line (never a traceback) for an error."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from batch.common.errors import EXIT_ENVIRONMENT, BatchError, redact, type_name

if TYPE_CHECKING:  # pydantic and the settings load only when a command runs, not for --help
    from batch.settings.options import Settings


def guarded(command: Callable[[], int]) -> int:
    """Run a command body; a BatchError becomes its message on stderr and its exit code."""
    try:
        return command()
    except BatchError as exc:
        report_error(redact(str(exc)), type_name(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("whisperx-batch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a defect or an unforeseen environment fault: one line, never a traceback
        report_error(f"unexpected {type(exc).__name__}: {redact(str(exc))}", type(exc).__name__)
        return EXIT_ENVIRONMENT


def report_error(message: str, error_type: str) -> None:
    """The one line that says why a command stopped: JSON when the log is JSON, so an alert can read it."""
    from batch.common.logs import json_logging

    if json_logging():
        import logging

        fields = {"event": "error", "error_type": error_type}
        logging.getLogger("batch.cli").error("%s", message, extra={"fields": fields})
    else:
        print(f"whisperx-batch: error: {message}", file=sys.stderr)


def load_settings(flags: dict, config_path: str | None, logging_setup: bool = False) -> Settings:
    """The settings from flags, environment and config file; with `logging_setup`, the log set up by them."""
    from batch.common.logs import setup_logging
    from batch.settings.options import load_settings as load

    settings = load(flags, environ=os.environ, config_path=config_path)
    if logging_setup:
        setup_logging(settings.log_format, settings.quiet)
    return settings
