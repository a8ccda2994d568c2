"""The runner's behaviour with a fake pipeline at the seam: real files, real decoding, real manifests.

Resume, failure isolation, claims, stop requests and the broken-run stop do not depend on what a model says,
so they are tested here without one; tests/engine/test_engine.py runs the real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.common.errors import ConfigError, ForeignError, WorkerDied
from batch.engine.align.aligner import AlignmentModelNotLoaded
from batch.run.job import Job
from batch.run.manifest import Manifest
from batch.run.report import RunReport
from batch.settings.options import load_settings
from tests.conftest import tone
from tests.fakes import FakePipeline


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for name in ("a.wav", "b.wav", "c/d.flac", "e.wav", "f.wav"):
        tone(folder / name)
    return folder


def job(source: Path, out: Path, pipeline: FakePipeline, **flags: object) -> Job:
    settings = load_settings({"source": str(source), "out": str(out), "device": "cpu", **flags}, environ={})
    return Job(settings, environ={}, pipeline=pipeline)


def manifest(out: Path, key: str) -> Manifest:
    found = Manifest.decode((out / f"{key}.manifest.json").read_bytes())
    assert found is not None
    return found


def test_every_file_is_written_and_a_rerun_skips_it(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = job(source, out, FakePipeline()).run()
    assert sorted(report.succeeded) == ["a.wav", "b.wav", "c/d.flac", "e.wav", "f.wav"] and report.exit_code == 0
    written = manifest(out, "c/d.flac")
    assert written.status == "succeeded" and written.audio_seconds == 1.0
    assert json.loads((out / "c/d.flac.json").read_text())["segments"][0]["text"] == "hello c/d.flac"
    assert set(written.timings) >= {"fingerprint", "decode", "asr", "write"}
    stored = RunReport.decode(next((out / "_runs").glob("*.json")).read_bytes())
    assert stored is not None and stored.counts["succeeded"] == 5 and stored.asr is not None
    assert stored.asr.batches == 3 and stored.asr.batch_fill == pytest.approx(5 / 3, abs=0.001)
    # each stage's seconds summed over the files' manifests, and its share of the run's wall time
    manifests = [manifest(out, key) for key in report.succeeded]
    for stage in ("decode", "asr", "write"):
        assert stored.stage_seconds[stage] == pytest.approx(sum(m.timings[stage] for m in manifests), abs=1e-3)
    assert stored.stage_seconds["asr"] == pytest.approx(0.05, abs=1e-3)  # the fake's 0.01 s a file
    assert stored.stage_busy_share["asr"] == pytest.approx(0.05 / stored.wall_seconds, rel=0.01)

    again = FakePipeline()
    rerun = job(source, out, again).run()
    assert rerun.succeeded == [] and len(rerun.skipped) == 5 and again.pulled == [] and again.loads == 0


def test_a_changed_setting_redoes_done_files(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job(source, out, FakePipeline()).run()
    rerun = job(source, out, FakePipeline(), formats="srt").run()
    assert len(rerun.succeeded) == 5 and (out / "a.wav.srt").is_file()


def test_failures_stay_with_their_file(source: Path, tmp_path: Path) -> None:
    (source / "broken.wav").write_bytes(b"RIFF....not audio at all")
    (source / "empty.wav").write_bytes(b"")
    out = tmp_path / "out"
    pipeline = FakePipeline(errors={"b.wav": WorkerDied("the file was being transcribed when a worker died, twice")})
    report = job(source, out, pipeline).run()
    failed = {item.key: item.error.type for item in report.failed}
    assert failed == {"b.wav": "WorkerDied", "broken.wav": "AudioDecodeError", "empty.wav": "AudioDecodeError"}
    assert report.exit_code == 1 and len(report.succeeded) == 4
    assert manifest(out, "b.wav").error.message == "the file was being transcribed when a worker died, twice"
    assert manifest(out, "empty.wav").error.file_problem is True
    assert manifest(out, "b.wav").input.location == str(source / "b.wav")  # where the file was
    assert not (out / "b.wav.json").exists()
    # A rerun retries exactly the failed files.
    again = FakePipeline()
    job(source, out, again).run()
    assert sorted(again.pulled) == ["b.wav", "broken.wav", "empty.wav"]


def test_a_fault_that_is_not_the_files_own_writes_no_manifest_and_the_next_run_does_the_file(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job(source, out, FakePipeline()).run()
    faults = {
        "b.wav": RuntimeError("CUDA error: an illegal memory access"),  # nobody foresaw it: not the file's
        "e.wav": AlignmentModelNotLoaded("alignment model 'x' for 'en' could not be loaded: offline"),
    }
    report = job(source, out, FakePipeline(errors=faults), formats="srt").run()  # a changed setting redoes all
    assert report.exit_code == 1 and report.error is None and len(report.succeeded) == 3
    failed = {item.key: item.error for item in report.failed}
    assert {key: error.type for key, error in failed.items()} == {
        "b.wav": "RuntimeError",
        "e.wav": "AlignmentModelNotLoaded",
    }
    assert all(error.file_problem is False and "not the file's fault" in error.message for error in failed.values())
    # No failed manifest: each keeps the succeeded one of the first run's settings (issue 34 #3), for a rerun to redo.
    kept = {key: manifest(out, key) for key in ("b.wav", "e.wav")}
    assert all(m.status == "succeeded" and m.settings_hash != report.settings_hash for m in kept.values())
    again = FakePipeline()
    rerun = job(source, out, again, formats="srt").run()
    assert sorted(again.pulled) == ["b.wav", "e.wav"] and rerun.exit_code == 0


def test_a_run_whose_every_file_meets_a_fault_not_its_own_stops_with_exit_3(source: Path, tmp_path: Path) -> None:
    (source / "c/d.flac").unlink()
    for name in ("e.wav", "f.wav"):
        (source / name).unlink()
    out = tmp_path / "out"
    fault = AlignmentModelNotLoaded("alignment model 'x' for 'en' could not be loaded: out of memory")
    report = job(source, out, FakePipeline(errors=dict.fromkeys(("a.wav", "b.wav"), fault))).run()
    assert report.exit_code == 3 and report.error is not None
    assert "every file failed, none for a reason of its own" in report.error.message
    assert not list(out.glob("*.manifest.json"))


def test_a_failed_try_that_writes_no_outputs_leaves_a_succeeded_manifest_whole(source: Path, tmp_path: Path) -> None:
    """A done file tried again (a new version, --force) that fails before any output: its succeeded manifest (the
    only record of what the guard dropped) and its outputs stay as they are, and the failure is in the run report.
    Only a try with outputs of its own replaces it."""
    out = tmp_path / "out"
    job(source, out, FakePipeline()).run()
    done = {key: (out / f"{key}.manifest.json").read_bytes() for key in ("a.wav", "b.wav")}
    (source / "a.wav").write_bytes(b"RIFF....a corrupt new version")
    report = job(source, out, FakePipeline()).run()
    assert [failed.key for failed in report.failed] == ["a.wav"] and report.exit_code == 1
    assert report.failed[0].error.type == "AudioDecodeError"
    machine_fault = FakePipeline(errors={"b.wav": RuntimeError("CUDA error: an illegal memory access")})
    forced = job(source, out, machine_fault, force=True).run()
    assert {failed.key for failed in forced.failed} == {"a.wav", "b.wav"}
    for key in ("a.wav", "b.wav"):
        assert (out / f"{key}.manifest.json").read_bytes() == done[key]
        assert (out / f"{key}.json").is_file()
    tone(source / "a.wav", seconds=2.0)  # a sound new version: its outputs and manifest replace the old
    redone = job(source, out, FakePipeline()).run()
    assert "a.wav" in redone.succeeded and manifest(out, "a.wav").audio_seconds == 2.0


def test_the_same_unexpected_error_three_times_in_a_row_stops_the_run(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    fault = {key: RuntimeError("CUDA error: an illegal memory access") for key in ("a.wav", "b.wav", "c/d.flac")}
    report = job(source, out, FakePipeline(errors=fault)).run()
    assert report.exit_code == 3 and report.error is not None and report.error.type == "EnvironmentProblem"
    assert "the last 3 files failed with RuntimeError" in report.error.message
    assert "f.wav" not in report.succeeded
    stored = RunReport.decode(next((out / "_runs").glob("*.json")).read_bytes())
    assert stored is not None and stored.exit_code == 3 and stored.error == report.error


@pytest.mark.parametrize(
    "error",
    [
        WorkerDied("the file was being transcribed when a worker died, twice"),
        ForeignError("AudioDecodeError", "no audio stream", file_problem=True),  # a worker's FileFailure
    ],
    ids=["worker-died", "file-failure-from-a-worker"],
)
def test_files_that_fail_on_their_own_never_stop_the_run_however_many_in_a_row(
    source: Path, tmp_path: Path, error: Exception
) -> None:
    out = tmp_path / "out"
    faults = {key: error for key in ("a.wav", "b.wav", "c/d.flac", "e.wav")}
    report = job(source, out, FakePipeline(errors=faults)).run()
    assert report.exit_code == 1 and report.error is None
    assert report.succeeded == ["f.wav"] and len(report.failed) == 4
    assert manifest(out, "e.wav").error.file_problem is True


def test_an_unexpected_error_from_a_worker_still_stops_the_run(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    fault = ForeignError("RuntimeError", "CUDA error: an illegal memory access", file_problem=False)
    report = job(source, out, FakePipeline(errors=dict.fromkeys(("a.wav", "b.wav", "c/d.flac"), fault))).run()
    assert report.exit_code == 3 and "the last 3 files failed with RuntimeError" in report.error.message
    assert not (out / "a.wav.manifest.json").exists() and report.failed[0].error.file_problem is False


def test_a_run_stopping_error_is_recorded_with_its_exit_code(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused = ConfigError("language", "the model is English-only; use en or auto")
    report = job(source, out, FakePipeline(load_error=refused)).run()
    assert report.exit_code == 2 and report.error is not None and report.error.type == "ConfigError"
    assert not list(out.glob("*.manifest.json"))


def test_a_stop_request_writes_what_is_done_and_a_rerun_does_the_rest_once(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs: list[Job] = []

    def stop_after_first_batch(keys: list[str]) -> None:
        if keys == ["a.wav", "b.wav"]:
            runs[0].request_stop(15)

    first = job(source, out, FakePipeline(on_batch=stop_after_first_batch), prefetch=3)
    runs.append(first)
    report = first.run()
    assert report.succeeded == ["a.wav", "b.wav"] and report.exit_code == 128 + 15
    again = FakePipeline()
    rerun = job(source, out, again).run()
    assert sorted(again.pulled) == ["c/d.flac", "e.wav", "f.wav"] and len(rerun.skipped) == 2


def test_claims_of_files_never_written_are_released_once_prefetch_has_stopped(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs: list[Job] = []
    first = job(source, out, FakePipeline(on_batch=lambda keys: runs[0].request_stop()), claim=True, prefetch=4)
    runs.append(first)
    report = first.run()
    assert report.succeeded == ["a.wav", "b.wav"]
    # Files claimed and decoded ahead (c/d.flac, e.wav, f.wav) were given back: nothing is held until its TTL.
    assert not list((out / "_claims").rglob("*.claim"))
    rerun = job(source, out, FakePipeline(), claim=True).run()
    assert sorted(rerun.succeeded) == ["c/d.flac", "e.wav", "f.wav"] and rerun.claimed_elsewhere == []


def test_a_worker_whose_files_are_all_claimed_loads_no_model(source: Path, tmp_path: Path) -> None:
    from batch.run.claims import Claims
    from batch.storage import open_store

    out = tmp_path / "out"
    other = Claims(open_store(str(out)), "another-run", 3600)
    for key in ("a.wav", "b.wav", "c/d.flac", "e.wav", "f.wav"):
        assert other.claim(key)
    pipeline = FakePipeline()
    report = job(source, out, pipeline, claim=True).run()
    assert len(report.claimed_elsewhere) == 5 and pipeline.loads == 0 and report.exit_code == 0


KEYS = ["a.wav", "b.wav", "c/d.flac", "e.wav", "f.wav"]


def test_a_run_leaves_the_files_a_run_with_other_settings_did_beside_it_and_a_rerun_redoes_them_once(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    beside: list[RunReport] = []

    def run_beside(keys: list[str]) -> None:
        if not beside:  # while this run holds its files, a run with other settings does them all
            beside.append(job(source, out, FakePipeline(), formats="srt").run())

    first = job(source, out, FakePipeline(batch_size=5, on_batch=run_beside)).run()
    (other,) = beside
    assert sorted(other.succeeded) == KEYS
    # No ping-pong: the other run's work stands, this run's is not written over it, and both are said.
    assert first.succeeded == [] and sorted(first.skipped) == KEYS and first.exit_code == 0
    assert sorted(first.other_settings.left) == KEYS
    assert "5 left to a run with other settings running beside this one" in first.summary()
    for key in KEYS:
        assert manifest(out, key).settings_hash == other.settings_hash and (out / f"{key}.srt").is_file()

    # Read at the listing too: a run that starts, then finds files done by another with other settings since.
    second = job(source, out, FakePipeline(), formats="txt")
    listing = second.pending()  # its run has started: its listing is read from here
    job(source, out, FakePipeline(), formats="tsv").run()
    assert list(listing) == []
    assert second.runner is not None and sorted(second.runner.report.other_settings.left) == KEYS

    # A rerun after them with a changed setting redoes every file, once, and says why.
    rerun = job(source, out, FakePipeline()).run()
    assert sorted(rerun.succeeded) == KEYS and sorted(rerun.other_settings.changed) == KEYS
    assert "5 redone with this run's" in rerun.summary()
    again = job(source, out, FakePipeline()).run()
    assert sorted(again.skipped) == KEYS and again.other_settings.changed == [] and again.other_settings.said() is None
