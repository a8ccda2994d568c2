"""Worker processes behind one run (--workers, --gpus): real processes, real files, real decoding, real manifests.

The workers run a fake pipeline at the seam (tests.fakes.worker_pipeline), which the worker's environment makes
misbehave as real workers do: die by SIGKILL mid-batch, refuse to start. tests/cli/test_workers.py runs the
real models in real worker processes.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.common.errors import (
    AudioDecodeError,
    BatchError,
    DestPathBlocked,
    EnvironmentProblem,
    WorkerDied,
    is_file_problem,
    type_name,
)
from batch.engine.gpu.oom import CudaContextLost
from batch.run.config import configure
from batch.run.job import Job
from batch.run.manifest import Manifest
from batch.run.pool.messages import ErrorInfo
from batch.run.pool.plan import WorkerSlot
from batch.run.pool.pool import WorkerPool
from batch.run.report import RunReport
from batch.run.tally import FileEvent
from batch.settings.options import Settings, load_settings
from tests.conftest import tone
from tests.fakes import STICKY_CUDA_ERROR, FakePipeline


def pool_job(
    source: Path,
    out: Path,
    environs: list[dict[str, str]],
    on_file: Callable[[FileEvent], None] = lambda event: None,
    **options: object,
) -> Job:
    """A job whose pipeline is a pool of len(environs) CPU workers, each with its environment."""
    settings = load_settings({"source": str(source), "out": str(out), "device": "cpu", **options}, environ={})
    return Job(settings, environ={}, pipeline=fake_workers(settings, environs), on_file=on_file)


def fake_workers(settings: Settings, environs: list[dict[str, str]]) -> WorkerPool:
    """A pool of len(environs) CPU workers running the fake pipeline (tests.fakes:worker_pipeline)."""
    slots = tuple(WorkerSlot(f"cpu{i}", "cpu", 1, "CPU, 1 thread", env) for i, env in enumerate(environs))
    return WorkerPool(configure(settings, environ={}).pipeline, slots, factory="tests.fakes:worker_pipeline")


def manifests(out: Path) -> dict[str, Manifest]:
    found = {}
    for path in out.rglob("*.manifest.json"):
        manifest = Manifest.decode(path.read_bytes())
        assert manifest is not None
        found[manifest.input.key] = manifest
    return found


def stored_report(out: Path) -> RunReport:
    reports = sorted((out / "_runs").glob("*.json"))
    report = RunReport.decode(reports[-1].read_bytes())
    assert report is not None
    return report


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for index in range(12):
        tone(folder / f"call{index:02d}.wav")
    return folder


def test_two_workers_transcribe_every_file_exactly_once(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "loaded").mkdir()
    both = {"FAKE_BATCH_SECONDS": "0.2", "FAKE_ALL_READY": f"{tmp_path / 'loaded'}:2"}  # both there from the start
    report = pool_job(calls, out, [both, both]).run()
    keys = sorted(f"call{index:02d}.wav" for index in range(12))
    assert report.exit_code == 0 and sorted(report.succeeded) == keys and not report.failed
    written = manifests(out)
    assert sorted(written) == keys and all(m.status == "succeeded" for m in written.values())
    # one report, whose counts are the manifests', and each file's manifest names its worker
    assert stored_report(out).counts == {"succeeded": 12, "skipped": 0, "failed": 0, "claimed_elsewhere": 0}
    by_worker = {name: sum((m.worker or "").startswith(name) for m in written.values()) for name in ("cpu0", "cpu1")}
    assert by_worker == {w.name: w.files for w in report.workers} and sum(by_worker.values()) == 12
    assert all(count > 0 for count in by_worker.values()), by_worker
    assert [w.state for w in report.workers] == ["exited", "exited"] and report.asr is not None
    assert report.asr.items == 12  # the workers' own figures, summed
    rerun = pool_job(calls, out, [{}, {}]).run()
    assert len(rerun.skipped) == 12 and rerun.exit_code == 0 and not rerun.workers[0].files


def test_a_worker_killed_mid_batch_hands_its_files_to_another(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    marker = tmp_path / "killed"
    environ = {"FAKE_KILL_ONCE": str(marker), "FAKE_BATCH_SECONDS": "0.1"}
    report = pool_job(calls, out, [environ, environ]).run()
    killed_with = marker.read_text().split(",")
    assert killed_with and all(key in report.succeeded for key in killed_with)
    assert report.exit_code == 0 and len(report.succeeded) == 12 and not report.failed
    assert sum(w.restarts for w in report.workers) == 1 and not any(w.problem for w in report.workers)
    assert all(m.status == "succeeded" for m in manifests(out).values()) and len(manifests(out)) == 12


def test_a_worker_whose_cuda_context_is_lost_exits_and_a_fresh_one_does_its_files(
    calls: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PyTorch's sticky "illegal memory access" error, through the pipeline's guard (CudaContextLost, a BatchError
    that stops a one-process run): the worker says why and exits, the pool starts a fresh one, and the files it
    held are done by the workers, each once. The run goes on: it is a death, not the run's end."""
    out = tmp_path / "out"
    marker = tmp_path / "lost"
    environ = {"FAKE_CONTEXT_LOST_ONCE": str(marker), "FAKE_BATCH_SECONDS": "0.1"}
    report = pool_job(calls, out, [environ, environ]).run()
    held = marker.read_text().split(",")
    assert held and all(key in report.succeeded for key in held)
    assert report.exit_code == 0 and len(report.succeeded) == 12 and not report.failed, report.summary()
    assert sum(w.restarts for w in report.workers) == 1 and not any(w.problem for w in report.workers)
    assert all(m.status == "succeeded" for m in manifests(out).values()) and len(manifests(out)) == 12
    said = "exited: the CUDA context is lost: CUDA error: an illegal memory access was encountered; "
    assert any(said + f"{len(held)} file(s) it held go back" in line for line in caplog.messages), caplog.text


def test_a_file_that_loses_the_cuda_context_twice_fails_alone(calls: Path, tmp_path: Path) -> None:
    """A file whose batch loses the CUDA context in every worker: retried alone once, then failed (WorkerDied,
    both deaths in its manifest); the files beside it are done and the device is not given up."""
    tone(calls / "lost.wav")
    out = tmp_path / "out"
    environ = {"FAKE_CONTEXT_LOST": "lost"}
    report = pool_job(calls, out, [environ, environ]).run()
    assert report.exit_code == 1 and len(report.succeeded) == 12, report.summary()
    assert [(f.key, f.error.type, f.error.file_problem) for f in report.failed] == [("lost.wav", "WorkerDied", True)]
    reason = manifests(out)["lost.wav"].error
    assert reason is not None and reason.message.count("the CUDA context is lost: CUDA error: an illegal") == 2
    assert "then, with this file alone, worker cpu" in reason.message
    assert sum(w.restarts for w in report.workers) == 2 and not any(w.problem for w in report.workers)


def test_without_workers_a_lost_cuda_context_stops_the_run_with_exit_3_and_nothing_written(
    calls: Path, tmp_path: Path
) -> None:
    """The same error in a one-process run: nothing more can run in this process, so the run stops (exit 3,
    CudaContextLost) with no file failed for it; the rerun (or the restarted pod) does them."""
    out = tmp_path / "out"

    def lose_the_context(keys: list[str]) -> None:
        if "call04.wav" in keys:
            raise RuntimeError(STICKY_CUDA_ERROR)

    settings = load_settings({"source": str(calls), "out": str(out), "device": "cpu"}, environ={})
    report = Job(settings, environ={}, pipeline=FakePipeline(on_batch=lose_the_context)).run()
    assert report.exit_code == 3 and report.error is not None and report.error.type == "CudaContextLost"
    assert report.error.message == "the CUDA context is lost: CUDA error: an illegal memory access was encountered"
    assert not report.failed and "call04.wav" not in manifests(out)
    assert all(m.status == "succeeded" for m in manifests(out).values())


def test_a_file_that_kills_two_workers_fails_alone(calls: Path, tmp_path: Path) -> None:
    tone(calls / "poison.wav")
    out = tmp_path / "out"
    environ = {"FAKE_POISON": "poison"}
    report = pool_job(calls, out, [environ, environ]).run()
    assert report.exit_code == 1 and len(report.succeeded) == 12
    assert [(f.key, f.error.type) for f in report.failed] == [("poison.wav", "WorkerDied")]
    reason = manifests(out)["poison.wav"].error
    assert reason is not None and reason.message.count("was killed by SIGKILL") == 2, reason
    # the innocent file in the poison's first batch was retried alone and succeeded; two workers died, no more
    assert sum(w.restarts for w in report.workers) == 2 and not any(w.problem for w in report.workers)


def test_a_worker_that_hangs_on_a_file_is_killed_past_its_deadline_and_only_that_file_fails(
    calls: Path, tmp_path: Path
) -> None:
    """A worker stops (SIGSTOP) on the batch that holds hang.wav: past the deadline the pool kills it and tries
    that batch's files again, each alone; hang.wav stops a worker again and fails alone, naming the worker, the
    other files are done, and the device is not given up."""
    tone(calls / "hang.wav")
    out = tmp_path / "out"
    environ = {"FAKE_HANG": "hang"}
    report = pool_job(calls, out, [environ, environ], file_timeout=2).run()
    assert report.exit_code == 1 and len(report.succeeded) == 12, report.summary()
    (failed,) = report.failed
    assert failed.key == "hang.wav" and failed.error.type == "FileTimeout"
    assert failed.error.message.startswith("past its deadline (file_timeout 2 s) in worker cpu")
    assert "which was killed (a stage that did not return, twice)" in failed.error.message
    assert sum(w.restarts for w in report.workers) == 2 and not any(w.problem for w in report.workers)
    assert manifests(out)["hang.wav"].status == "failed"


def test_a_worker_that_cannot_start_is_reported_and_the_others_go_on(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    healthy = {"FAKE_BATCH_SECONDS": "0.5"}  # 6 batches: the other worker's failure is in before the end
    report = pool_job(calls, out, [healthy, {"FAKE_LOAD_ERROR": "CUDA error: all CUDA-capable devices are busy"}]).run()
    assert report.exit_code == 0 and len(report.succeeded) == 12
    broken = report.workers[1]
    assert broken.state == "failed" and broken.files == 0 and "devices are busy" in (broken.problem or "")
    assert not broken.started and report.workers[0].started
    assert report.workers[0].files == 12
    assert "worker cpu1 (CPU, 1 thread): could not start: CUDA error" in report.summary()


def test_with_no_worker_able_to_start_the_run_stops_with_exit_3(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = {"FAKE_LOAD_ERROR": "no CUDA GPUs are available"}
    report = pool_job(calls, out, [broken, broken]).run()
    assert report.exit_code == 3 and report.error is not None
    assert report.error.message.startswith("no worker could start: cpu0: could not start: no CUDA GPUs")
    assert not report.succeeded and not manifests(out)


def test_a_stop_request_ends_every_worker_and_a_rerun_does_exactly_the_rest(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    environ = {"FAKE_BATCH_SECONDS": "0.3"}
    jobs: list[Job] = []

    def stop_after_the_first(event: FileEvent) -> None:
        if event.status == "succeeded":
            jobs[0].request_stop(15)  # as the command line's SIGTERM handler does

    jobs.append(pool_job(calls, out, [environ, environ], on_file=stop_after_the_first))
    report = jobs[0].run()
    assert report.exit_code == 143 and 1 <= len(report.succeeded) < 12
    assert sorted(manifests(out)) == sorted(report.succeeded)  # nothing half-written, nothing unrecorded
    rerun = pool_job(calls, out, [{}, {}]).run()
    assert rerun.exit_code == 0 and sorted(rerun.skipped) == sorted(report.succeeded)
    assert sorted(rerun.succeeded + rerun.skipped) == sorted(f"call{index:02d}.wav" for index in range(12))


def test_a_batch_error_in_a_worker_stops_the_run_with_its_exit_code(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    environ = {"FAKE_RAISE": "call05.wav=environment"}
    report = pool_job(calls, out, [environ, environ]).run()
    assert report.exit_code == 3 and report.error is not None
    assert (report.error.type, report.error.message) == ("EnvironmentProblem", "the GPU fell off the bus")
    assert "call05.wav" not in manifests(out) and all(m.status == "succeeded" for m in manifests(out).values())
    assert sum(w.restarts for w in report.workers) == 0  # the run ends: the worker that said so is not replaced


def test_a_file_that_breaks_its_worker_twice_with_a_defect_fails_alone(calls: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    environ = {"FAKE_RAISE": "call05.wav=defect"}
    report = pool_job(calls, out, [environ, environ]).run()
    assert report.exit_code == 1 and len(report.succeeded) == 11
    (failed,) = report.failed
    assert failed.key == "call05.wav" and failed.error.type == "WorkerDied"
    assert failed.error.message.count("failed: RuntimeError: bug") == 2


def test_deaths_a_retried_file_is_blamed_for_do_not_take_its_device_out(calls: Path, tmp_path: Path) -> None:
    """One worker, two poison files in one batch: three deaths, but only the first is the device's to count."""
    tone(calls / "poison1.wav")
    tone(calls / "poison2.wav")
    out = tmp_path / "out"
    report = pool_job(calls, out, [{"FAKE_POISON": "poison"}]).run()
    assert report.exit_code == 1 and len(report.succeeded) == 12
    assert sorted((f.key, f.error.type) for f in report.failed) == [
        ("poison1.wav", "WorkerDied"),
        ("poison2.wav", "WorkerDied"),
    ]
    (worker,) = report.workers
    assert worker.restarts == 3 and worker.problem is None and worker.state == "exited"


def test_a_pipeline_that_cannot_be_built_says_why(calls: Path, tmp_path: Path) -> None:
    settings = load_settings({"source": str(calls), "out": str(tmp_path / "out"), "device": "cpu"}, environ={})
    slots = (WorkerSlot("cpu0", "cpu", 1, "CPU, 1 thread"),)
    pool = WorkerPool(configure(settings, environ={}).pipeline, slots, factory="tests.nowhere:pipeline")
    report = Job(settings, environ={}, pipeline=pool).run()
    assert report.exit_code == 3 and report.error is not None
    assert report.error.message == "no worker could start: cpu0: could not start: No module named 'tests.nowhere'"


@pytest.mark.parametrize(
    ("error", "file_problem", "exit_code"),
    [
        (AudioDecodeError("no audio stream"), True, None),
        (WorkerDied("a worker died on it twice"), True, None),
        (DestPathBlocked("a.wav.manifest.json", IsADirectoryError()), True, None),
        (RuntimeError("CUDA error: an illegal memory access"), False, None),
        (EnvironmentProblem("DEST is not writable"), False, 3),
        (CudaContextLost("the CUDA context is lost: CUDA error: an illegal memory access"), False, 3),
    ],
)
def test_an_error_from_a_worker_keeps_what_it_fails(
    error: Exception, file_problem: bool, exit_code: int | None
) -> None:
    info = pickle.loads(pickle.dumps(ErrorInfo.of(error)))  # as it travels from the worker
    rebuilt = info.rebuilt()
    assert (info.file_problem, info.exit_code) == (file_problem, exit_code)
    assert info.context_lost is ("illegal memory access" in str(error))  # the worker exits after it, not the run
    assert is_file_problem(rebuilt) is file_problem and type_name(rebuilt) == type(error).__name__
    assert isinstance(rebuilt, BatchError) is (exit_code is not None)
