"""The Python API takes what it is given: the environment and the config file are read only where the caller
asks for them (the command line does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batch import Job, load_settings
from batch.settings.shard import Shard


@pytest.fixture
def pod_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The variables of an Indexed Job pod, an environment setting and a config file named by its variable."""
    config = tmp_path / "jobs.toml"
    config.write_text("batch_size = 3\n")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("WHISPERX_BATCH_SHARD_COUNT", "2")
    monkeypatch.setenv("WHISPERX_BATCH_LANGUAGE", "de")
    monkeypatch.setenv("WHISPERX_BATCH_CONFIG", str(config))
    (tmp_path / "in").mkdir()
    return tmp_path


def test_load_settings_reads_no_environment_and_no_config_file_unasked(pod_environment: Path) -> None:
    settings = load_settings({"source": str(pod_environment / "in"), "out": str(pod_environment / "out")})
    assert (settings.batch_size, settings.language) == (16, "auto")
    asked = load_settings({"source": str(pod_environment / "in")}, environ=os.environ)
    assert (asked.batch_size, asked.language) == (3, "de")


def test_a_job_in_an_indexed_job_pod_is_not_sharded_unasked(pod_environment: Path) -> None:
    flags = {"source": str(pod_environment / "in"), "out": str(pod_environment / "out"), "device": "cpu"}
    assert Job(load_settings(flags)).config.selection.shard is None
    assert Job(load_settings(flags), environ=os.environ).config.selection.shard == Shard(index=1, count=2)


def test_the_command_line_still_layers_the_environment(pod_environment: Path, cli_process) -> None:  # type: ignore
    keys = [f"call{number:02d}.wav" for number in range(12)]
    for key in keys:
        (pod_environment / "in" / key).write_bytes(b"RIFF")
    source, out = pod_environment / "in", pod_environment / "out"
    result = cli_process("run", source, "--out", out, "--dry-run", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    mine = [Path(line).name for line in result.stdout.split()]
    assert mine and set(mine) < set(keys)  # shard 1 of 2: some of the keys, not all
