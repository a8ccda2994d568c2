"""Machine facts: CPUs from affinity and container quotas; secrets redacted everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch.errors import describe, redact, register_secret
from batch.runtime import available_cpus, default_compute_type, package_versions
from tests.conftest import ENGLISH, speak


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


def test_thread_pools_stay_within_the_cpus_the_process_may_use(tmp_path: Path, tiny_en: str) -> None:
    """Given one thread (as a container whose CPU quota is one core, on a host with more), a real run keeps every
    pool at one thread: CTranslate2, torch, and the BLAS/OpenMP pools numpy and torch load (read back with
    threadpoolctl), whatever cores the host shows."""
    speak(ENGLISH, tmp_path / "in" / "a.wav")
    script = f"""
import os, json
from batch import Job, load_settings
settings = load_settings({{"source": {str(tmp_path / "in")!r}, "out": {str(tmp_path / "out")!r},
                          "model": {tiny_en!r}, "device": "cpu", "align": False, "threads": 1}})
report = Job(settings).run()
import torch, threadpoolctl
pools = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
print(json.dumps({{"threads": report.threads, "torch": torch.get_num_threads(), "pools": pools,
                  "succeeded": report.succeeded}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={key: value for key, value in os.environ.items() if not key.endswith("_NUM_THREADS")})
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["succeeded"] == ["a.wav"] and figures["threads"] == 1 and figures["torch"] == 1
    assert figures["pools"] and max(figures["pools"]) == 1
