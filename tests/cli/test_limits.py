"""Memory and time bounded per file: the real command line, Whisper tiny.en on the CPU, real recordings made by
FFmpeg."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ENGLISH, speak

HOURS = 12


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes of silence in Opus at 6 kbit/s, the piece longer recordings are joined from."""
    piece = tmp_path_factory.mktemp("piece") / "ten-minutes.opus"
    quiet = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "600"]
    subprocess.run([*quiet, "-c:a", "libopus", "-b:a", "6k", "-frame_duration", "60", str(piece)], check=True)
    return piece


def joined(piece: Path, times: int, target: Path, piped: bool = False) -> Path:
    """`piece` `times` over, copied into `target`'s container; `piped`: written to a pipe, as a recorder streams
    it, so that the container does not state its length."""
    listing = target.with_suffix(".txt")
    listing.write_text(f"file '{piece}'\n" * times)
    command = ["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy"]
    if not piped:
        subprocess.run([*command, str(target)], check=True)
        return target
    with target.open("wb") as sink:
        subprocess.run([*command, "-f", target.suffix.lstrip("."), "pipe:"], stdout=sink, check=True)
    return target


@pytest.fixture(scope="module")
def half_a_day(ten_minutes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Twelve hours of silence (15 MB; decoded whole, 2.8 GB of float32 samples), twice: in Ogg, which states
    its length, and in WebM written to a pipe, which does not (a recorder's stream)."""
    folder = tmp_path_factory.mktemp("long")
    return {
        "stated": joined(ten_minutes, HOURS * 6, folder / "stated.ogg"),
        "streamed": joined(ten_minutes, HOURS * 6, folder / "streamed.webm", piped=True),
    }


# Starts `python -m batch ARGS` from a small process of its own and prints its peak resident memory, children
# included: wait4's ru_maxrss also counts the pages a process had before its exec, so measured straight from the
# test process (hundreds of MB or GB once other tests have run the models in it) it would count the test's memory.
MEASURED_RUN = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "batch", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss * 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(*args: str, timeout: float = 600) -> tuple[int, str, int]:
    """`python -m batch ARGS`: (exit code, stderr, its peak resident memory in bytes, its children's included)."""
    done = subprocess.run([sys.executable, "-c", MEASURED_RUN, *args], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr, int(done.stdout.strip().splitlines()[-1])


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


def decoding_children(path: Path) -> list[int]:
    """The decoder's children (batch.engine.decoder forks one per file) that hold `path` open."""
    return decoders_holding(lambda fd: os.readlink(fd) == str(path))


def decoders_holding(wanted: Callable[[Path], bool]) -> list[int]:
    """The decoder's children that hold open a file whose /proc/PID/fd/N entry is `wanted`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
            holds = any(wanted(fd) for fd in (entry / "fd").iterdir())
        except OSError:
            continue
        if holds and b"batch.engine.decoder" in command and b"batch.engine.decoder" in parent_command:
            found.append(int(entry.name))
    return found


def test_a_file_that_kills_its_decoder_twice_fails_alone_and_the_run_goes_on(
    ten_minutes: Path, tmp_path: Path, tiny_en: str
) -> None:
    """Decoding runs in a child process: killed (kill -9, as the out-of-memory killer does) while it decodes one
    file, the run decodes the file again in a fresh child; killed again, the file fails alone with both deaths
    in its reason, and every other file is done."""
    source, out = tmp_path / "in", tmp_path / "out"
    speak(ENGLISH, source / "a-memo.mp3")
    doomed = joined(ten_minutes, 6, source / "b-hour.webm", piped=True)  # a second or two to decode
    speak(ENGLISH, source / "c-memo.wav")
    args = [str(source), "--out", str(out), "--model", tiny_en, "--no-align", "--device", "cpu", "--threads", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "batch", "run", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    killed: list[int] = []
    while len(killed) < 2:
        assert process.poll() is None, process.communicate()[1]
        for pid in decoding_children(doomed):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.01)  # a look at /proc a hundred times a second: a decode of the file takes a second or more
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    manifest = json.loads((out / "b-hour.webm.manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "DecoderDied", manifest
    assert manifest["error"]["message"].count("was killed by SIGKILL") == 2
    for name in ("a-memo.mp3", "c-memo.wav"):
        assert json.loads((out / f"{name}.manifest.json").read_text())["status"] == "succeeded"


def test_a_file_whose_decoding_hangs_fails_alone_past_its_deadline(
    ten_minutes: Path, tmp_path: Path, tiny_en: str
) -> None:
    """A decoder that stops (SIGSTOP: as a decoder stuck in a loop looks from outside) is killed at the file's
    deadline; the file fails alone, naming the stage, and the files after it are done."""
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    stuck = joined(ten_minutes, 6, source / "a-hour.webm", piped=True)  # first: the files after it wait for it
    speak(ENGLISH, source / "b-memo.mp3")
    speak(ENGLISH, source / "c-memo.wav")
    args = [str(source), "--out", str(out), "--model", tiny_en, "--no-align", "--device", "cpu", "--threads", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "batch", "run", *args, "--file-timeout", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped: list[int] = []
    while not stopped:
        assert process.poll() is None, process.communicate()[1]
        for pid in decoding_children(stuck):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    manifest = json.loads((out / "a-hour.webm.manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "FileTimeout", manifest
    assert manifest["error"]["message"] == "past its deadline (file_timeout 10 s) in decode: stopped there"
    for name in ("b-memo.mp3", "c-memo.wav"):
        assert json.loads((out / f"{name}.manifest.json").read_text())["status"] == "succeeded", stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in stopped)  # killed, and reaped
