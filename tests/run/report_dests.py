"""DESTs for the report page's tests, written as a run writes them (manifests and a run report, no audio): files
succeeded, failed and to review, with GPU records or without, and names and reasons that hold markup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_ID = "20260101T000000Z-abcdef"
HOSTILE_KEY = "<script>window.__ran = 1</script>.wav"
HOSTILE_REASON = "<img src=x onerror='window.__ran = 2'>"
STAGES = ("decode", "vad", "asr", "align")


def manifest(key: str, index: int, *, failed: bool = False, review: bool = False, gpu: bool = False) -> dict[str, Any]:
    """The manifest of file number `index`, finished `index` seconds after the run started."""
    seconds = 30.0 + index % 17 * 10
    document: dict[str, Any] = {
        "manifest_version": 1,
        "status": "failed" if failed else "succeeded",
        "input": {"key": key, "size": 1000 + index, "version": str(index)},
        "settings_hash": "sha256:0",
        "settings": {"model": "tiny.en"},
        "timings": {stage: round(seconds / (20 + index % 7) / len(STAGES), 3) for stage in STAGES},
        "batch_size": 16,
        "model": "tiny.en",
        "device": "cuda" if gpu else "cpu",
        **({"gpu_device": "GPU 0 (NVIDIA L4, 22.0 GiB, GPU-0a1b)"} if gpu else {}),
        "compute_type": "int8",
        "threads": 2,
        "versions": {},
        "run_id": RUN_ID,
        "started_at": _at(index),
        "finished_at": _at(index + 1),
        "outputs": [] if failed else [f"{key}.json"],
    }
    if failed:
        message = HOSTILE_REASON if index % 2 else "moov atom not found"
        document["error"] = {"type": "AudioDecodeError" if index % 3 else "FileTimeout", "message": message}
        return document
    document |= {"audio_seconds": seconds, "language": "en", "speakers": ["SPEAKER_00", "SPEAKER_01"][: 1 + index % 2]}
    if review:
        document["quality"] = {"review": True, "reasons": ["no_speech_kept"], "dropped": [], "cut": []}
    if gpu:  # the batch planner halves the ASR batch after an out-of-memory, then grows it back
        phase = index % 500
        batch, free = (16, 8) if phase < 350 else (8, 4), 40 - 30 * phase / 500
        document["gpu"] = {
            stage: {
                "batch_size_requested": 16,
                "batch_size_used": used,
                "free_bytes": int(free * 1024**3),
                "total_bytes": 80 * 1024**3,
            }
            for stage, used in zip(("asr", "align"), batch, strict=True)
        }
    return document


def fill_dest(dest: Path, count: int, *, gpu: bool = False, hostile: bool = True) -> list[str]:
    """`count` files' manifests (every 7th failed, every 5th to review) and the run report; the keys written."""
    keys, failed, audio_seconds = [], [], 0.0
    for index in range(count):
        key = HOSTILE_KEY if hostile and index == 3 else f"calls/{index // 100:03d}/call-{index:05d}.wav"
        document = manifest(key, index, failed=index % 7 == 6, review=index % 5 == 4, gpu=gpu)
        _write(dest / f"{key}.manifest.json", document)
        keys.append(key)
        if document["status"] == "failed":
            failed.append({"key": key, "error": document["error"]})
        audio_seconds += document.get("audio_seconds", 0.0)
    _write(dest / "_runs" / f"{RUN_ID}.json", run_report(keys, failed, gpu, audio_seconds))
    return keys


def run_report(keys: list[str], failed: list[dict[str, Any]], gpu: bool, audio_seconds: float) -> dict[str, Any]:
    failed_keys = {item["key"] for item in failed}
    return {
        "report_version": 1,
        "run_id": RUN_ID,
        "started_at": _at(0),
        "finished_at": _at(len(keys) + 1),
        "settings": {"model": "tiny.en", "language": "en", "formats": ["json", "srt"]},
        "device": "cuda" if gpu else "cpu",
        **({"gpu_device": "GPU 0 (NVIDIA L4, 22.0 GiB, GPU-0a1b)"} if gpu else {}),
        "compute_type": "int8",
        "threads": 2,
        "batch_size": 16,
        "versions": {"whisperx": "3.8.6"},
        "succeeded": [key for key in keys if key not in failed_keys],
        "failed": failed,
        "audio_seconds": audio_seconds,
        "wall_seconds": float(len(keys) + 1),
        "stage_seconds": {"decode": 10.0, "vad": 20.0, "asr": 100.0, "align": 30.0, "write": 5.0},
        "gpu": {"asr": {"runs": len(keys)}} if gpu else {},
        "exit_code": 1 if failed else 0,
    }


def _at(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"2026-01-01T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}.000Z"


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
