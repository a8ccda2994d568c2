"""Decoding with real FFmpeg (PyAV): every container to one 16 kHz array; bad files get a clear reason."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batch.common.errors import AudioDecodeError, AudioTooLong
from batch.engine.audio import SAMPLE_RATE, decode
from batch.engine.decoder import IsolatedDecoder
from tests.conftest import video_without_audio


def duration_by_ffprobe(path: Path) -> float:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=duration",
            "-of",
            "default=nw=1:nk=1",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


@pytest.mark.parametrize("ext", ["wav", "mp3", "flac", "m4a", "opus", "mp4"])
def test_every_container_decodes_to_16k_mono_float(speech_formats: dict[str, Path], ext: str) -> None:
    path = speech_formats[ext]
    with path.open("rb") as stream:
        audio = decode(stream)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - duration_by_ffprobe(path)) < 0.15
    assert 0.01 < float(np.abs(audio).max()) <= 1.0


@pytest.mark.parametrize("ext", ["wav", "mp3", "m4a", "opus"])
def test_the_samples_are_faster_whispers_own(speech_formats: dict[str, Path], ext: str) -> None:
    """The same samples as faster-whisper's decode_audio (which whisperx's batched pipeline is given)."""
    from faster_whisper.audio import decode_audio

    path = speech_formats[ext]
    with path.open("rb") as stream:
        ours = decode(stream)
    assert np.array_equal(ours, decode_audio(str(path)))


def test_decoding_leaves_nothing_behind_for_the_garbage_collector(speech_formats: dict[str, Path]) -> None:
    """decode_audio runs a full collection after every file (~0.15 s with the models loaded) because old PyAV
    resamplers were freed only by it; decode does not, so nothing may be left for it to free. Counted in a
    process of its own: another test's background thread would add its own garbage."""
    child = """
import gc, io, sys
from batch.engine.audio import decode
payload = open(sys.argv[1], "rb").read()
decode(io.BytesIO(payload))
gc.collect()
gc.disable()  # no automatic collection may free what the decodes leave in reference cycles before we count
for _ in range(20):
    decode(io.BytesIO(payload))
print(gc.collect())  # the unreachable objects it found: what only a collection could free
"""
    done = subprocess.run(
        [sys.executable, "-c", child, str(speech_formats["m4a"])], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    left = int(done.stdout.split()[-1])
    assert left < 20, f"{left} objects left in reference cycles by 20 decodes"


def test_decodes_from_an_in_memory_stream(speech_formats: dict[str, Path]) -> None:
    audio = decode(io.BytesIO(speech_formats["mp3"].read_bytes()))
    assert len(audio) > SAMPLE_RATE


def test_bad_inputs_fail_with_reasons(tmp_path: Path, speech_formats: dict[str, Path]) -> None:
    cases = {
        "empty file": b"",
        "not a readable audio or video file": b"this is a text file, not audio\n" * 20,
        "truncated": speech_formats["wav"].read_bytes()[:20_000],
    }
    mp3 = speech_formats["mp3"].read_bytes()
    cases["truncated: decoded"] = mp3[: len(mp3) // 3]
    for reason, data in cases.items():
        with pytest.raises(AudioDecodeError, match=reason):
            decode(io.BytesIO(data))
    with (
        video_without_audio(tmp_path / "silent.mp4").open("rb") as stream,
        pytest.raises(AudioDecodeError, match=r"no audio track \(the file holds: video\)"),
    ):
        decode(stream)


class CountingReader(io.RawIOBase):
    """A file read through, counting the bytes FFmpeg asked for."""

    def __init__(self, path: Path):
        self.inner = path.open("rb")
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        count = self.inner.readinto(buffer)
        self.read_bytes += count or 0
        return count  # type: ignore[return-value]

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def close(self) -> None:
        self.inner.close()
        super().close()


def silence(target: Path, seconds: int, *output: str, piped: bool = False) -> Path:
    """`seconds` of silence made by FFmpeg; `piped`: written to a pipe, as a recorder streams it (no going back to
    fill in the header)."""
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", str(seconds)]
    if not piped:
        subprocess.run([*command, *output, str(target)], check=True, timeout=120)
        return target
    with target.open("wb") as sink:
        subprocess.run([*command, *output, "pipe:"], stdout=sink, check=True, timeout=120)
    return target


def test_a_recording_that_declares_more_than_the_limit_fails_before_it_is_decoded(tmp_path: Path) -> None:
    path = silence(tmp_path / "long.opus", 600, "-c:a", "libopus", "-b:a", "6k")
    with pytest.raises(AudioTooLong, match=r"declares 0:10:00 of audio, over the duration limit of 0:01:00"):
        decode(path.open("rb"), max_seconds=60)
    assert len(decode(path.open("rb"), max_seconds=601)) == 600 * SAMPLE_RATE  # within it: decoded as ever


def test_a_recording_that_declares_no_length_stops_decoding_at_the_limit(tmp_path: Path) -> None:
    """A WAV written to a pipe says nothing of its length (sizes of 0xFFFFFFFF): decoding stops once the limit is
    passed, so memory follows the limit, not the recording; the file is not read to its end."""
    path = silence(tmp_path / "streamed.wav", 600, "-c:a", "pcm_u8", "-f", "wav", piped=True)
    assert path.read_bytes()[4:8] == b"\xff\xff\xff\xff"
    stream = CountingReader(path)
    with pytest.raises(AudioTooLong, match=r"more than 0:01:00 of audio, the duration limit"):
        decode(io.BufferedReader(stream), max_seconds=60)  # type: ignore[arg-type]
    assert stream.read_bytes < path.stat().st_size / 4, (stream.read_bytes, path.stat().st_size)
    assert len(decode(path.open("rb"), max_seconds=601)) == 600 * SAMPLE_RATE


@pytest.mark.parametrize("split_channels", [False, True])
def test_decoding_in_a_child_process_gives_the_same_samples(
    speech_formats: dict[str, Path], split_channels: bool
) -> None:
    decoder = IsolatedDecoder()
    try:
        for ext in ("mp3", "m4a", "wav"):
            with speech_formats[ext].open("rb") as stream:
                isolated = decoder.decode(stream, split_channels=split_channels)
            with speech_formats[ext].open("rb") as stream:
                here = decode(stream, split_channels=split_channels)
            assert isolated.dtype == here.dtype and np.array_equal(isolated, here)
            assert isolated.flags.writeable
        with pytest.raises(AudioDecodeError, match="not a readable audio or video file"), open(__file__, "rb") as text:
            decoder.decode(text)  # the child's error, as decode raises it here
    finally:
        decoder.close()
