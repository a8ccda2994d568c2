"""`whisperx-batch speakers enroll|list|remove|calibrate LIBRARY`: the library of voices that runs name speakers
from (docs/speakers.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from batch.cli.shared import guarded, load_settings
from batch.common.errors import EXIT_FILES_FAILED, EXIT_OK, ConfigError

Opt = typer.Option
LIBRARY_HELP = "The library file: a path or s3://bucket/prefix/speakers.json (made by the first enrolment)."
speakers_app = typer.Typer(help="The library of voices that runs put names on.", no_args_is_help=True)


def _print(document: dict, text: str, json_output: bool) -> None:
    print(json.dumps(document, ensure_ascii=False, indent=2) if json_output else text)


@speakers_app.command("enroll")
def speakers_enroll_command(
    library: Annotated[str, typer.Argument(help=LIBRARY_HELP)],
    audio: Annotated[list[Path] | None, typer.Argument(help="Samples of the voice --name names.")] = None,
    name: Annotated[str | None, Opt("--name", help="Whose voice AUDIO... is.")] = None,
    from_folder: Annotated[Path | None, Opt("--from", help="FOLDER/NAME/*.wav: every NAME's samples.")] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    diarize_model: Annotated[str | None, Opt(help="Diarization pipeline whose embedding model is used.")] = None,
    model_dir: Annotated[str | None, Opt(help="Where downloaded models are cached.")] = None,
    hf_token_file: Annotated[str | None, Opt(help="File holding the Hugging Face token (else HF_TOKEN).")] = None,
    device: Annotated[str | None, Opt(help="auto | cuda | cpu.")] = None,
    json_output: Annotated[bool, Opt("--json", help="One JSON document for machines.")] = False,
) -> None:
    """Add samples of voices to the library: each is decoded, its speech found, and refused with the reason when it
    is too short, silent or holds two voices; the others' embeddings are kept under the name.

    Exit codes: 0 every sample enrolled (or enrolled before); 1 some sample refused; 2 usage error, or a library
    that is damaged or of another encoder (nothing enrolled); 3 the model or the library's place unusable.
    """
    flags = {"diarize_model": diarize_model, "model_dir": model_dir, "hf_token_file": hf_token_file, "device": device}

    def enrol() -> int:
        from batch.run.speakers.enrol import folder_samples
        from batch.run.speakers.setup import enroller_for
        from batch.run.speakers.store import LibraryPlace

        samples = _samples(audio or [], name, from_folder, folder_samples)
        settings = load_settings({k: v for k, v in flags.items() if v is not None}, config_path=config)
        place = LibraryPlace.at(library, settings.s3_endpoint_url)
        place.read()  # a damaged library stops here, before any model loads
        outcomes = enroller_for(settings).enrol(place, samples)
        lines = [f"  {o.name}: {o.source}: {o.status}" + (f" ({o.reason})" if o.reason else "") for o in outcomes]
        _print({"library": library, "samples": [o.to_dict() for o in outcomes]}, "\n".join(lines), json_output)
        return EXIT_FILES_FAILED if any(o.status == "refused" for o in outcomes) else EXIT_OK

    raise typer.Exit(guarded(enrol))


def _samples(audio: list[Path], name: str | None, folder: Path | None, folder_samples) -> list[tuple[str, Path]]:  # noqa: ANN001
    if folder is not None and (audio or name):
        raise ConfigError("--from", "give either --from FOLDER or --name NAME AUDIO..., not both")
    if folder is not None:
        return folder_samples(folder)
    if not name or not audio:
        raise ConfigError("--name", "give --name NAME and at least one AUDIO file (or --from FOLDER)")
    return [(name, path) for path in audio]


@speakers_app.command("list")
def speakers_list_command(
    library: Annotated[str, typer.Argument(help=LIBRARY_HELP)],
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    json_output: Annotated[bool, Opt("--json", help="One JSON document for machines.")] = False,
) -> None:
    """The library's names, their samples and seconds of speech, its version, encoder and threshold.

    Exit codes: 0 listed; 2 no library there, or a damaged one; 3 its place unreadable."""

    def show() -> int:
        from batch.run.speakers.listing import describe, describe_text
        from batch.run.speakers.store import LibraryPlace

        settings = load_settings({}, config_path=config)
        loaded = LibraryPlace.at(library, settings.s3_endpoint_url).load()
        _print(describe(loaded, library), describe_text(loaded, library), json_output)
        return EXIT_OK

    raise typer.Exit(guarded(show))


@speakers_app.command("remove")
def speakers_remove_command(
    library: Annotated[str, typer.Argument(help=LIBRARY_HELP)],
    name: Annotated[str, typer.Argument(help="The name to remove.")],
    sample: Annotated[str | None, Opt("--sample", help="Remove only the sample from this SOURCE.")] = None,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
) -> None:
    """Remove a name and its samples (or one sample of it) from the library.

    Exit codes: 0 removed; 2 no such name or sample, or a damaged library; 3 its place unusable."""

    def remove() -> int:
        from batch.run.speakers.store import LibraryPlace

        settings = load_settings({}, config_path=config)
        place = LibraryPlace.at(library, settings.s3_endpoint_url)
        removed = place.update(lambda current: current.without(name, sample))
        print(f"{name}: {removed} sample{'s' if removed != 1 else ''} removed; version {place.load().version}")
        return EXIT_OK

    raise typer.Exit(guarded(remove))


@speakers_app.command("calibrate")
def speakers_calibrate_command(
    library: Annotated[str, typer.Argument(help=LIBRARY_HELP)],
    false_name_rate: Annotated[
        float, Opt(help="Share of voices that are not a name allowed to be given it (0.01: 1 in 100).")
    ] = 0.01,
    config: Annotated[str | None, Opt("--config", "-c", help="TOML config file (the job's own).")] = None,
    json_output: Annotated[bool, Opt("--json", help="One JSON document for machines.")] = False,
) -> None:
    """Measure the library's threshold on its own samples (same-voice and different-voice pairs), store it, and
    report the equal error rate and names that look like one voice.

    Exit codes: 0 calibrated; 1 calibrated, but some names look like one voice; 2 too few names or samples, or a
    damaged library; 3 its place unusable."""

    def run() -> int:
        from batch.run.speakers.calibrate import calibrate
        from batch.run.speakers.listing import calibration_text
        from batch.run.speakers.store import LibraryPlace

        settings = load_settings({}, config_path=config)
        calibration = calibrate(LibraryPlace.at(library, settings.s3_endpoint_url), false_name_rate)
        _print(calibration.to_dict(), calibration_text(calibration), json_output)
        return EXIT_FILES_FAILED if calibration.look_alikes else EXIT_OK

    raise typer.Exit(guarded(run))
