"""The review page (`whisperx-batch review DEST`): each file a person should look at, with each segment the guard
dropped, doubted or flagged (its text, times, signals, its words' confidences, and a player for the clip the run cut
of it: batch.run.review_clips), and the controls whose decisions the page exports as a corrections file
(batch.run.corrections_file) for `whisperx-batch corrections apply`."""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batch.common.version import __version__
from batch.formats.clips import clip_window
from batch.formats.report_page import self_contained_page
from batch.run.manifest import Manifest, output_name, to_review, utc_now
from batch.run.report_pages import listed, manifest_names, open_dest, read_all
from batch.run.review_clips import CLIPS_FOLDER, REVIEW_FOLDER, clip_name, judged_segments
from batch.storage import Store

REVIEW_PAGE = f"{REVIEW_FOLDER}/index.html"
MADE_BY = f"whisperx-batch review page {__version__}"


def on_review_page(manifest: Manifest) -> bool:
    """The files the page lists: those `status --review` lists, and those whose guard dropped a segment that a
    person may restore, unless a person has marked the file reviewed."""
    dropped = bool((manifest.quality or {}).get("dropped"))
    reviewed = bool((manifest.corrections or {}).get("reviewed"))
    return manifest.status == "succeeded" and (to_review(manifest) or (dropped and not reviewed))


def review_page(dest: str | None, out: str | None = None, s3_endpoint_url: str | None = None) -> tuple[Store, str]:
    """DEST's store and the HTML of its review page (written to `out`, or to REVIEW_PAGE in DEST). ConfigError when
    no DEST is given or it is not a location (exit 2), EnvironmentProblem when it cannot be read (exit 3)."""
    store = open_dest(dest, s3_endpoint_url)
    manifests = [m for _, raw in read_all(store, listed(store, manifest_names)) if (m := Manifest.decode(raw))]
    chosen = [manifest for manifest in manifests if on_review_page(manifest)]
    clips = set(store.list_names(prefix=CLIPS_FOLDER)) if chosen else set()
    base = clips_base(store, out)
    files = [file_entry(store, manifest, clips, base) for manifest in chosen]
    data = {"title": f"Review: {store.location}", "dest": store.location, "made_by": MADE_BY, "generated_at": utc_now()}
    data.update(files=files, clips_reachable=base is not None)
    return store, self_contained_page("review", data, "Review", ("review.css",))


def clips_base(store: Store, out: str | None) -> str | None:
    """The URL of DEST's REVIEW_FOLDER from the page's folder: "" for the page in DEST; a relative path for a page
    written elsewhere on this machine beside a local DEST; None where the page cannot reach the clips."""
    if out is None:
        return ""
    if store.location.startswith("s3://"):
        return None
    relative = os.path.relpath(Path(store.location) / REVIEW_FOLDER, Path(out).resolve().parent)
    return quote(Path(relative).as_posix()) + "/"


def file_entry(store: Store, manifest: Manifest, clips: set[str], base: str | None) -> dict[str, Any]:
    quality = manifest.quality or {}
    version = {"input_version": manifest.input.version, "settings_hash": manifest.settings_hash}
    if manifest.input.fingerprint:
        version["fingerprint"] = manifest.input.fingerprint
    segments = transcript_segments(store, manifest)
    applied = applied_actions(manifest)
    return {
        "file": manifest.input.key,
        "version": version,
        "reasons": list(quality.get("reasons") or []),
        "language": manifest.language,
        "audio_seconds": manifest.audio_seconds,
        "confidence": quality.get("confidence"),
        "segments": [
            segment_entry(kind, segment, manifest, segments, clips, base, applied)
            for kind, segment in sorted(judged_segments(manifest), key=lambda judged: judged[1]["start"])
        ],
    }


def segment_entry(
    kind: str,
    segment: dict[str, Any],
    manifest: Manifest,
    transcript: list[dict[str, Any]],
    clips: set[str],
    base: str | None,
    applied: dict[tuple[float, float, str], str],
) -> dict[str, Any]:
    start, end, text = float(segment["start"]), float(segment["end"]), str(segment.get("text", ""))
    name = clip_name(manifest.input.key, manifest.input.version, start, end)
    clip = None
    if name in clips and base is not None:
        window = clip_window(start, end, manifest.audio_seconds)
        clip = {"url": base + posixpath.relpath(name, REVIEW_FOLDER), "start": window[0], "end": window[1]}
    return {
        "kind": kind,
        "start": start,
        "end": end,
        "text": text,
        "reasons": list(segment.get("reasons") or []),
        "signals": dict(segment.get("signals") or {}),
        "words": [] if kind == "dropped" else words_inside(transcript, start, end),
        "clip": clip,
        "applied": applied.get((start, end, text)),
    }


def transcript_segments(store: Store, manifest: Manifest) -> list[dict[str, Any]]:
    """The transcript's segments (for its words' confidences); none when it cannot be read."""
    name = output_name(manifest.input.key, "json")
    if name not in manifest.outputs:
        return []
    try:
        raw = store.read_bytes(name)
        segments = json.loads(raw)["segments"] if raw else []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [segment for segment in segments if isinstance(segment, dict)]


def words_inside(segments: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The words of the transcript's segments inside start..end (a VAD chunk is split into sentences), each with
    its confidence (alignment's `score`); none where the transcript was not aligned."""
    words = []
    for segment in segments:
        if float(segment.get("start", -1)) >= start - 0.001 and float(segment.get("end", 1e12)) <= end + 0.001:
            for word in segment.get("words") or []:
                words.append({"word": str(word.get("word", "")), "score": word.get("score")})
    return words


def applied_actions(manifest: Manifest) -> dict[tuple[float, float, str], str]:
    """The decisions already applied to this transcript, by the segment they name."""
    actions = {}
    for applied in (manifest.corrections or {}).get("applied") or []:
        for decision in applied.get("decisions") or []:
            ref = decision.get("segment") or {}
            actions[(float(ref.get("start", -1)), float(ref.get("end", -1)), str(ref.get("text")))] = decision.get(
                "action"
            )
    return actions
