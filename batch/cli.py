"""The `whisperx-batch` command line: parse, build settings, call the runner, map the outcome to an exit code."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from batch import __version__
from batch.errors import BatchError, redact

app = typer.Typer(
    name="whisperx-batch",
    help="Turn a folder of recordings into transcripts (JSON + manifest per file) with one WhisperX pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Opt = typer.Option
OUTPUT = "Output"
MODEL = "Model"
SELECT = "Selection"


def _version(value: bool) -> None:
    if value:
        print(f"whisperx-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, Opt("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """whisperx-batch: a batch job runner for WhisperX."""
    # pyannote.audio 4 sends usage telemetry on every model load and run unless told not to; an unattended
    # job over people's recordings should not phone home. A user can still opt in by setting it to 1.
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


@app.command("run")
def run_command(
    source: Annotated[str | None, typer.Argument(help="Folder of recordings (scanned recursively).")] = None,
    out: Annotated[str | None, Opt("--out", "-o", help="Folder for transcripts, manifests and run reports.")] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (see jobs.example.toml).")] = None,
    model: Annotated[
        str | None,
        Opt(
            help="Whisper name (large-v3, tiny.en, ...), HF repo id, or local CTranslate2 folder.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    model_dir: Annotated[str | None, Opt(help="Where downloaded models are cached.", rich_help_panel=MODEL)] = None,
    language: Annotated[
        str | None, Opt(help="ISO code (en), name (Russian), or auto: detected per file.", rich_help_panel=MODEL)
    ] = None,
    device: Annotated[
        str | None, Opt(help="auto | cuda | cpu (auto: cuda when usable).", rich_help_panel=MODEL)
    ] = None,
    compute_type: Annotated[
        str | None, Opt(help="float16 (cuda default), int8 (cpu default), float32, ...", rich_help_panel=MODEL)
    ] = None,
    batch_size: Annotated[int | None, Opt(help="ASR batch size (default 16).", rich_help_panel=MODEL)] = None,
    threads: Annotated[
        int | None, Opt(help="CPU threads (default: the CPUs this process may use).", rich_help_panel=MODEL)
    ] = None,
    vad_method: Annotated[str | None, Opt(help="pyannote (bundled) | silero.", rich_help_panel=MODEL)] = None,
    vad_onset: Annotated[float | None, Opt(help="VAD onset threshold (0.5).", rich_help_panel=MODEL)] = None,
    vad_offset: Annotated[float | None, Opt(help="VAD offset threshold (0.363).", rich_help_panel=MODEL)] = None,
    chunk_size: Annotated[
        float | None, Opt(help="Longest speech chunk fed to Whisper, s (30).", rich_help_panel=MODEL)
    ] = None,
    formats: Annotated[
        list[str] | None,
        Opt(help="Extra formats: srt, vtt, txt, tsv (comma list or repeated); json always.", rich_help_panel=OUTPUT),
    ] = None,
    include: Annotated[
        list[str] | None, Opt(help="Only keys matching this glob (repeatable).", rich_help_panel=SELECT)
    ] = None,
    exclude: Annotated[
        list[str] | None, Opt(help="Skip keys matching this glob (repeatable).", rich_help_panel=SELECT)
    ] = None,
    force: Annotated[
        bool | None, Opt("--force/--no-force", help="Redo files already done.", rich_help_panel=SELECT)
    ] = None,
    dry_run: Annotated[
        bool | None,
        Opt("--dry-run/--no-dry-run", help="Print the keys that would be processed.", rich_help_panel=SELECT),
    ] = None,
    quiet: Annotated[
        bool | None, Opt("--quiet/--no-quiet", "-q", help="Only warnings and the summary.", rich_help_panel=OUTPUT)
    ] = None,
    log_format: Annotated[str | None, Opt(help="text | json (one JSON object a line).", rich_help_panel=OUTPUT)] = None,
) -> None:
    """Transcribe every recording under SOURCE into --out. Reruns skip what is done.

    Exit codes: 0 all succeeded or skipped; 1 some files failed; 2 usage or config error;
    3 environment error (model missing, device unusable, DEST not writable).
    """
    flags = {key: value for key, value in locals().items() if key != "config" and value is not None}
    from batch.config import load_settings

    for key in ("formats", "include", "exclude"):
        if key in flags:
            flags[key] = tuple(flags[key])
    try:
        settings = load_settings(flags, config_path=config)
        from batch.logs import setup_logging
        from batch.runner import run_job

        setup_logging(settings.log_format, settings.quiet)

        code = run_job(settings)
    except BatchError as exc:
        print(f"whisperx-batch: error: {redact(str(exc))}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("whisperx-batch: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def main() -> None:
    app()
