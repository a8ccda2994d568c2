"""Memory and time bounded per file: the real command line, Whisper tiny.en on the CPU, real recordings made by
FFmpeg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENGLISH, speak

HOURS = 12


@pytest.fixture(scope="module")
def half_a_day(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Twelve hours of silence in Opus at 6 kbit/s (15 MB; decoded whole, 2.8 GB of float32 samples), twice: in
    Ogg, which states its length, and in WebM written to a pipe, which does not (a recorder's stream)."""
    folder = tmp_path_factory.mktemp("long")
    piece = folder / "ten-minutes.opus"
    quiet = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "600"]
    subprocess.run([*quiet, "-c:a", "libopus", "-b:a", "6k", "-frame_duration", "60", str(piece)], check=True)
    listing = folder / "pieces.txt"
    listing.write_text(f"file '{piece}'\n" * (HOURS * 6))
    joined = ["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy"]
    stated, streamed = folder / "stated.ogg", folder / "streamed.webm"
    subprocess.run([*joined, str(stated)], check=True)
    with streamed.open("wb") as sink:
        subprocess.run([*joined, "-f", "webm", "pipe:"], stdout=sink, check=True)
    return {"stated": stated, "streamed": streamed}


def run_measured(*args: str, timeout: float = 600) -> tuple[int, str, int]:
    """`python -m batch ARGS`: (exit code, stderr, its peak resident memory in bytes, its children's included)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batch", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    stderr = process.stderr.read()  # until it exits
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr, usage.ru_maxrss * 1024


def test_recordings_over_the_duration_limit_fail_alone_before_they_are_decoded_whole(
    half_a_day: dict[str, Path], tmp_path: Path, tiny_en: str
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name, path in half_a_day.items():
        os.link(path, source / f"{name}{path.suffix}")
    speak(ENGLISH, source / "memo.mp3")
    speak(ENGLISH, source / "zz-memo.wav")
    args = [str(source), "--out", str(out), "--model", tiny_en, "--no-align", "--device", "cpu", "--threads", "2"]
    code, stderr, peak = run_measured("run", *args)  # the default limit: 2 hours
    assert code == 1, stderr
    failed = {}
    for name in ("stated.ogg", "streamed.webm"):
        manifest = json.loads((out / f"{name}.manifest.json").read_text())
        assert manifest["status"] == "failed" and manifest["error"]["type"] == "AudioTooLong", manifest
        failed[name] = manifest
    assert "declares 12:00:00 of audio, over the duration limit of 2:00:00" in failed["stated.ogg"]["error"]["message"]
    streamed = failed["streamed.webm"]
    assert "more than 2:00:00 of audio, the duration limit" in streamed["error"]["message"]
    assert streamed["timings"].get("decode", 0) < 60  # stopped at the limit, not at the end of 12 hours
    for name in ("memo.mp3", "zz-memo.wav"):  # the files after them are done
        assert json.loads((out / f"{name}.manifest.json").read_text())["status"] == "succeeded"
    # 12 hours decoded whole is 2.8 GB of float32 samples (and 1.4 GB of 16-bit ones on the way): the run stays
    # far below that, the models' memory included.
    assert peak < 2 * 1024**3, f"peak resident memory {peak / 1024**3:.2f} GiB"
