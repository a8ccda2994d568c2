"""`whisperx-batch review DEST`: the review page; `whisperx-batch corrections apply DEST FILE.json`: its decisions
written into DEST."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from batch.cli.shared import guarded, load_settings
from batch.common.errors import EXIT_ENVIRONMENT, EXIT_FILES_FAILED, EXIT_OK, ConfigError

if TYPE_CHECKING:
    from batch.run.corrections import FileResult

corrections_app = typer.Typer(help="A person's decisions from the review page, applied to DEST.", no_args_is_help=True)


@corrections_app.command("apply")
def corrections_apply_command(
    dest: Annotated[str, typer.Argument(help="The job's output folder or s3:// prefix.")],
    corrections_file: Annotated[str, typer.Argument(help="The corrections file the review page exported (JSON).")],
    config: Annotated[str | None, typer.Option("--config", "-c", help="TOML config file (the job's own).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document for machines.")] = False,
) -> None:
    """Rewrite the transcript and every text output of the files the corrections name, record the decisions in
    their manifests, and take the files marked reviewed off `status --review`. A file whose transcript is not the
    one the decisions were made on (redone since, its segments changed) is refused with the reason, unchanged.

    Exit codes: 0 every file's decisions applied (or applied before); 1 some file refused; 2 the corrections file
    unreadable or not a corrections file (nothing applied), or a usage error; 3 DEST not readable or writable.
    """

    def apply() -> int:
        from batch.run.corrections import apply_corrections

        settings = load_settings({}, config_path=config)
        try:
            raw = Path(corrections_file).read_bytes()
        except OSError as exc:
            raise ConfigError("corrections file", f"{corrections_file} cannot be read: {exc.strerror}") from None
        corrections, results = apply_corrections(dest, raw, corrections_file, settings.s3_endpoint_url)
        if json_output:
            document = {"dest": dest, "corrections_file": corrections_file, "made_by": corrections.made_by}
            print(json.dumps({**document, "files": [r.to_dict() for r in results]}, ensure_ascii=False, indent=2))
        else:
            print(format_results(dest, results))
        return exit_code(results)

    raise typer.Exit(guarded(apply))


def format_results(dest: str, results: list[FileResult]) -> str:
    counts = {outcome: sum(r.outcome == outcome for r in results) for outcome in ("applied", "refused", "failed")}
    lines = [f"{dest}: " + ", ".join(f"{count} {outcome}" for outcome, count in counts.items())]
    for result in results:
        said = {"applied": f"{result.decisions} decisions applied", "already_applied": "applied before, unchanged"}
        lines.append(f"  {result.file}: {said.get(result.outcome) or f'{result.outcome}: {result.reason}'}")
    return "\n".join(lines)


def exit_code(results: list[FileResult]) -> int:
    if any(result.outcome == "failed" for result in results):
        return EXIT_ENVIRONMENT
    return EXIT_FILES_FAILED if any(result.outcome == "refused" for result in results) else EXIT_OK


def review_command(
    dest: Annotated[
        str | None,
        typer.Argument(help="The job's output folder or s3:// prefix (default: `out` of the config or environment)."),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Write the page to this local file, not DEST/_review/index.html.")
    ] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="TOML config file (the job's own).")] = None,
) -> None:
    """Write the review page for DEST: each file to review, each segment the guard dropped, doubted or flagged with
    a player for its clip, and controls whose decisions it exports as a corrections file; self-contained.

    Exit codes: 0 written; 2 usage or config error; 3 DEST not readable, or the page could not be written.
    """

    def write() -> int:
        from batch.run.report_pages import write_dest_page
        from batch.run.review_page import REVIEW_PAGE, review_page

        settings = load_settings({}, config_path=config)
        store, page = review_page(dest or settings.out, out, settings.s3_endpoint_url)
        print(f"review page written: {write_dest_page(store, page, out, REVIEW_PAGE, 'review page')}")
        return 0

    raise typer.Exit(guarded(write))
