"""`whisperx-batch status DEST`: counts, audio hours and failures from the manifests a real run wrote; with an
S3 DEST, and doctor on S3 SOURCE and DEST, against a real S3 server (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENGLISH, speak


def manifest_document(key: str, status: str, **fields: object) -> dict[str, Any]:
    """A manifest in the shape the runner writes (batch.run.manifest.Manifest)."""
    document = {
        "manifest_version": 1,
        "status": status,
        "input": {"key": key, "size": 1, "version": "1"},
        "settings_hash": "sha256:0",
        "settings": {},
        "timings": {},
        "batch_size": 8,
        "model": "tiny.en",
        "device": "cpu",
        "compute_type": "int8",
        "threads": 2,
        "versions": {},
        "run_id": "r",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
    }
    return document | fields


def write_manifest(dest: Path, key: str, status: str, **fields: object) -> None:
    """A manifest, and for a succeeded one the transcript it lists (status checks that the outputs exist)."""
    if status == "succeeded":
        fields.setdefault("outputs", [f"{key}.json"])
    document = manifest_document(key, status, **fields)
    path = dest / f"{key}.manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    for output in document.get("outputs", []):
        (dest / output).write_text("{}")


def test_status_of_a_real_run_with_a_failure(cli, tmp_path: Path, tiny_en: str) -> None:
    source, dest = tmp_path / "in", tmp_path / "out"
    speak(ENGLISH, source / "calls" / "report.wav")
    (source / "calls" / "broken.m4a").write_bytes(b"this is not audio at all" * 40)
    run = cli("run", source, "--out", dest, "--model", tiny_en, "--device", "cpu", "--no-align")
    assert run.exit_code == 1, run.stderr

    result = cli("status", dest)
    assert result.exit_code == 1  # as for run: some files failed
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{dest}: 2 files: 1 succeeded, 1 failed; 0.00")
    assert "audio hours transcribed" in lines[0]
    assert lines[1].startswith("last run ") and "(1 in all)" in lines[1] and "exit 1" in lines[1]
    assert "  calls/broken.m4a: AudioDecodeError: not a readable audio or video file" in result.stdout

    machine = json.loads(cli("status", dest, "--json").stdout)
    assert (machine["files"], machine["succeeded"], machine["failed"], machine["runs"]) == (2, 1, 1, 1)
    assert 4 < machine["audio_seconds"] < 10 and machine["audio_hours"] == round(machine["audio_seconds"] / 3600, 4)
    assert machine["failures_by_type"] == {"AudioDecodeError": 1}
    [failure] = machine["failures"]
    assert failure["key"] == "calls/broken.m4a" and failure["run_id"] == machine["last_run"]["run_id"]
    assert machine["last_run"]["counts"].items() >= {"succeeded": 1, "skipped": 0, "failed": 1}.items()
    assert machine["last_run"]["exit_code"] == 1


def test_only_manifests_count_not_reports_temp_files_or_hidden_folders(cli, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_manifest(dest, "a.wav", "succeeded", audio_seconds=1800.0)
    write_manifest(dest, "deep/er/b.mp3", "succeeded", audio_seconds=1800.0)
    write_manifest(dest, "sub/_runs/c.wav", "failed", error={"type": "AudioDecodeError", "message": "empty file"})
    # What status must not read as files: run reports, a write in progress, hidden things.
    (dest / "_runs").mkdir()
    (dest / "_runs" / "20260101T000000Z-aaaaaa.json").write_text(
        json.dumps({"run_id": "x", "started_at": "2026-01-01T00:00:00.000Z", "counts": {}})
    )
    (dest / "_runs" / "stray.manifest.json").write_text(json.dumps({"status": "failed"}))
    (dest / ".a.wav.manifest.json.k2j3.tmp").write_text("{")
    (dest / ".hidden.wav.manifest.json").write_text(json.dumps({"status": "failed"}))
    write_manifest(dest / ".trash", "old.wav", "failed")

    result = json.loads(cli("status", dest, "--json").stdout)
    assert (result["succeeded"], result["failed"], result["audio_hours"]) == (2, 1, 1.0)
    assert [f["key"] for f in result["failures"]] == ["sub/_runs/c.wav"]
    assert result["unreadable_manifests"] == [] and result["runs"] == 1


def test_unreadable_manifests_are_listed_not_counted(cli, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_manifest(dest, "good.wav", "succeeded", audio_seconds=3.0)
    (dest / "cut.wav.manifest.json").write_text('{"status": "succ')
    (dest / "odd.wav.manifest.json").write_text(json.dumps({"status": "maybe"}))

    result = cli("status", dest)
    assert result.exit_code == 1  # damaged manifests need a look (and the next run redoes their files)
    assert "1 files: 1 succeeded, 0 failed" in result.stdout
    assert "unreadable manifests, redone by the next run (2): cut.wav.manifest.json, odd.wav.manifest.json" in (
        result.stdout
    )


def test_last_run_is_the_newest_report_and_a_stopped_run_says_why(cli, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    runs = dest / "_runs"
    runs.mkdir(parents=True)
    older = {"run_id": "20260101T000000Z-aaaaaa", "started_at": "2026-01-01T00:00:00.000Z", "exit_code": 0}
    newer = {
        "run_id": "20260102T000000Z-bbbbbb",
        "started_at": "2026-01-02T00:00:00.000Z",
        "finished_at": "2026-01-02T00:01:00.000Z",
        "skipped": ["a.wav", "b.wav", "c.wav", "d.wav"],
        "claimed_elsewhere": ["e.wav", "f.wav"],
        "exit_code": 3,
        "error": {"type": "EnvironmentProblem", "message": "DEST is not writable: /out"},
    }
    (runs / "b.json").write_text(json.dumps(newer))
    (runs / "a.json").write_text(json.dumps(older))

    result = cli("status", dest)
    assert result.exit_code == 1  # no file failed, but the latest run did not finish: a cron job must hear of it
    assert (
        "last run 20260102T000000Z-bbbbbb (2 in all), finished 2026-01-02T00:01:00.000Z: "
        "0 succeeded, 4 skipped, 0 failed, 2 claimed elsewhere; exit 3: DEST is not writable: /out"
    ) in result.stdout


def test_secrets_in_old_manifests_are_not_printed(cli, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    leaked = "hf_" + "Q" * 34
    write_manifest(dest, "x.wav", "failed", error={"type": "HTTPError", "message": f"401 for token {leaked}"})
    for args in ((dest,), (dest, "--json")):
        result = cli("status", *args)
        assert result.exit_code == 1 and leaked not in result.stdout and "***" in result.stdout


def test_empty_dest_missing_dest_and_no_dest(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("status", empty)
    assert result.exit_code == 0 and result.stdout.startswith(f"{empty}: 0 files: 0 succeeded, 0 failed; 0.000")

    missing = cli("status", tmp_path / "nope")
    assert missing.exit_code == 3 and "DEST is not a readable folder" in missing.stderr

    monkeypatch.chdir(tmp_path)  # an empty DEST must never mean "the current folder"
    none_given = cli("status")
    assert none_given.exit_code == 2 and "out: missing" in none_given.stderr


def test_dest_comes_from_the_jobs_config_file_or_environment(cli, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_manifest(dest, "a.wav", "succeeded", audio_seconds=36.0)
    config = tmp_path / "jobs.toml"
    config.write_text(f'out = "{dest}"\n')

    from_config = cli("status", "--config", config, "--json")
    assert from_config.exit_code == 0 and json.loads(from_config.stdout)["dest"] == str(dest)
    from_env = cli("status", "--json", env={"WHISPERX_BATCH_OUT": str(dest)})
    assert json.loads(from_env.stdout)["audio_hours"] == 0.01


def test_status_reads_a_dest_it_cannot_write(cli, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_manifest(dest, "a.wav", "succeeded", audio_seconds=1.0)
    copy = tmp_path / "ro"
    shutil.copytree(dest, copy)
    copy.chmod(0o555)
    try:
        assert cli("status", copy).exit_code == 0
    finally:
        copy.chmod(0o755)


@pytest.fixture
def s3(s3_client: Any) -> Any:
    s3_client.create_bucket(Bucket="jobs")
    return s3_client


def test_status_of_an_s3_dest(cli, s3: Any) -> None:
    def put(key: str, document: dict[str, Any] | str) -> None:
        body = document if isinstance(document, str) else json.dumps(document)
        s3.put_object(Bucket="jobs", Key=f"calls/out/{key}", Body=body.encode())

    put("a.wav.manifest.json", manifest_document("a.wav", "succeeded", audio_seconds=7200.0, outputs=["a.wav.json"]))
    put("gone.wav.manifest.json", manifest_document("gone.wav", "succeeded", outputs=["gone.wav.json"]))
    failure = {"type": "AudioDecodeError", "message": "empty file"}
    put("2026/b.mp3.manifest.json", manifest_document("2026/b.mp3", "failed", error=failure))
    put("2026/.b.mp3.manifest.json.tmp", "{")
    put(
        "_runs/20260101T000000Z-aaaaaa.json",
        {"run_id": "20260101T000000Z-aaaaaa", "started_at": "2026-01-01T00:00:00.000Z", "exit_code": 1},
    )
    put("a.wav.json", "{}")
    s3.put_object(Bucket="jobs", Key="calls/elsewhere.manifest.json", Body=b'{"status": "failed"}')

    result = cli("status", "s3://jobs/calls/out", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert (document["dest"], document["succeeded"], document["failed"]) == ("s3://jobs/calls/out", 1, 1)
    assert document["audio_hours"] == 2.0 and document["runs"] == 1
    assert document["inconsistent_manifests"] == [
        {"manifest": "gone.wav.manifest.json", "reason": "succeeded, but its outputs are missing: gone.wav.json"}
    ]
    assert document["failures"][0]["key"] == "2026/b.mp3" and document["unreadable_manifests"] == []

    missing = cli("status", "s3://no-such-bucket/out")
    assert missing.exit_code == 3 and "DEST s3://no-such-bucket/out cannot be listed: NoSuchBucket" in missing.stderr


def test_doctor_checks_s3_source_and_dest(cli, s3: Any, tiny_en: str, tmp_path: Path) -> None:
    s3.put_object(Bucket="jobs", Key="in/calls/report.wav", Body=speak(ENGLISH, tmp_path / "r.wav").read_bytes())
    common = ("--model", tiny_en, "--device", "cpu", "--no-align")
    result = cli("doctor", "s3://jobs/in", "--out", "s3://jobs/out", *common)
    assert result.exit_code == 0, result.stdout
    assert "s3://jobs/in: readable, 1 recordings" in result.stdout and "s3://jobs/out: writable" in result.stdout
    assert "Contents" not in s3.list_objects_v2(Bucket="jobs", Prefix="out/")  # the write probe is gone

    missing = cli("doctor", "s3://no-such-bucket/in", "--out", "s3://no-such-bucket/out", *common)
    assert missing.exit_code == 3 and "NoSuchBucket" in missing.stdout and "--s3-endpoint-url" in missing.stdout
