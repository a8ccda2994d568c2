"""The review page's clips in DEST (REVIEW_FOLDER/clips/): each doubtful, dropped or flagged segment of a file, with a
little context, cut by the run from the audio it decoded (so the page plays them without SOURCE), written after the
file's manifest. A clip that cannot be cut or written is a warning: the file and the run stay as they were."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from batch.common.errors import describe
from batch.engine.audio import SAMPLE_RATE
from batch.formats.clips import CLIP_SUFFIX, clip_window, cut, encode_clip
from batch.run.manifest import Manifest
from batch.storage import Store

log = logging.getLogger(__name__)

REVIEW_FOLDER = "_review"
CLIPS_FOLDER = f"{REVIEW_FOLDER}/clips"
SEGMENT_KINDS = ("dropped", "doubtful", "flagged")  # the manifest's quality lists a person decides on


@dataclass(frozen=True)
class ClipCut:
    name: str  # its name in DEST
    samples: np.ndarray  # mono, SAMPLE_RATE


def clip_name(key: str, version: str, start: float, end: float) -> str:
    """A clip's name in DEST: a digest of the file's key, input version and the span, so that any key (odd
    characters, a long name) gives a short safe name, and a redone version of the file never reuses a clip."""
    digest = hashlib.sha256(f"{key}\0{version}\0{start!r}\0{end!r}".encode("utf-8", "backslashreplace"))
    return f"{CLIPS_FOLDER}/{digest.hexdigest()[:32]}{CLIP_SUFFIX}"


def judged_segments(manifest: Manifest) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each segment the guard dropped, doubted or flagged, with its kind."""
    quality = manifest.quality or {}
    for kind in SEGMENT_KINDS:
        for segment in quality.get(kind) or []:
            if isinstance(segment, dict) and "start" in segment and "end" in segment:
                yield kind, segment


def cut_clips(manifest: Manifest, audio: np.ndarray | None) -> list[ClipCut]:
    """The samples of each judged segment's clip (copies: the recording can be freed); none when cutting fails."""
    if audio is None:
        return []
    try:
        return [
            ClipCut(name, cut(audio, SAMPLE_RATE, clip_window(start, end, manifest.audio_seconds)))
            for start, end, name in _spans(manifest)
        ]
    except Exception as exc:  # the transcript is written whatever becomes of its clips
        log.warning("could not cut the review clips of %s: %s", manifest.input.key, describe(exc)["message"])
        return []


def _spans(manifest: Manifest) -> Iterator[tuple[float, float, str]]:
    key, version = manifest.input.key, manifest.input.version
    for _, segment in judged_segments(manifest):
        start, end = float(segment["start"]), float(segment["end"])
        yield start, end, clip_name(key, version, start, end)


def write_clips(dest: Store, clips: list[ClipCut]) -> None:
    """Encode and write each clip; one that fails is a warning (the page says it has no clip)."""
    for clip in clips:
        try:
            dest.write_bytes(clip.name, encode_clip(clip.samples, SAMPLE_RATE))
        except Exception as exc:
            log.warning("could not write the review clip %s: %s", clip.name, describe(exc)["message"])


def clips_written(dest: Store, clips: list[ClipCut], manifest: Manifest) -> Manifest:
    """`manifest`, once the clips of the transcript it records are written (write_clips)."""
    if manifest.status == "succeeded":
        write_clips(dest, clips)
    return manifest
