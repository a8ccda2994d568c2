"""The `whisperx-batch` command line: parse, build settings, call the runner, map the outcome to an exit code."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from batch.cli.corrections import corrections_app, review_command
from batch.cli.shared import guarded, load_settings
from batch.cli.speakers import speakers_app
from batch.cli.tools import doctor_command, models_app, report_command, status_command
from batch.common.version import __version__

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
    from batch.common.runtime import (
        THREAD_POOL_ENV_VARS,
        available_cpus,
        cuda_counts_by_pci_bus,
        pyannote_telemetry_off_unless_asked,
    )

    pyannote_telemetry_off_unless_asked()
    cuda_counts_by_pci_bus()
    # Before numpy and torch load: their thread pools are sized then (see batch.common.runtime.limit_thread_pools).

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
        str | None,
        Opt(
            help="ISO code (en) or name (Russian): forced, speech in other languages flagged; or auto: "
            "each stretch of speech in its own language.",
            rich_help_panel=MODEL,
        ),
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
    gpus: Annotated[
        str | None,
        Opt(
            help="One worker process per GPU: all, a count (2), or a list (0,2,3; device=1). Default: one GPU.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        Opt(help="On the CPU: worker processes, each with threads / N (default 1).", rich_help_panel=MODEL),
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
        Opt(
            help="pyannote VAD window step, s: smaller is slower, rarely different (default 2.5).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    chunk_size: Annotated[
        float | None, Opt(help="Longest speech chunk fed to Whisper, s (30).", rich_help_panel=MODEL)
    ] = None,
    languages: Annotated[
        str | None,
        Opt(
            help="With --language auto: read each stretch of speech in the likeliest of these (en,es,de).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    other_languages: Annotated[
        str | None,
        Opt(
            help="With a forced --language, speech detected in another language: transcribe (default: in its own "
            "language) | flag (read as --language); flagged and marked for review either way.",
            rich_help_panel=MODEL,
        ),
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
    hallucinations: Annotated[
        str | None,
        Opt(
            help="Text where nobody speaks: drop (default: out of the transcript, kept in the manifest) | flag "
            "(kept, marked for review) | off (whisperx's output as it is).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    hallucination_phrases: Annotated[
        str | None,
        Opt(
            help="A file of more known hallucinations, one phrase a line (with the weak-audio rule).",
            rich_help_panel=OUTPUT,
        ),
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
        Opt(
            "--highlight-words/--no-highlight-words",
            help="SRT/VTT: underline each aligned word as it is said.",
            rich_help_panel=OUTPUT,
        ),
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
    max_duration: Annotated[
        str | None,
        Opt(
            help="Longest recording, in seconds of audio; a longer one fails before it is decoded whole "
            "(default 7200; off: no limit).",
            rich_help_panel=STORE,
        ),
    ] = None,
    file_timeout: Annotated[
        str | None,
        Opt(
            help="Seconds a file may take, fetch to transcript; past it the file fails, naming its stage "
            "(default 14400; off: no limit).",
            rich_help_panel=STORE,
        ),
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
    queue: Annotated[
        str | None,
        Opt(
            help="SQS queue URL: take files from its messages (S3 event notifications or "
            '{"source": "s3://bucket/key"}) instead of SOURCE; see docs/queue.md.',
            rich_help_panel=SELECT,
        ),
    ] = None,
    queue_idle: Annotated[
        float | None,
        Opt(
            help="With --queue: exit 0 once the queue has been empty this many seconds (default: wait).",
            rich_help_panel=SELECT,
        ),
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
        Opt(
            help="Write Prometheus metrics to this file (*.prom, for node_exporter's textfile collector).",
            rich_help_panel=METRICS,
        ),
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
    price_per_hour: Annotated[
        float | None,
        Opt(help="The machine's price per hour, for the report page's cost per audio hour.", rich_help_panel=OUTPUT),
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
        from batch.cli.console import run_from_command_line

        return run_from_command_line(load_settings(flags, config_path=config, logging_setup=True))

    raise typer.Exit(guarded(job))


app.add_typer(models_app, name="models")
app.add_typer(corrections_app, name="corrections")
app.add_typer(speakers_app, name="speakers")
app.command("doctor")(doctor_command)
app.command("status")(status_command)
app.command("report")(report_command)
app.command("review")(review_command)


def main() -> None:
    """The `whisperx-batch` program (also `python -m batch`)."""
    # Process-wide and before any thread; here, not in the app, so that a program running the app in-process
    # (the tests) keeps its own malloc.
    from batch.cli.signals import exit_cleanly_on_signals
    from batch.common.runtime import reuse_freed_memory

    reuse_freed_memory()
    exit_cleanly_on_signals()
    app()
