"""A finished DEST that was then damaged, as an operator finds it: a manifest truncated, one of the wrong shape,
a transcript deleted, a directory where a manifest belongs. status counts what a run would count as done, the
dry run lists what a run would redo, and the run redoes those while the blocked file fails alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ENGLISH, mounted_tmpfs, speak

KEYS = ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"]


def test_a_damaged_dest_is_reported_redone_and_never_stops_the_run(cli_process, tmp_path: Path, tiny_en: str) -> None:
    source, dest = tmp_path / "in", tmp_path / "out"
    for key in KEYS:
        speak(ENGLISH, source / key)
    options = ("--out", dest, "--model", tiny_en, "--device", "cpu", "--no-align", "--formats", "json,txt")
    assert cli_process("run", source, *options).returncode == 0

    (dest / "a.wav.manifest.json").write_bytes((dest / "a.wav.manifest.json").read_bytes()[:40])  # truncated
    (dest / "b.wav.manifest.json").write_text(json.dumps({"status": "succeeded", "files": 3}))  # wrong shape
    (dest / "c.wav.txt").unlink()  # a transcript gone
    (dest / "d.wav.manifest.json").unlink()
    (dest / "d.wav.manifest.json").mkdir()  # a directory where the manifest belongs

    status = cli_process("status", dest, "--json")
    assert status.returncode == 1, status.stderr
    document = json.loads(status.stdout)
    assert (document["succeeded"], document["failed"]) == (1, 0)  # only e.wav is done as a run sees it
    assert document["unreadable_manifests"] == ["a.wav.manifest.json", "b.wav.manifest.json", "d.wav.manifest.json"]
    [inconsistent] = document["inconsistent_manifests"]
    assert inconsistent["manifest"] == "c.wav.manifest.json" and "c.wav.txt" in inconsistent["reason"]

    dry = cli_process("run", source, *options, "--dry-run")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr
    assert dry.stdout.split() == ["a.wav", "b.wav", "c.wav", "d.wav"]

    rerun = cli_process("run", source, *options)
    assert rerun.returncode == 1, rerun.stderr  # one file failed; the run went on
    assert "Traceback" not in rerun.stderr
    report = _latest_report(dest)
    assert sorted(report["succeeded"]) == ["a.wav", "b.wav", "c.wav"] and report["skipped"] == ["e.wav"]
    [failed] = report["failed"]
    assert failed["key"] == "d.wav" and failed["error"]["type"] == "DestPathBlocked"
    assert "d.wav.manifest.json: a directory is in the way" in failed["error"]["message"]
    assert report["exit_code"] == 1
    assert (dest / "c.wav.txt").is_file() and (dest / "d.wav.manifest.json").is_dir()

    after = json.loads(cli_process("status", dest, "--json").stdout)
    assert (after["succeeded"], after["unreadable_manifests"]) == (4, ["d.wav.manifest.json"])


def _latest_report(dest: Path) -> dict:
    reports = [json.loads(path.read_text()) for path in (dest / "_runs").glob("*.json")]
    return max(reports, key=lambda report: report["started_at"])


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 400 KiB tmpfs, so DEST fills up for real (mounting needs root: skipped, saying so, without it)."""
    with mounted_tmpfs(tmp_path / "small", "400k") as mount_point:
        yield mount_point


def test_a_dest_that_fills_up_stops_the_run_at_once_and_says_so(
    cli_process, tmp_path: Path, tiny_en: str, small_tmpfs: Path
) -> None:
    source, dest = tmp_path / "in", small_tmpfs
    for key in KEYS:
        speak(ENGLISH, source / key)
    filler = dest / "filler"
    filler.write_bytes(b"\0" * (380 * 1024))  # about 20 KiB left: room for two files' outputs, not five
    options = ("--out", dest, "--model", tiny_en, "--device", "cpu", "--no-align", "--batch-size", "1")

    full = cli_process("run", source, *options)
    assert full.returncode == 3, full.stderr
    assert "Traceback" not in full.stderr
    assert "error: DEST cannot take the outputs: No space left on device" in full.stderr
    done = sorted(path.name for path in dest.glob("*.manifest.json"))
    assert 1 <= len(done) <= 3 and all(json.loads((dest / name).read_text())["status"] == "succeeded" for name in done)
    # The run report could not be written either: stderr says so, and the exit code stands.
    report_written = any((dest / "_runs").glob("*.json"))
    assert report_written or "could not write the run report: [Errno 28] No space left on device" in full.stderr

    filler.unlink()
    rerun = cli_process("run", source, *options)
    assert rerun.returncode == 0, rerun.stderr
    report = _latest_report(dest)
    assert sorted(report["skipped"]) == [name.removesuffix(".manifest.json") for name in done]
    assert sorted(report["succeeded"] + report["skipped"]) == KEYS and report["exit_code"] == 0
