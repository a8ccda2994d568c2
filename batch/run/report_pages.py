"""The report pages in DEST: each run's, written beside its run report (RUNS_FOLDER/RUN_ID.html), and the page of
a whole DEST (`whisperx-batch report DEST`: every run report kept, the latest manifest of every file)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from batch.common.concurrency import ordered_map
from batch.common.errors import BatchError, ConfigError, EnvironmentProblem, describe, redact
from batch.formats.report_page import report_page
from batch.run.manifest import MANIFEST_SUFFIX, RUNS_FOLDER, Manifest
from batch.run.page_data import dest_page_data, run_page_data
from batch.run.page_facts import FileFacts, facts_of
from batch.run.report import RunReport, report_name, report_names
from batch.storage import Store, open_store

log = logging.getLogger(__name__)

DEST_PAGE = f"{RUNS_FOLDER}/index.html"
# Manifests and reports are read this many at once (on S3 each read is a request), this many ahead.
READ_WORKERS = 16
READ_AHEAD = 64


def page_name(run_id: str) -> str:
    """The run's page, beside its report RUNS_FOLDER/RUN_ID.json."""
    return f"{RUNS_FOLDER}/{run_id}.html"


def write_report_and_page(
    dest: Store, report: RunReport, files: Sequence[FileFacts], price_per_hour: float | None
) -> None:
    """The run report, then its page; neither changes the run's outcome (a failure to write one is logged)."""
    try:
        dest.write_bytes(report_name(report.run_id), report.encode())
    except Exception as exc:  # the run's outcome stands; the report is a record of it
        log.error("could not write the run report: %s", describe(exc)["message"])
    try:
        page = report_page(run_page_data(report, files, price_per_hour))
        dest.write_bytes(page_name(report.run_id), page.encode("utf-8", "replace"))
    except Exception as exc:
        log.warning("could not write the run's report page: %s", describe(exc)["message"])


def dest_page(dest: str | None, price_per_hour: float | None, s3_endpoint_url: str | None = None) -> tuple[Store, str]:
    """DEST's store and the HTML of its page. ConfigError when no DEST is given or it is not a DEST (exit 2),
    EnvironmentProblem when it cannot be read (exit 3)."""
    store = open_dest(dest, s3_endpoint_url)
    files = list(_file_facts(store))
    reports = [r for _, raw in read_all(store, listed(store, report_names)) if (r := RunReport.decode(raw))]
    return store, report_page(dest_page_data(store.location, reports, files, price_per_hour))


def open_dest(dest: str | None, s3_endpoint_url: str | None = None) -> Store:
    """DEST's store, readable. ConfigError when no DEST is given or it is not a location (exit 2),
    EnvironmentProblem when it cannot be read (exit 3)."""
    if not dest:
        raise ConfigError("out", "missing: give DEST, or `out` in the config file or WHISPERX_BATCH_OUT")
    try:
        store = open_store(os.fspath(dest), endpoint_url=s3_endpoint_url)
    except ValueError as exc:
        raise ConfigError("out", str(exc)) from None
    store.check_readable("DEST")
    return store


def write_dest_page(store: Store, page: str, out: str | None, name: str = DEST_PAGE, what: str = "report page") -> str:
    """Write the page to `out` (a local file) or to `name` in DEST; where it went."""
    data = page.encode("utf-8", "replace")
    where = out or f"{store.location.rstrip('/')}/{name}"
    try:
        _write(store, data, out, name)
    except OSError as exc:
        raise EnvironmentProblem(f"the {what} could not be written to {where}: {describe(exc)['message']}") from None
    return where


def _write(store: Store, data: bytes, out: str | None, name: str) -> None:
    if out is None:
        store.write_bytes(name, data)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:  # written whole or not at all: a page cut short is never left where the last good one was
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _file_facts(store: Store) -> Iterator[FileFacts]:
    """Each file's facts from its manifest; a manifest that cannot be read is a row saying so."""
    for name, raw in read_all(store, listed(store, manifest_names)):
        manifest = Manifest.decode(raw)
        if manifest is None:
            yield FileFacts(name.removesuffix(MANIFEST_SUFFIX), "unreadable", failure="its manifest cannot be read")
        else:
            yield facts_of(manifest)


def manifest_names(store: Store) -> list[str]:
    return sorted(name for name in store.list_names(suffix=MANIFEST_SUFFIX) if not name.startswith(f"{RUNS_FOLDER}/"))


def listed(store: Store, names: Callable[[Store], list[str]]) -> list[str]:
    try:
        return names(store)
    except BatchError:
        raise
    except Exception as exc:  # botocore's errors past the first page: credentials, network
        raise EnvironmentProblem(f"DEST {store.location} cannot be listed: {redact(str(exc))}") from None


def read_all(store: Store, names: list[str]) -> Iterator[tuple[str, bytes | None]]:
    def read(name: str) -> bytes | None:
        try:
            return store.read_bytes(name)
        except OSError:  # a file this user cannot read: shown as unreadable
            return None

    for name, future in ordered_map(read, names, workers=READ_WORKERS, ahead=READ_AHEAD):
        yield name, future.result()
