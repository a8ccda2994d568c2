"""The doctor's checks of places: SOURCE can be listed, DEST and the model cache can be written."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from batch.common.advice import Check, Status, short_error
from batch.settings.options import Settings

# --- source, dest --------------------------------------------------------------------------------------------


S3_FIX = (
    "check the bucket and prefix, the credentials (AWS_* variables, a profile or an IAM role) and, for MinIO, Ceph "
    "or R2, the endpoint (--s3-endpoint-url, WHISPERX_BATCH_S3_ENDPOINT_URL)"
)


def source_check(settings: Settings) -> Check:
    """SOURCE can be listed, and how many recordings a run would take there (DEST inside it left out)."""
    if not settings.source:
        return Check("source", "skip", "not given")
    from batch.storage import ListingCounts, open_source
    from batch.storage.local import LocalStore

    try:
        store = open_source(settings.source, endpoint_url=settings.s3_endpoint_url, skip=settings.out)
    except ValueError as exc:  # a malformed s3:// URL
        return Check("source", "fail", str(exc), S3_FIX)
    local = isinstance(store, LocalStore)
    if local and store.only is None and (problem := _local_source_problem(store.root)):
        return problem
    counts, size = ListingCounts(), 0
    try:
        store.check_readable("SOURCE")
        for item in store.list(settings.include, settings.exclude, counts):
            size += item.size
    except Exception as exc:  # EnvironmentProblem, or botocore's own errors while listing
        return Check("source", "fail", short_error(exc).split(": ", 1)[-1], None if local else S3_FIX)
    if counts.selected == 0:
        detail = f"{store.location}: readable, but no recording is selected there ({counts.listed} files listed)"
        if settings.allow_empty:
            return Check("source", "warn", detail + "; allowed (allow_empty)", None)
        fix = "check the mount and --include/--exclude; give --allow-empty where an empty SOURCE is expected"
        return Check("source", "fail", detail + ": a run stops with exit 2", fix)
    return Check("source", "ok", f"{store.location}: readable, {counts.selected} recordings ({size / 2**20:.1f} MiB)")


def _local_source_problem(root: Path) -> Check | None:
    if not root.is_dir():
        return Check("source", "fail", f"{root} is not a folder", "give the folder of recordings (mounted at /in?)")
    if not os.access(root, os.R_OK | os.X_OK):
        return Check("source", "fail", f"{root} is not readable by uid {os.getuid()}", "make it readable for this user")
    return None


def dest_check(settings: Settings) -> Check:
    """DEST can be written: a folder is looked at (never created), an S3 prefix gets a probe object."""
    if not settings.out:
        return Check("dest", "skip", "not given")
    from batch.storage import open_store
    from batch.storage.local import LocalStore

    try:
        store = open_store(settings.out, endpoint_url=settings.s3_endpoint_url)
    except ValueError as exc:  # a malformed s3:// URL
        return Check("dest", "fail", str(exc), S3_FIX)
    if isinstance(store, LocalStore):
        return _local_dest_check(store.root)
    try:
        store.check_writable("DEST")  # writes and deletes a probe object
    except Exception as exc:
        return Check("dest", "fail", short_error(exc).split(": ", 1)[-1], S3_FIX)
    return Check("dest", "ok", f"{store.location}: writable")


def _local_dest_check(root: Path) -> Check:
    if root.exists() and not root.is_dir():
        return Check("dest", "fail", f"{root} is not a folder", "give a folder for the outputs")
    where = _writable_place(root)
    if where is None:
        fix = (
            f"make {root} writable for uid {os.getuid()}; with Docker, create the folder before `docker run` (one "
            'that Docker creates for a mount belongs to root) and run as its owner: --user "$(id -u):$(id -g)"'
        )
        return Check("dest", "fail", f"{root} is not writable (uid {os.getuid()}, gid {os.getgid()})", fix)
    free = shutil.disk_usage(_nearest_existing(root)).free / 2**30
    return Check("dest", "ok", f"{root}: {where}, {free:.1f} GiB free")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_place(folder: Path) -> str | None:
    """'writable', or 'will be created' when a parent can hold it; None when nothing can be written there."""
    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                return "writable"
        except OSError:
            return None
    parent = _nearest_existing(folder)
    return "will be created" if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK) else None


# --- the model cache -----------------------------------------------------------------------------------------


def cache_check(cache: Path, needs_download: bool) -> Check:
    where = _writable_place(cache)
    if where is None:
        status: Status = "fail" if needs_download else "warn"
        fix = (
            f"make {cache} writable for uid {os.getuid()} (in Docker: a named volume, e.g. "
            "-v whisperx-models:/models, or a folder this user owns)"
        )
        return Check("model cache", status, f"{cache} is not writable (uid {os.getuid()})", fix)
    return Check("model cache", "ok", f"{cache} ({where})")
