"""The commands around a run: `doctor`, `status` and `models pull`."""

from __future__ import annotations

from typing import Annotated

import typer

from batch.cli.shared import guarded, load_settings
from batch.common.errors import EXIT_ENVIRONMENT

Opt = typer.Option


models_app = typer.Typer(help="Manage the model cache.", no_args_is_help=True)


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
        from batch.common.logs import prints_to_log
        from batch.run.pull import pull
        from batch.settings.values import normalize_language

        settings = load_settings(flags, config_path=config, logging_setup=True)
        default = settings.language if settings.language != "auto" else "en"
        languages = tuple(normalize_language(x) for x in (align_languages or default).split(",") if x.strip())
        with prints_to_log():
            results = pull(settings, languages if settings.align else ())
        for item in results:
            detail = f"  {item.detail}" if item.detail else ""
            print(f"{item.status:6} {item.kind:8} {item.name}{detail}")
        return EXIT_ENVIRONMENT if any(item.status != "ok" for item in results) else 0

    raise typer.Exit(guarded(pull_all))


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
        from batch.cli.doctor import checks_json, exit_code, format_checks, run_doctor
        from batch.common.logs import prints_to_log

        settings = load_settings(flags, config_path=config, logging_setup=True)
        with prints_to_log() as stdout:
            checks = run_doctor(settings)
        print(checks_json(checks) if json_output else format_checks(checks), file=stdout)
        return exit_code(checks)

    raise typer.Exit(guarded(diagnose))


def report_command(
    dest: Annotated[
        str | None,
        typer.Argument(help="The job's output folder or s3:// prefix (default: `out` of the config or environment)."),
    ] = None,
    out: Annotated[
        str | None, Opt("--out", "-o", help="Write the page to this local file instead of DEST/_runs/index.html.")
    ] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    price_per_hour: Annotated[
        float | None, Opt(help="The machine's price per hour, for the cost per audio hour (default: the config's).")
    ] = None,
) -> None:
    """Write one HTML page for DEST as a whole: every run report kept, the latest outcome of every file, plots, and
    the cost per audio hour; self-contained (opens from disk, fetches nothing).

    Exit codes: 0 written; 2 usage or config error; 3 DEST not readable, or the page could not be written.
    """

    def write() -> int:
        from batch.run.report_pages import dest_page, write_dest_page

        settings = load_settings({"price_per_hour": price_per_hour}, config_path=config)
        store, page = dest_page(dest or settings.out, settings.price_per_hour, settings.s3_endpoint_url)
        print(f"report page written: {write_dest_page(store, page, out)}")
        return 0

    raise typer.Exit(guarded(write))


def status_command(
    dest: Annotated[
        str | None,
        typer.Argument(help="The job's output folder or s3:// prefix (default: `out` of the config or environment)."),
    ] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    json_output: Annotated[bool, Opt("--json", help="One JSON document for machines.")] = False,
    review: Annotated[
        bool, Opt("--review", help="List the files to look at (hallucinations kept, no speech...) with reasons.")
    ] = False,
) -> None:
    """Counts of succeeded and failed files, audio hours, and each failure's reason, from DEST's manifests.

    Exit codes: 0 no file failed and the latest run ended cleanly; 1 some files failed, or the latest run was
    stopped (by an error or a signal); 2 usage or config error; 3 DEST not readable.
    """

    def report() -> int:
        from batch.cli.status import collect_status, format_review, format_status, status_exit_code, to_json

        settings = load_settings({}, config_path=config)
        status = collect_status(dest or settings.out, s3_endpoint_url=settings.s3_endpoint_url)
        if json_output:
            print(to_json(status, review))
        else:
            print(format_review(status) if review else format_status(status))
        return status_exit_code(status)

    raise typer.Exit(guarded(report))
