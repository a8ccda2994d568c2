"""Where recordings come from and where outputs go: a local folder or an S3 prefix, behind one `Store`.

A store is one location. It lists and reads recordings (as SOURCE) and writes, reads and deletes named
objects (as DEST: outputs, manifests, run reports, claims). Names and keys are relative to the location, in
POSIX form; `batch.storage.names` says which keys are taken and what their outputs are called.

`open_store` is the one place that picks a folder or S3 from a location; `open_source` also takes a single
file or S3 object as SOURCE (its key is its name); `open_job_stores` opens SOURCE and DEST of a job together.

May import: common. Knows nothing of transcripts, manifests or settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch.common.errors import ConfigError
from batch.storage.base import ConditionalWritesUnsupported, InputChanged, InputFile, ListingCounts, Store, is_s3_url


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    spool_dir: str | None = None,
    max_input_bytes: int | None = None,
    client: Any = None,
    skip: str | None = None,
) -> Store:
    """The store at `url`: an S3 prefix for `s3://bucket/prefix`, a local folder for anything else.

    `skip` is a location that listing never enters when it lies inside this one (DEST inside SOURCE). S3
    stores share `client` when given, else make their own (`endpoint_url`); they spool downloads into
    `spool_dir` and refuse recordings over `max_input_bytes`. Nothing is checked or created here: ValueError
    for a malformed S3 URL only.
    """
    if skip is not None and is_s3_url(skip) != is_s3_url(url):
        skip = None  # a folder never lies inside an S3 prefix, nor the other way round
    if is_s3_url(url):
        from batch.storage.s3 import S3Store, make_client

        return S3Store(
            url,
            client if client is not None else make_client(endpoint_url),
            skip_url=skip,
            spool_dir=spool_dir,
            max_bytes=max_input_bytes,
        )
    from batch.storage.local import LocalStore

    return LocalStore(url, skip=skip)


def open_source(
    url: str,
    *,
    endpoint_url: str | None = None,
    spool_dir: str | None = None,
    max_input_bytes: int | None = None,
    client: Any = None,
    skip: str | None = None,
) -> Store:
    """SOURCE at `url`: as `open_store`, but a URL that names one file or one S3 object (checked with a stat or
    a HEAD request) is a store of that file alone, whose key is its name."""
    if is_s3_url(url):
        from batch.storage.s3 import make_client, object_source

        client = client if client is not None else make_client(endpoint_url)
        single = object_source(url, client, spool_dir=spool_dir, max_bytes=max_input_bytes)
        if single is not None:
            return single
    elif Path(url).is_file():
        from batch.storage.local import LocalStore

        return LocalStore(Path(url).parent, only=Path(url).name)
    return open_store(
        url, endpoint_url=endpoint_url, spool_dir=spool_dir, max_input_bytes=max_input_bytes, client=client, skip=skip
    )


def open_job_stores(
    source_url: str,
    dest_url: str,
    *,
    endpoint_url: str | None,
    spool_dir: str | None,
    max_input_bytes: int | None,
) -> tuple[Store, Store]:
    """SOURCE and DEST of a job, in any mix of folders and S3 prefixes.

    S3 stores share one client. The source never lists DEST when DEST lies inside it. A local SOURCE that is
    not a readable folder is an EnvironmentProblem here; a bad location, or DEST being SOURCE itself, a
    ConfigError that names `source` or `out`.
    """
    client = None
    if is_s3_url(source_url) or is_s3_url(dest_url):
        from batch.storage.s3 import make_client

        client = make_client(endpoint_url)
    try:
        dest = open_store(dest_url, endpoint_url=endpoint_url, client=client)
    except ValueError as exc:
        raise ConfigError("out", str(exc)) from None
    try:
        source = open_source(
            source_url,
            endpoint_url=endpoint_url,
            spool_dir=spool_dir,
            max_input_bytes=max_input_bytes,
            client=client,
            skip=dest_url,
        )
    except ValueError as exc:
        raise ConfigError("source", str(exc)) from None
    if not is_s3_url(source_url):
        source.check_readable("SOURCE")  # cheap for a folder: a missing one stops the job before anything else
    if same_place(source_url, dest_url):
        raise ConfigError("out", "DEST is SOURCE itself: give a folder or prefix of its own (it may lie inside SOURCE)")
    return source, dest


def same_place(source_url: str, dest_url: str) -> bool:
    """Whether two locations name one folder or one S3 prefix (`./out` and its absolute path, a prefix with or
    without its trailing `/`)."""
    if is_s3_url(source_url) != is_s3_url(dest_url):
        return False
    if is_s3_url(source_url):
        from batch.storage.s3 import split_url

        return split_url(source_url) == split_url(dest_url)
    return Path(source_url).resolve() == Path(dest_url).resolve()


__all__ = [
    "ConditionalWritesUnsupported",
    "InputChanged",
    "InputFile",
    "ListingCounts",
    "Store",
    "is_s3_url",
    "open_job_stores",
    "open_source",
    "open_store",
    "same_place",
]
