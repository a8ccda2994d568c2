"""Names at the file system's limits, through the real command line (issue 34 #11): a name too long for DEST
with its suffixes is kept under a shortened name, recorded in its manifest, and skipped by the next run; a path
that DEST cannot hold at all fails alone, saying why, and the run goes on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from batch.run.manifest import manifest_name
from tests.conftest import ENGLISH, speak

LONG = "x" * 244 + ".wav"  # 248 characters, as in the issue
WIDE = "é" * 125 + ".wav"  # 254 bytes: NAME_MAX counts bytes, not characters
ODD = "100% sure, #3? " * 16 + ".wav"  # odd characters, made longer by their escapes
FOLDER = "f" * 250 + "/" + "z" * 240 + ".mp3"
DEEP_FOLDERS = ["d" * 200] * 19  # SOURCE holds it; DEST, deeper by 500 bytes, passes PATH_MAX


def test_names_too_long_for_dest_are_shortened_and_a_path_it_cannot_hold_fails_alone(
    cli_process, tmp_path: Path, tiny_en: str
) -> None:
    source = tmp_path / "in"
    clip = speak(ENGLISH, source / "a.wav")
    deep = "/".join([*DEEP_FOLDERS, "deep.wav"])
    for key in (LONG, WIDE, ODD, FOLDER, deep):
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, source / key)
    dest = tmp_path / ("o" * 250) / ("p" * 250)
    options = ("--out", dest, "--model", tiny_en, "--device", "cpu", "--no-align", "--formats", "srt,turns")

    first = cli_process("run", source, *options)
    assert first.returncode == 1, first.stderr  # the deep file failed; every other file was done
    assert "Traceback" not in first.stderr and "unexpected" not in first.stderr
    report = _report(dest)
    assert sorted(report["succeeded"]) == sorted(["a.wav", LONG, WIDE, ODD, FOLDER])
    [failed] = report["failed"]
    assert failed["key"] == deep and failed["error"]["type"] == "DestPathBlocked"
    assert "the path is too long for DEST" in failed["error"]["message"]

    for key in (LONG, WIDE, ODD, FOLDER):
        manifest = json.loads((dest / manifest_name(key)).read_bytes())
        assert manifest["status"] == "succeeded" and manifest["input"]["key"] == key
        for name in manifest["outputs"]:
            assert "%~" in name and (dest / name).is_file()
            assert all(len(os.fsencode(part)) <= 255 for part in name.split("/"))
        assert manifest_name(key).endswith(Path(key).suffix + ".manifest.json")  # the extension is kept

    rerun = cli_process("run", source, *options)
    assert rerun.returncode == 1, rerun.stderr
    again = _report(dest)
    assert sorted(again["skipped"]) == sorted(["a.wav", LONG, WIDE, ODD, FOLDER])
    assert [entry["key"] for entry in again["failed"]] == [deep]

    status = json.loads(cli_process("status", dest, "--json").stdout)
    assert status["succeeded"] == 5 and not status["inconsistent_manifests"] and not status["unreadable_manifests"]


def _report(dest: Path) -> dict:
    reports = [json.loads(path.read_text()) for path in (dest / "_runs").glob("*.json")]
    return max(reports, key=lambda report: report["started_at"])
