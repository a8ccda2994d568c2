"""The `whisperx-batch` command line: parse, build settings, call the runner, map the outcome to an exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from batch import __version__
from batch.errors import EXIT_ENVIRONMENT, BatchError, redact

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
SPEAKERS = "Words and speakers"
DECODE = "Decoding (as the whisperx command line)"
STORE = "Storage and S3"
METRICS = "Metrics (Prometheus)"


def _decoding(help_text: str, *names: str) -> typer.models.OptionInfo:
    return Opt(*names, help=help_text, rich_help_panel=DECODE)


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
    # Before numpy and torch load: their thread pools are sized then (see batch.runtime.limit_thread_pools).
    from batch.runtime import THREAD_POOL_ENV_VARS, available_cpus

    for name in THREAD_POOL_ENV_VARS:
        os.environ.setdefault(name, str(available_cpus()))


@app.command("run")
def run_command(
    source: Annotated[
        str | None,
        typer.Argument(help="Folder of recordings (scanned recursively), one file, s3://bucket/prefix, or one object."),
    ] = None,
    out: Annotated[
        str | None, Opt("--out", "-o", help="Folder or s3://bucket/prefix for transcripts, manifests, reports.")
    ] = None,
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
    gpu_memory_reserve: Annotated[
        str | None,
        Opt(help="GPU memory left free when sizing batches (default 1GiB).", rich_help_panel=MODEL),
    ] = None,
    vad_method: Annotated[
        str | None, Opt(help="pyannote (bundled) | silero (ONNX, bundled): both offline.", rich_help_panel=MODEL)
    ] = None,
    vad_onset: Annotated[float | None, Opt(help="VAD onset threshold (0.5).", rich_help_panel=MODEL)] = None,
    vad_offset: Annotated[float | None, Opt(help="VAD offset threshold (0.363).", rich_help_panel=MODEL)] = None,
    vad_step: Annotated[
        float | None,
        Opt(help="pyannote VAD window step, s: smaller is slower, rarely different (default 2.5).",
            rich_help_panel=MODEL),
    ] = None,
    chunk_size: Annotated[
        float | None, Opt(help="Longest speech chunk fed to Whisper, s (30).", rich_help_panel=MODEL)
    ] = None,
    languages: Annotated[
        str | None, Opt(help="With --language auto: detect among these only (en,es,de).", rich_help_panel=MODEL)
    ] = None,
    task: Annotated[str | None, _decoding("transcribe | translate (to English).")] = None,
    initial_prompt: Annotated[str | None, _decoding("Text given to Whisper as if said before each chunk.")] = None,
    hotwords: Annotated[str | None, _decoding("Names and terms to spell as given (Jaxon, PyAnnote).")] = None,
    beam_size: Annotated[int | None, _decoding("Beam search width at temperature 0 (5).")] = None,
    best_of: Annotated[int | None, _decoding("Candidates sampled at a temperature above 0 (5).")] = None,
    patience: Annotated[float | None, _decoding("Beam search patience (1.0).")] = None,
    length_penalty: Annotated[float | None, _decoding("Length penalty exponent, 0-2 (1.0).")] = None,
    temperature: Annotated[float | None, _decoding("Sampling temperature, 0-1 (0: beam search).")] = None,
    temperature_increment_on_fallback: Annotated[
        str | None, _decoding("Read a failing chunk again this much hotter, up to 1.0 (a number, or none: default).")
    ] = None,
    compression_ratio_threshold: Annotated[float | None, _decoding("Fall back above this gzip ratio (2.4).")] = None,
    log_prob_threshold: Annotated[float | None, _decoding("Fall back below this mean log-probability (-1.0).")] = None,
    no_speech_threshold: Annotated[str | None, _decoding("Drop a chunk silent above this probability (none).")] = None,
    suppress_numerals: Annotated[
        bool | None,
        _decoding("Numbers as words: no digits, % or currency symbols.", "--suppress-numerals/--no-suppress-numerals"),
    ] = None,
    align: Annotated[
        bool | None,
        Opt("--align/--no-align", help="Time every word with wav2vec2 (default on).", rich_help_panel=SPEAKERS),
    ] = None,
    align_model: Annotated[
        list[str] | None,
        Opt(
            help="Alignment model: HF or torchaudio name, or folder, for every language; or LANG=MODEL "
            "(repeatable). Default: whisperx's model for the file's language.",
            rich_help_panel=SPEAKERS,
        ),
    ] = None,
    diarize: Annotated[
        bool | None,
        Opt("--diarize/--no-diarize", help="Label speakers with pyannote (default off).", rich_help_panel=SPEAKERS),
    ] = None,
    diarize_model: Annotated[
        str | None, Opt(help="Diarization pipeline: HF name or local folder.", rich_help_panel=SPEAKERS)
    ] = None,
    min_speakers: Annotated[int | None, Opt(help="At least this many speakers.", rich_help_panel=SPEAKERS)] = None,
    max_speakers: Annotated[int | None, Opt(help="At most this many speakers.", rich_help_panel=SPEAKERS)] = None,
    num_speakers: Annotated[int | None, Opt(help="Exactly this many speakers.", rich_help_panel=SPEAKERS)] = None,
    hf_token_file: Annotated[
        str | None, Opt(help="File holding the Hugging Face token (else HF_TOKEN).", rich_help_panel=SPEAKERS)
    ] = None,
    channels: Annotated[
        str | None, Opt(help="mix (default): one mono track | split: a speaker per channel.", rich_help_panel=SPEAKERS)
    ] = None,
    channel_speakers: Annotated[
        str | None, Opt(help="Split channels' speakers: agent,customer (CHANNEL_0, ...).", rich_help_panel=SPEAKERS)
    ] = None,
    formats: Annotated[
        list[str] | None,
        Opt(
            help="Extra formats: srt, vtt, txt, tsv, turns, rttm, or all (comma list or repeated); json always.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    max_line_width: Annotated[
        int | None, Opt(help="SRT/VTT: characters a line (42; a CJK one counts two).", rich_help_panel=OUTPUT)
    ] = None,
    max_line_count: Annotated[int | None, Opt(help="SRT/VTT: lines a cue (2).", rich_help_panel=OUTPUT)] = None,
    max_cue_duration: Annotated[
        float | None, Opt(help="SRT/VTT: longest a cue stays on screen, s (7).", rich_help_panel=OUTPUT)
    ] = None,
    highlight_words: Annotated[
        bool | None,
        Opt("--highlight-words/--no-highlight-words", help="SRT/VTT: underline each aligned word as it is said.",
            rich_help_panel=OUTPUT),
    ] = None,
    include: Annotated[
        list[str] | None, Opt(help="Only keys matching this glob (repeatable).", rich_help_panel=SELECT)
    ] = None,
    exclude: Annotated[
        list[str] | None, Opt(help="Skip keys matching this glob (repeatable).", rich_help_panel=SELECT)
    ] = None,
    allow_empty: Annotated[
        bool | None,
        Opt(
            "--allow-empty/--no-allow-empty",
            help="Exit 0 when SOURCE has nothing selected (a drop folder); else that is exit 2.",
            rich_help_panel=SELECT,
        ),
    ] = None,
    prefetch: Annotated[
        int | None, Opt(help="Files fetched and decoded ahead of the model (0-8, default 2).", rich_help_panel=STORE)
    ] = None,
    s3_endpoint_url: Annotated[
        str | None, Opt(help="S3-compatible endpoint (MinIO, Ceph, R2); else AWS_ENDPOINT_URL.", rich_help_panel=STORE)
    ] = None,
    spool_dir: Annotated[
        str | None, Opt(help="Where S3 downloads are spooled (default: the temp folder).", rich_help_panel=STORE)
    ] = None,
    max_input_size: Annotated[
        str | None, Opt(help="Largest S3 object downloaded; bigger ones fail (default 20GiB).", rich_help_panel=STORE)
    ] = None,
    shard: Annotated[
        str | None,
        Opt(
            help="I/N: take only shard I (0-based) of N (default: from JOB_COMPLETION_INDEX or "
            "AWS_BATCH_JOB_ARRAY_INDEX).",
            rich_help_panel=SELECT,
        ),
    ] = None,
    claim: Annotated[
        bool | None,
        Opt(
            "--claim/--no-claim",
            help="Claim each file in DEST before work, so plain parallel workers share a job.",
            rich_help_panel=SELECT,
        ),
    ] = None,
    claim_ttl: Annotated[
        float | None,
        Opt(help="Seconds before a claim expires and may be taken over (default 7200).", rich_help_panel=SELECT),
    ] = None,
    grace_seconds: Annotated[
        float | None,
        Opt(
            help="On SIGTERM/SIGINT, how long the file in progress may take to finish (default 25).",
            rich_help_panel=SELECT,
        ),
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
    progress_interval: Annotated[
        float | None,
        Opt(help="Seconds between progress log lines when stderr is not a terminal (0: none).", rich_help_panel=OUTPUT),
    ] = None,
    metrics_textfile: Annotated[
        str | None,
        Opt(help="Write Prometheus metrics to this file (*.prom, for node_exporter's textfile collector).",
            rich_help_panel=METRICS),
    ] = None,
    metrics_pushgateway: Annotated[
        str | None, Opt(help="Push Prometheus metrics to this Pushgateway URL.", rich_help_panel=METRICS)
    ] = None,
    metrics_job: Annotated[
        str | None, Opt(help="The Pushgateway job name (default whisperx_batch).", rich_help_panel=METRICS)
    ] = None,
    metrics_interval: Annotated[
        float | None, Opt(help="Seconds between metric updates during the run (default 30).", rich_help_panel=METRICS)
    ] = None,
    keep_run_reports: Annotated[
        int | None,
        Opt(help="Run reports kept in DEST/_runs/, newest first (default 50; 0 keeps all).", rich_help_panel=OUTPUT),
    ] = None,
) -> None:
    """Transcribe every recording under SOURCE into --out. Reruns skip what is done.

    Exit codes: 0 all succeeded or skipped; 1 some files failed; 2 usage or config error (also: nothing selected
    in SOURCE, unless --allow-empty); 3 environment error (model missing, device unusable, DEST not writable).
    """
    flags = {key: value for key, value in locals().items() if key != "config" and value is not None}
    for key in ("formats", "include", "exclude", "align_model"):
        if key in flags:
            flags[key] = tuple(flags[key])

    def job() -> int:
        from batch.console import run_from_command_line

        return run_from_command_line(load_settings(flags, config_path=config, logging_setup=True))

    raise typer.Exit(_guarded(job))


def _guarded(command: Callable[[], int]) -> int:
    """Run a command body; a BatchError becomes its message on stderr and its exit code."""
    try:
        return command()
    except BatchError as exc:
        _error(redact(str(exc)), type(exc).__name__)
        return exc.exit_code
    except KeyboardInterrupt:
        print("whisperx-batch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a defect or an unforeseen environment fault: one line, never a traceback
        _error(f"unexpected {type(exc).__name__}: {redact(str(exc))}", type(exc).__name__)
        return EXIT_ENVIRONMENT


def _error(message: str, error_type: str) -> None:
    """The one line that says why a command stopped: JSON when the log is JSON, so an alert can read it."""
    from batch.logs import json_logging

    if json_logging():
        import logging

        fields = {"event": "error", "error_type": error_type}
        logging.getLogger("batch.cli").error("%s", message, extra={"fields": fields})
    else:
        print(f"whisperx-batch: error: {message}", file=sys.stderr)


models_app = typer.Typer(help="Manage the model cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("pull")
def models_pull_command(
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    model: Annotated[str | None, Opt(help="ASR model to cache.")] = None,
    model_dir: Annotated[str | None, Opt(help="Cache folder (default: HF_HOME).")] = None,
    align_languages: Annotated[
        str | None,
        Opt(help="Comma list of languages whose alignment models to cache (default: the job's language, or en)."),
    ] = None,
    align_model: Annotated[
        list[str] | None, Opt(help="Alignment model(s) to cache instead of the defaults (as for run).")
    ] = None,
    align: Annotated[bool | None, Opt("--align/--no-align", help="Cache alignment models (default on).")] = None,
    diarize: Annotated[bool | None, Opt("--diarize/--no-diarize", help="Also cache the diarization model.")] = None,
    diarize_model: Annotated[str | None, Opt(help="Diarization pipeline to cache.")] = None,
    hf_token_file: Annotated[str | None, Opt(help="File holding the Hugging Face token (else HF_TOKEN).")] = None,
) -> None:
    """Download the ASR, alignment and diarization models into the cache ahead of time, with the sentence data
    alignment needs, so a container or an air-gapped machine can run with HF_HUB_OFFLINE=1.

    Exit codes: 0 every model is cached; 2 usage or config error; 3 some model could not be fetched.
    """
    flags = {key: value for key, value in locals().items() if key not in ("config", "align_languages")}
    flags = {key: value for key, value in flags.items() if value is not None}
    if "align_model" in flags:
        flags["align_model"] = tuple(flags["align_model"])

    def pull_all() -> int:
        from batch.config import normalize_language
        from batch.logs import prints_to_log
        from batch.models import pull

        settings = load_settings(flags, config_path=config, logging_setup=True)
        default = settings.language if settings.language != "auto" else "en"
        languages = tuple(normalize_language(x) for x in (align_languages or default).split(",") if x.strip())
        with prints_to_log():
            results = pull(settings, languages if settings.align else ())
        for item in results:
            detail = f"  {item.detail}" if item.detail else ""
            print(f"{item.status:6} {item.kind:8} {item.name}{detail}")
        return EXIT_ENVIRONMENT if any(item.status != "ok" for item in results) else 0

    raise typer.Exit(_guarded(pull_all))


def load_settings(flags: dict, config_path: str | None, logging_setup: bool = False):  # noqa: ANN201
    from batch.config import load_settings as load
    from batch.logs import setup_logging

    settings = load(flags, config_path=config_path)
    if logging_setup:
        setup_logging(settings.log_format, settings.quiet)
    return settings


@app.command("doctor")
def doctor_command(
    source: Annotated[str | None, typer.Argument(help="Folder of recordings to check (optional).")] = None,
    out: Annotated[str | None, Opt("--out", "-o", help="Output folder to check (optional).")] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    model: Annotated[str | None, Opt(help="Whisper name, HF repo id, or local CTranslate2 folder.")] = None,
    model_dir: Annotated[str | None, Opt(help="Where downloaded models are cached.")] = None,
    device: Annotated[str | None, Opt(help="auto | cuda | cpu: what the device checks judge by.")] = None,
    language: Annotated[str | None, Opt(help="The job's language (auto: the English aligner is checked).")] = None,
    align: Annotated[bool | None, Opt("--align/--no-align", help="Check the alignment model (default on).")] = None,
    diarize: Annotated[bool | None, Opt("--diarize/--no-diarize", help="Check the diarization model.")] = None,
    hf_token_file: Annotated[str | None, Opt(help="File holding the Hugging Face token (else HF_TOKEN).")] = None,
    json_output: Annotated[bool, Opt("--json", help="One JSON document instead of the table.")] = False,
) -> None:
    """Check that this machine can run the job: device, ffmpeg, models, token, SOURCE, DEST.

    Reads the job's settings as `run` does (flags, WHISPERX_BATCH_* variables, config file).
    Exit codes: 0 ready (warnings allowed); 2 usage or config error; 3 something would stop a run.
    """
    flags = {key: value for key, value in locals().items() if key not in ("config", "json_output")}
    flags = {key: value for key, value in flags.items() if value is not None}

    def diagnose() -> int:
        from batch.doctor import checks_json, exit_code, format_checks, run_doctor
        from batch.logs import prints_to_log

        settings = load_settings(flags, config_path=config, logging_setup=True)
        with prints_to_log() as stdout:
            checks = run_doctor(settings)
        print(checks_json(checks) if json_output else format_checks(checks), file=stdout)
        return exit_code(checks)

    raise typer.Exit(_guarded(diagnose))


@app.command("status")
def status_command(
    dest: Annotated[
        str | None,
        typer.Argument(help="The job's output folder or s3:// prefix (default: `out` of the config or environment)."),
    ] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    json_output: Annotated[bool, Opt("--json", help="One JSON document for machines.")] = False,
) -> None:
    """Counts of succeeded and failed files, audio hours, and each failure's reason, from DEST's manifests.

    Exit codes: 0 no file failed and the latest run ended cleanly; 1 some files failed, or the latest run was
    stopped (by an error or a signal); 2 usage or config error; 3 DEST not readable.
    """

    def report() -> int:
        from batch.status import collect_status, format_status, status_exit_code, to_json

        settings = load_settings({}, config_path=config)
        status = collect_status(dest or settings.out, s3_endpoint_url=settings.s3_endpoint_url)
        print(to_json(status) if json_output else format_status(status))
        return status_exit_code(status)

    raise typer.Exit(_guarded(report))


def main() -> None:
    app()
