"""What DEST's manifests say of a queue's objects, for their messages: whether a message may be deleted (DEST holds a
manifest of the version it announced), whether an object gone since it was done needs nothing more, whether a
version took down or hung what worked on it (its message goes to the dead letters); and how long a message sent
back waits before it comes again."""

from __future__ import annotations

import logging
from collections.abc import Callable

from batch.common.errors import POISON_ERRORS, describe
from batch.run.manifest import Manifest, read_manifest
from batch.storage import InputFile, Store
from batch.storage.sqs import GONE

log = logging.getLogger(__name__)

RELEASE_BACKOFF_SECONDS = 5  # a message released after its first receive comes back after this; doubled after each


def gone_after_done(dest: Store, item: InputFile, settings_hash: str) -> bool:
    """An object gone since it was done with these settings (a redelivered event; a lifecycle rule that removes
    what was transcribed): nothing to redo, and its manifest stays as it is."""
    if item.version != GONE:
        return False
    try:
        manifest = read_manifest(dest, item.key)
    except OSError:  # no place for a manifest (SkipCheck.blocked): it fails alone
        return False
    if manifest is None or manifest.status != "succeeded" or manifest.settings_hash != settings_hash:
        return False
    log.info("%s is gone; it was done (its manifest stays): skipped", item.key)
    return True


def manifest_confirms(dest: Store, item: InputFile, holds_now: Callable[[str], bool] | None = None) -> bool:
    """Whether DEST holds a manifest of this version of the object; of an object that was gone, any manifest (its
    failure, or an earlier success kept); or a success of the newer version SOURCE holds now (`holds_now`: this
    version was superseded while it was in work): there is nothing left to redo. A poison version's does not."""
    try:
        manifest = read_manifest(dest, item.key)
    except Exception as exc:  # no place for it, or DEST unreadable: the message comes back
        log.warning("the manifest of %s cannot be read back: %s", item.key, describe(exc)["message"])
        return False
    if manifest is None:
        return False
    if is_poison(manifest, item):
        assert manifest.error is not None
        reason = manifest.error.type
        log.warning("%s failed (%s): its message goes back, for its dead-letter queue", item.key, reason)
        return False
    if item.version == GONE or manifest.input.version == item.version:
        return True
    return manifest.status == "succeeded" and holds_now is not None and holds_now(manifest.input.version)


def poison_manifest(dest: Store, item: InputFile) -> Manifest | None:
    """The failed manifest of this version of the object if it took down or hung what worked on it."""
    try:
        manifest = read_manifest(dest, item.key)
    except Exception:  # the look that just succeeded (the skip check) will tell again next time
        return None
    return manifest if manifest is not None and is_poison(manifest, item) else None


def is_poison(manifest: Manifest, item: InputFile) -> bool:
    """Whether this version of the object failed by taking down or hanging what worked on it (its decoder or its
    worker died twice on it, or it passed its deadline). Such a file fails alone, with its manifest, but its
    message is not deleted: it goes back, is not tried again, and its queue's redrive policy takes it to the
    dead-letter queue, where a person sees it, while the messages beside it are received once and done."""
    error = manifest.error
    return (
        manifest.status == "failed"
        and error is not None
        and error.type in POISON_ERRORS
        and manifest.input.version == item.version
    )


def release_backoff(receive_count: int, visibility_timeout: float) -> int:
    """Seconds before a released message comes back: RELEASE_BACKOFF_SECONDS, doubled with every receive, never
    longer than the queue's own visibility timeout (what a consumer that died would have left it to)."""
    backoff = RELEASE_BACKOFF_SECONDS * 2 ** max(0, receive_count - 1)
    return int(min(backoff, visibility_timeout))
