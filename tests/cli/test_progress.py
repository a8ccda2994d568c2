"""Progress for the people and schedulers watching a run: totals from a census of SOURCE (durations from the
files' own headers), percent and ETA by audio seconds, a bar on a terminal and a log line every N seconds off it."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from batch.cli.progress import Census, Figures, Progress
from batch.run.config import SelectionConfig
from batch.run.tally import FileEvent
from batch.run.work.listing import ReadAhead
from batch.storage import open_store
from tests.conftest import ENGLISH, speak


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three real recordings of different lengths and formats, and a file that is not audio."""
    speak("Hello there.", tmp_path / "in" / "a.wav")
    speak(ENGLISH, tmp_path / "in" / "b.mp3")
    speak(ENGLISH + " " + ENGLISH, tmp_path / "in" / "sub" / "c.flac")
    (tmp_path / "in" / "broken.ogg").write_bytes(b"not audio at all" * 50)
    return tmp_path / "in"


def census_of(folder: Path, **selection: object) -> Figures:
    """What the census makes of the run's own listing of `folder`, once the run has taken every file."""
    figures = Figures()
    source = open_store(str(folder))
    census = Census(source, figures)
    taken = list(ReadAhead(source, SelectionConfig(**selection), [census]))  # type: ignore[arg-type]
    census._thread.join(timeout=60)
    assert figures.files_total == len(taken)
    return figures


def declared(path: Path) -> float:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(probe.stdout)


def test_the_census_counts_the_selection_and_reads_durations_from_headers(folder: Path) -> None:
    figures = census_of(folder)
    assert figures.listed and figures.files_total == 4
    assert set(figures.durations) == {"a.wav", "b.mp3", "sub/c.flac"}  # the broken file has no duration
    for key in figures.durations:
        assert figures.durations[key] == pytest.approx(declared(folder / key), abs=0.1)
    assert not figures.by_audio  # one file cannot be timed: progress is by files

    only_audio = census_of(folder, exclude=("*.ogg",))
    assert only_audio.files_total == 3 and only_audio.by_audio
    assert only_audio.seconds_total == pytest.approx(sum(only_audio.durations.values()))


def test_percent_and_eta_go_by_audio_seconds(folder: Path) -> None:
    clock = FakeClock()
    progress = Progress(terminal=False, interval=0, clock=clock)
    figures = census_of(folder, exclude=("*.ogg",))
    progress.figures = figures
    with progress:
        short, total = figures.durations["a.wav"], figures.seconds_total
        clock.now += 10
        progress.update(FileEvent("a.wav", "succeeded", short, 10))
        share = short / total
        assert figures.share_done() == pytest.approx(share)
        speed = short / 10  # audio seconds per wall second so far
        assert figures.eta_seconds(10) == pytest.approx((total - short) / speed)
        line = progress.line()
        assert line.startswith(f"1/3 files ({share:.0%}), ") and f"/{total / 3600:.2f} audio h" in line
        assert re.search(r"ETA \d+:\d\d:\d\d$", line)
        # A file skipped (done before) counts towards the share, not towards the speed.
        progress.update(FileEvent("b.mp3", "skipped"))
        assert figures.share_done() == pytest.approx((short + figures.durations["b.mp3"]) / total)
        assert figures.seconds_transcribed == pytest.approx(short)


def test_off_a_terminal_a_real_run_logs_progress_lines(cli_process, folder: Path, tmp_path: Path, tiny_en: str) -> None:
    result = cli_process(
        "run",
        folder,
        "--out",
        tmp_path / "out",
        "--model",
        tiny_en,
        "--device",
        "cpu",
        "--no-align",
        "--exclude",
        "*.ogg",
        "--progress-interval",
        "0.5",
        "--log-format",
        "json",
    )

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    ticks = [record for record in records if record.get("event") == "progress"]
    assert ticks, "no progress line in the log"
    assert all(tick["files_total"] in (None, 3) for tick in ticks) and ticks[-1]["files_total"] == 3
    assert ticks[-1]["audio_seconds_total"] == pytest.approx(
        sum(declared(folder / k) for k in ("a.wav", "b.mp3", "sub/c.flac")), abs=0.3
    )


def test_on_a_terminal_the_bar_shows_percent_and_audio_hours(folder: Path, tmp_path: Path, tiny_en: str) -> None:
    """stderr is a real pseudo-terminal, as when a person runs the command."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # a terminal 200 columns wide
    command = [
        sys.executable,
        "-m",
        "batch",
        "run",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--model",
        tiny_en,
        "--device",
        "cpu",
        "--no-align",
        "--exclude",
        "*.ogg",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    assert process.wait(timeout=600) == 0
    text = screen.decode(errors="replace")
    assert "transcribing: 100%" in text and "3/3 files (100%)" in text and "audio h" in text


def test_a_run_with_progress_lists_source_once(
    cli, folder: Path, tmp_path: Path, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The census counts the run's own listing: one listing of SOURCE per run (on S3, one round of requests)."""
    from batch.storage.local import LocalStore

    listings: list[str] = []
    real_list = LocalStore.list

    def counted_list(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        listings.append(self.location)
        return real_list(self, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "list", counted_list)
    out = tmp_path / "out"
    args = ("run", folder, "--out", out, "--model", tiny_en, "--device", "cpu", "--no-align", "--exclude", "*.ogg")
    result = cli(*args, "--progress-interval", "0.2")
    assert result.exit_code == 0, result.stderr
    assert len(listings) == 1
    assert len(list(out.rglob("*.manifest.json"))) == 3
