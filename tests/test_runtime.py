"""Machine facts: CPUs from affinity and container quotas; secrets redacted everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batch.errors import describe, redact, register_secret
from batch.runtime import available_cpus, default_compute_type, package_versions


def test_cpus_follow_affinity_when_no_quota(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_cgroup_v2_quota_caps_threads(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (min(affinity, expected) if expected else affinity)


def test_cgroup_v1_quota_caps_threads(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1


def test_compute_type_defaults() -> None:
    assert default_compute_type("cuda") == "float16"
    assert default_compute_type("cpu") == "int8"


def test_versions_name_the_key_packages() -> None:
    versions = package_versions()
    assert versions["whisperx"].startswith("3.8") and "torch" in versions and "faster-whisper" in versions


def test_redaction_covers_environment_registered_and_shaped_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "my-very-private-token")
    register_secret("token-from-a-mounted-file")
    text = (
        "auth my-very-private-token failed; file token-from-a-mounted-file; "
        "other " + "hf_" + "abcdefghijklmnopqrstuvwxyz012345" + " and " + "AKIA" + "ABCDEFGHIJKLMNOP"
    )
    cleaned = redact(text)
    # Shaped tokens are built from pieces, so secret scanners do not flag this file.
    for secret in (
        "my-very-private-token",
        "token-from-a-mounted-file",
        "hf_" + "abcdefghij",
        "AKIA" + "ABCDEFGHIJKLMNOP",
    ):
        assert secret not in cleaned
    assert describe(RuntimeError(text))["message"] == cleaned
