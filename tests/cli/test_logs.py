"""What an unattended run says, and where: stdout carries only the dry run's keys; with --log-format json every
line on stderr is a JSON record (UTC time with milliseconds), with one event per file and one for the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import ENGLISH, speak

UTC_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_records(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(UTC_MILLIS.match(record["time"]) for record in records)
    return records


def test_json_log_has_an_event_per_file_and_one_for_the_run(cli_process, tmp_path: Path, tiny_en: str) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    speak(ENGLISH, source / "good.wav")
    (source / "bad.mp3").write_bytes(b"not audio" * 100)
    result = cli_process(
        "run", source, "--out", out, "--model", tiny_en, "--device", "cpu", "--no-align", "--log-format", "json"
    )
    assert result.returncode == 1 and result.stdout == ""
    records = json_records(result.stderr)
    files = {record["key"]: record for record in records if record.get("event") == "file"}
    assert files["good.wav"]["status"] == "succeeded" and files["good.wav"]["error_type"] is None
    assert 4 < files["good.wav"]["audio_seconds"] < 10 and files["good.wav"]["realtime_factor"] > 0
    assert files["bad.mp3"]["status"] == "failed" and files["bad.mp3"]["error_type"] == "AudioDecodeError"
    [run] = [record for record in records if record.get("event") == "run"]
    assert run["counts"]["succeeded"] == 1 and run["counts"]["failed"] == 1 and run["exit_code"] == 1
    assert run["level"] == "info" and run["realtime_factor"] > 0


def test_library_banners_go_to_the_log_not_stdout(cli_process, tmp_path: Path, tiny_en: str) -> None:
    """pyannote prints its "Could not download Pipeline" banner (with a token example) when the diarization model
    is not cached and the hub is offline: the run stops (exit 3) saying what to do, once, as JSON."""
    source = tmp_path / "in"
    speak(ENGLISH, source / "call.wav")
    token = "hf_" + "B4nner" * 6
    result = cli_process(
        "run",
        source,
        "--out",
        tmp_path / "out",
        "--model",
        tiny_en,
        "--device",
        "cpu",
        "--no-align",
        "--diarize",
        "--log-format",
        "json",
        env={"HF_TOKEN": token, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 3 and result.stdout == ""
    records = json_records(result.stderr)
    assert "Could not download Pipeline" not in result.stderr and token not in result.stderr
    [run] = [record for record in records if record.get("event") == "run"]
    assert run["exit_code"] == 3 and run["error_type"] == "EnvironmentProblem"
    assert "models pull --diarize" in run["message"]
    report = json.loads(next((tmp_path / "out" / "_runs").glob("*.json")).read_text())
    assert report["exit_code"] == 3 and "not in the model cache" in report["error"]["message"]


def test_a_config_error_is_one_json_record_when_the_log_is_json(cli_process, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = cli_process(
        "run",
        tmp_path / "in",
        "--out",
        tmp_path / "out",
        "--model",
        str(tmp_path / "no-model"),
        "--device",
        "cpu",
        "--log-format",
        "json",
    )
    assert result.returncode == 3 and result.stdout == ""
    [record] = json_records(result.stderr)
    assert record["level"] == "error" and record["event"] == "error" and "model folder not found" in record["message"]
