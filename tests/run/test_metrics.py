"""Prometheus metrics of a run: the text file and the Pushgateway push, read back with prometheus-client's parser.

A real Pushgateway is not packaged, so a small HTTP server on 127.0.0.1 stands in for one: it records every
request (method, path with the grouping labels, body, auth header) and answers 200 as a Pushgateway does.
The runner is the real one (real files, decoding, manifests) with the fake pipeline at its seam; one test runs
the real command line with a real model.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from batch.common.errors import ConfigError
from batch.engine.gpu.oom import StageMemoryRecord
from batch.engine.pipeline import PipelineStats
from batch.run.job import Job
from batch.run.metrics import RunMetrics
from batch.run.report import RunReport
from batch.run.tally import FileEvent
from batch.settings.options import load_settings
from tests.conftest import sections, speak, tone
from tests.fakes import FakePipeline
from tests.memory_fakes import FakeProbe

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "metrics.md"
ALERTS = ROOT / "examples" / "prometheus" / "whisperx-batch-alerts.yml"
PASSWORD = "pg-pass-" + "7f3a9c"  # built from pieces: not a real secret, and a scanner should not think so


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for name in ("a.wav", "b.wav", "c/d.flac"):
        tone(folder / name, seconds=2.0)
    return folder


def job(source: Path, out: Path, pipeline: FakePipeline, **flags: object) -> Job:
    settings = load_settings({"source": str(source), "out": str(out), "device": "cpu", **flags}, environ={})
    return Job(settings, environ={}, pipeline=pipeline)


# --- reading metrics back -------------------------------------------------------------------------------------


def parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> its samples (sample name, labels, value), as Prometheus' own client parses them."""
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def value(families: dict, sample_name: str, **labels: str) -> float:
    """The one sample of that name whose labels include `labels`."""
    found = [
        v
        for samples in families.values()
        for name, have, v in samples
        if name == sample_name and labels.items() <= have.items()
    ]
    assert len(found) == 1, f"{sample_name}{labels}: {len(found)} samples"
    return found[0]


def sample_names(families: dict) -> set[str]:
    return {name for samples in families.values() for name, _, _ in samples}


# --- a Pushgateway stand-in -----------------------------------------------------------------------------------


@dataclass
class Push:
    method: str
    path: str
    body: str
    authorization: str | None


class Recorder:
    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self.received = threading.Condition()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        with self.received:
            assert self.received.wait_for(lambda: len(self.pushes) >= count, timeout), f"{len(self.pushes)} pushes"


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self._record()

        def do_POST(self) -> None:
            self._record()

        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            with recorder.received:
                recorder.pushes.append(Push(self.command, self.path, body, self.headers.get("Authorization")))
                recorder.received.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the text file --------------------------------------------------------------------------------------------


def test_the_textfile_holds_the_runs_figures_and_a_rerun_its_skips(source: Path, tmp_path: Path) -> None:
    out, textfile = tmp_path / "out", tmp_path / "whisperx.prom"
    pipeline = FakePipeline()
    report = job(source, out, pipeline, metrics_textfile=str(textfile)).run()
    assert report.exit_code == 0
    families = parse(textfile.read_text())
    assert value(families, "whisperx_batch_files_total", outcome="succeeded") == 3
    assert value(families, "whisperx_batch_files_total", outcome="failed") == 0
    assert value(families, "whisperx_batch_files_total", outcome="skipped") == 0
    assert value(families, "whisperx_batch_audio_seconds_total") == pytest.approx(6.0)
    assert value(families, "whisperx_batch_run_duration_seconds") == report.wall_seconds
    assert value(families, "whisperx_batch_realtime_factor") == pytest.approx(6.0 / report.wall_seconds)
    assert value(families, "whisperx_batch_stage_seconds_total", stage="decode") > 0
    assert value(families, "whisperx_batch_stage_seconds_total", stage="asr") == pytest.approx(0.03)  # 0.01 a file
    assert value(families, "whisperx_batch_stage_seconds_total", stage="diarize") == 0  # listed though not run
    assert value(families, "whisperx_batch_stage_busy_share", stage="asr") == pytest.approx(0.03 / report.wall_seconds)
    assert value(families, "whisperx_batch_stage_busy_share", stage="diarize") == 0
    assert value(families, "whisperx_batch_asr_batches_total") == pipeline.stats().asr_batches == 2
    assert value(families, "whisperx_batch_asr_batch_fill") == 1.5
    assert value(families, "whisperx_batch_run_exit_code") == 0
    info = value_labels(families, "whisperx_batch_run_info")
    assert info["run_id"] == report.run_id and info["device"] == "cpu"
    started, ended = (value(families, f"whisperx_batch_run_{edge}_timestamp_seconds") for edge in ("start", "end"))
    assert time.time() - 60 < started <= ended <= time.time()
    assert value(families, "whisperx_batch_last_success_timestamp_seconds") == ended
    assert not list(tmp_path.glob("whisperx.prom.*"))  # the temporary file was renamed into place

    rerun = job(source, out, FakePipeline(), metrics_textfile=str(textfile)).run()
    families = parse(textfile.read_text())
    assert value_labels(families, "whisperx_batch_run_info")["run_id"] == rerun.run_id
    assert value(families, "whisperx_batch_files_total", outcome="skipped") == 3
    assert value(families, "whisperx_batch_files_total", outcome="succeeded") == 0
    assert "whisperx_batch_realtime_factor" not in sample_names(families)  # no audio: no figure, not a zero


def value_labels(families: dict, sample_name: str) -> dict[str, str]:
    (labels,) = [have for samples in families.values() for name, have, _ in samples if name == sample_name]
    return labels


def test_failed_files_are_counted_by_error_type_and_a_failed_run_has_no_success_time(
    source: Path, tmp_path: Path
) -> None:
    (source / "broken.wav").write_bytes(b"not audio at all")
    textfile = tmp_path / "m.prom"
    pipeline = FakePipeline(errors={"b.wav": RuntimeError("a fault in this file")})
    report = job(source, tmp_path / "out", pipeline, metrics_textfile=str(textfile)).run()
    assert report.exit_code == 1
    families = parse(textfile.read_text())
    assert value(families, "whisperx_batch_files_total", outcome="failed", error_type="RuntimeError") == 1
    assert value(families, "whisperx_batch_files_total", outcome="failed", error_type="AudioDecodeError") == 1
    assert value(families, "whisperx_batch_files_total", outcome="succeeded") == 2
    assert value(families, "whisperx_batch_run_exit_code") == 1
    assert "whisperx_batch_last_success_timestamp_seconds" not in sample_names(families)


def test_an_unwritable_textfile_is_a_warning_and_the_run_goes_on(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_the_way = tmp_path / "metrics.prom"
    in_the_way.mkdir()  # a folder where the file should go: the rename fails, whoever runs the test
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        report = job(source, out, FakePipeline(), metrics_textfile=str(in_the_way), metrics_interval=1).run()
    assert report.exit_code == 0 and len(report.succeeded) == 3
    assert len(list(out.rglob("*.manifest.json"))) == 3
    warnings = [r for r in caplog.records if r.name.startswith("batch.run.metrics")]
    assert len(warnings) == 1 and "cannot write the metrics file" in warnings[0].getMessage()
    assert warnings[0].exc_info is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("metrics.prom.")]  # no temporary file left


def test_a_textfile_in_a_folder_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metrics_textfile: folder not found: .*nowhere.*--metrics-textfile"):
        load_settings({"metrics_textfile": str(tmp_path / "nowhere" / "m.prom")}, environ={})


# --- the Pushgateway ------------------------------------------------------------------------------------------


def test_the_push_carries_the_same_set_as_the_textfile_grouped_by_job_and_shard(
    source: Path, tmp_path: Path, pushgateway: tuple[str, Recorder]
) -> None:
    url, recorder = pushgateway
    textfile = tmp_path / "m.prom"
    report = job(
        source,
        tmp_path / "out",
        FakePipeline(),
        metrics_textfile=str(textfile),
        metrics_pushgateway=url,
        metrics_job="nightly",
        shard="1/2",
    ).run()
    assert report.exit_code == 0
    final = recorder.pushes[-1]
    assert final.method == "PUT"  # replaces the group: never a mix of two runs' figures
    assert final.path == "/metrics/job/nightly/shard/1"
    assert final.authorization is None
    pushed, written = parse(final.body), parse(textfile.read_text())
    assert pushed == written
    assert value(pushed, "whisperx_batch_files_total", outcome="succeeded", shard="1") == len(report.succeeded)
    assert all(labels["shard"] == "1" for samples in pushed.values() for _, labels, _ in samples)


def test_workers_that_split_the_work_without_shards_push_to_groups_of_their_own(
    source: Path, tmp_path: Path, pushgateway: tuple[str, Recorder]
) -> None:
    url, recorder = pushgateway
    report = job(source, tmp_path / "out", FakePipeline(), metrics_pushgateway=url, claim=True).run()
    assert report.exit_code == 0
    host = socket.gethostname()
    assert recorder.pushes[-1].path == f"/metrics/job/whisperx_batch/instance/{host}"  # each pod its own group
    pushed = parse(recorder.pushes[-1].body)
    assert value(pushed, "whisperx_batch_files_total", outcome="succeeded", instance=host) == len(report.succeeded)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_logged(
    source: Path, tmp_path: Path, pushgateway: tuple[str, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    url, recorder = pushgateway
    with_credentials = url.replace("http://", f"http://batch:{PASSWORD}@")
    with caplog.at_level(logging.DEBUG):
        job(source, tmp_path / "out", FakePipeline(), metrics_pushgateway=with_credentials).run()
    expected = "Basic " + base64.b64encode(f"batch:{PASSWORD}".encode()).decode()
    assert recorder.pushes and all(push.authorization == expected for push in recorder.pushes)
    assert recorder.pushes[-1].path == "/metrics/job/whisperx_batch"  # not sharded: the job alone
    assert PASSWORD not in caplog.text


def test_metrics_are_pushed_while_one_long_file_is_in_the_models(
    source: Path, tmp_path: Path, pushgateway: tuple[str, Recorder]
) -> None:
    url, recorder = pushgateway
    seen_mid_run: list[Push] = []

    def long_batch(keys: list[str]) -> None:  # the first batch takes as long as three pushes
        if not seen_mid_run:
            before = len(recorder.pushes)
            recorder.wait_for(before + 2, timeout=20)
            seen_mid_run.append(recorder.pushes[-1])

    report = job(
        source, tmp_path / "out", FakePipeline(on_batch=long_batch), metrics_pushgateway=url, metrics_interval=1
    ).run()
    during = parse(seen_mid_run[0].body)
    assert "whisperx_batch_run_exit_code" not in sample_names(during)  # still running
    assert value(during, "whisperx_batch_files_total", outcome="succeeded") == 0
    assert value(during, "whisperx_batch_run_duration_seconds") >= 1
    assert value(parse(recorder.pushes[-1].body), "whisperx_batch_run_exit_code") == report.exit_code == 0
    assert not [thread for thread in threading.enumerate() if thread.name == "metrics"]  # stopped with the run


def test_an_unreachable_pushgateway_is_one_warning_and_the_run_goes_on(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, textfile = tmp_path / "out", tmp_path / "m.prom"
    unreachable = f"http://batch:{PASSWORD}@127.0.0.1:{closed_port()}"

    def slow_batch(keys: list[str]) -> None:  # the first batch lasts until a periodic push has failed too
        deadline = time.monotonic() + 20
        while not any("again" in r.getMessage() for r in caplog.records if r.name.endswith("metrics_export")):
            assert time.monotonic() < deadline, "no periodic push was tried during the run"
            time.sleep(0.02)

    with caplog.at_level(logging.INFO), caplog.at_level(logging.DEBUG, logger="batch.run.metrics_export"):
        report = job(
            source,
            out,
            FakePipeline(on_batch=slow_batch),
            metrics_pushgateway=unreachable,
            metrics_textfile=str(textfile),
            metrics_interval=1,
        ).run()
    assert report.exit_code == 0 and len(report.succeeded) == 3
    assert all(manifest_status(path) == "succeeded" for path in out.rglob("*.manifest.json"))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "Pushgateway at http://127.0.0.1:" in message and "refused" in message
    assert warnings[0].exc_info is None and PASSWORD not in caplog.text
    assert value(parse(textfile.read_text()), "whisperx_batch_run_exit_code") == 0  # the textfile is unaffected


def manifest_status(path: Path) -> str:
    import json

    return json.loads(path.read_text())["status"]


# --- the set and its names ------------------------------------------------------------------------------------


def every_metric() -> dict:
    """A finished run with every figure present: GPU records, an out-of-memory retry, NVML readings."""
    report = RunReport(
        run_id="r1",
        started_at="2030-01-02T03:04:05.000Z",
        finished_at="2030-01-02T03:05:05.000Z",
        wall_seconds=60.0,
        exit_code=0,
        batch_size=16,
    )
    stats = PipelineStats(load_seconds=4.5, asr_batches=3, asr_items=40, batch_size=16)
    stats.gpu_records += [
        StageMemoryRecord("asr", 16, 16, 16),
        StageMemoryRecord("asr", 16, 16, 8, oom_retries=1),
        StageMemoryRecord("diarize", 16, 16, 16),
    ]
    stats.workers = [  # as batch.run.pool.WorkerPool reports its workers (--gpus)
        worker_figures("gpu0", "ready", files=5, busy_seconds=50.0, batch_size={"asr": 8}, oom_retries={"asr": 1}),
        worker_figures("gpu1", "failed", restarts=3),
    ]
    probe = FakeProbe(free=30 * 2**30, used=50 * 2**30)
    metrics = RunMetrics(labels={"shard": "0"}, info={"model": "tiny"}, probe=probe)
    metrics.watch(report, lambda: stats)
    metrics.on_file(FileEvent("a.wav", "succeeded", 120.0, 10.0, timings={"decode": 0.5, "vad": 1.0, "asr": 8.0}))
    metrics.on_file(FileEvent("b.wav", "failed", 0.0, 0.1, "AudioDecodeError", {"decode": 0.1}))
    from prometheus_client import generate_latest

    return parse(generate_latest(metrics.registry).decode())


def test_the_gpu_figures_come_from_the_pipeline_records_and_nvml() -> None:
    families = every_metric()
    assert value(families, "whisperx_batch_batch_size", stage="asr") == 8  # the latest batch's, after the retry
    assert value(families, "whisperx_batch_batch_size", stage="diarize") == 16
    assert value(families, "whisperx_batch_batch_size_configured") == 16
    assert value(families, "whisperx_batch_oom_retries_total", stage="asr") == 1
    assert value(families, "whisperx_batch_oom_retries_total", stage="align") == 0
    assert value(families, "whisperx_batch_gpu_memory_used_bytes") == 50 * 2**30
    assert value(families, "whisperx_batch_gpu_memory_total_bytes") == 80 * 2**30
    assert value(families, "whisperx_batch_model_load_seconds") == 4.5
    assert value(families, "whisperx_batch_asr_chunks_total") == 40
    assert value(families, "whisperx_batch_stage_seconds_total", stage="decode") == pytest.approx(0.6)
    assert value(families, "whisperx_batch_stage_busy_share", stage="decode") == pytest.approx(0.6 / 60)
    assert value(families, "whisperx_batch_realtime_factor") == 2.0  # 120 s of audio in 60 s
    assert value(families, "whisperx_batch_run_end_timestamp_seconds") - value(
        families, "whisperx_batch_run_start_timestamp_seconds"
    ) == pytest.approx(60.0)


def worker_figures(name: str, state: str, **figures: object) -> dict[str, object]:
    base = {"name": name, "device": "cuda", "detail": f"GPU {name[-1]}", "threads": 4, "state": state}
    return base | {"files": 0, "restarts": 0, "busy_seconds": 0.0, "batch_size": {}, "oom_retries": {}} | figures


def test_each_worker_has_its_own_figures_labelled_by_name_and_device() -> None:
    families = every_metric()
    assert value(families, "whisperx_batch_worker_up", worker="gpu0", device="cuda") == 1
    assert value(families, "whisperx_batch_worker_up", worker="gpu1", device="cuda") == 0
    assert value(families, "whisperx_batch_worker_files_total", worker="gpu0", device="cuda") == 5
    assert value(families, "whisperx_batch_worker_restarts_total", worker="gpu1", device="cuda") == 3
    assert value(families, "whisperx_batch_worker_busy_seconds_total", worker="gpu0", device="cuda") == 50.0
    assert value(families, "whisperx_batch_worker_batch_size", worker="gpu0", device="cuda", stage="asr") == 8
    assert value(families, "whisperx_batch_worker_oom_retries_total", worker="gpu0", device="cuda", stage="asr") == 1


UNIT_WORDS = {"seconds", "bytes"}
NOT_BASE_UNITS = re.compile(r"_(milli|micro|nano)?(ms|us|ns|minutes?|hours?|days?|kb|mb|gb|kib|mib|gib|percent)(_|$)")


def test_every_name_follows_prometheus_naming_and_is_documented() -> None:
    families = every_metric()
    documented = DOCS.read_text()
    for family, samples in families.items():
        assert samples, family
        for name, labels, _ in samples:
            assert re.fullmatch(r"whisperx_batch_[a-z0-9_]+", name), name
            assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", label) and not label.startswith("__") for label in labels)
            assert not NOT_BASE_UNITS.search(name), f"{name}: not in base units"
            if name.endswith("_total"):
                assert name.removesuffix("_total") == family, f"{name}: only counters end in _total"
            if any(word in name for word in ("duration", "timestamp", "_seconds")):
                assert re.search(r"_seconds(_total)?$", name), f"{name}: time is in seconds"
            if "memory" in name:
                assert name.endswith("_bytes"), f"{name}: memory is in bytes"
            assert f"`{name}`" in documented, f"{name} is not in docs/metrics.md"
    counters = {f for f, samples in families.items() if any(n == f + "_total" for n, _, _ in samples)}
    assert counters == {
        f"whisperx_batch_{n}"
        for n in (
            *("files", "audio_seconds", "stage_seconds", "asr_batches", "asr_chunks", "oom_retries"),
            *("segments_dropped", "files_to_review"),
            *("worker_files", "worker_restarts", "worker_busy_seconds", "worker_oom_retries"),
        )
    }
    assert sum(1 for samples in families.values() for name, _, _ in samples if name.endswith("_total")) > 10


def test_the_example_alert_rules_read_metrics_the_run_exports_and_are_the_documented_ones() -> None:
    """The rules' behaviour is tested by promtool (examples/prometheus/*.test.yml); here, that they match the code."""
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    exported, documented = sample_names(every_metric()), " ".join(DOCS.read_text().split())
    assert {rule["alert"] for rule in group["rules"]} == {
        "WhisperxBatchRunFailed",
        "WhisperxBatchNoSuccessIn26Hours",
        "WhisperxBatchRealtimeFactorDropped",
    }
    for rule in group["rules"]:
        used = set(re.findall(r"whisperx_batch_[a-z0-9_]+", rule["expr"]))
        assert used and used <= exported, f"{rule['alert']}: {used - exported}"
        assert " ".join(rule["expr"].split()) in documented, f"{rule['alert']}: docs/metrics.md shows another expr"


# --- settings -------------------------------------------------------------------------------------------------


def test_metrics_options_come_from_flags_environment_and_config_file_and_leave_the_hash_alone(tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(f'metrics_textfile = "{tmp_path / "a.prom"}"\nmetrics_interval = 5\n')
    environ = {
        "WHISPERX_BATCH_METRICS_PUSHGATEWAY": "pushgateway.monitoring:9091",
        "WHISPERX_BATCH_METRICS_JOB": "nightly",
    }
    settings = load_settings({"metrics_interval": 7}, environ=environ, config_path=config)
    assert settings.metrics_textfile == str(tmp_path / "a.prom")
    assert settings.metrics_interval == 7  # the flag over the file
    metrics = sections(settings, environ={}).metrics
    assert metrics.pushgateway is not None and metrics.pushgateway.url == "http://pushgateway.monitoring:9091"
    assert metrics.job == "nightly" and metrics.enabled
    plain = sections(load_settings({}, environ={}), environ={})
    assert plain.settings_hash == sections(settings, environ={}).settings_hash
    assert not plain.metrics.enabled


@pytest.mark.parametrize(
    ("url", "reason"),
    [("ftp://host:21", "not an http"), (f"http://u:{PASSWORD}@host:port", "port is not a number"), ("http://", "host")],
)
def test_a_bad_pushgateway_url_is_a_config_error_that_shows_no_password(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        load_settings({"metrics_pushgateway": url}, environ={})
    assert PASSWORD not in str(caught.value)


def test_bad_metrics_options_on_the_command_line_are_one_line_errors(cli, source: Path, tmp_path: Path) -> None:
    missing = cli(
        "run",
        source,
        "--out",
        tmp_path / "out",
        "--metrics-textfile",
        tmp_path / "nowhere" / "m.prom",
        "--metrics-job",
        "nightly",
        "--metrics-interval",
        "5",
    )
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [
        f"whisperx-batch: error: metrics_textfile: folder not found: {tmp_path / 'nowhere'} (from --metrics-textfile)"
    ]
    bad_url = cli("run", source, "--out", tmp_path / "out", "--metrics-pushgateway", f"ftp://u:{PASSWORD}@host")
    assert bad_url.exit_code == 2 and "metrics_pushgateway: not an http:// or https:// URL" in bad_url.stderr
    assert PASSWORD not in bad_url.stderr
    too_often = cli("run", source, "--out", tmp_path / "out", "--metrics-interval", "0.1")
    assert too_often.exit_code == 2 and "metrics_interval" in too_often.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


# --- the real command line ------------------------------------------------------------------------------------


def test_a_real_run_writes_the_textfile(tmp_path: Path, tiny_en: str, cli_process: Callable[..., object]) -> None:
    speak("The meeting starts at nine tomorrow.", tmp_path / "in" / "note.wav")
    textfile = tmp_path / "metrics" / "whisperx_batch.prom"
    textfile.parent.mkdir()
    done = cli_process(
        "run",
        tmp_path / "in",
        "--out",
        tmp_path / "out",
        "--model",
        tiny_en,
        "--no-align",
        "--device",
        "cpu",
        "--metrics-textfile",
        textfile,
    )
    assert done.returncode == 0, done.stderr
    families = parse(textfile.read_text())
    assert value(families, "whisperx_batch_files_total", outcome="succeeded") == 1
    assert value(families, "whisperx_batch_audio_seconds_total") > 1
    assert value(families, "whisperx_batch_model_load_seconds") > 0
    assert value(families, "whisperx_batch_asr_batches_total") >= 1
    for stage in ("decode", "vad", "asr", "write"):
        assert value(families, "whisperx_batch_stage_seconds_total", stage=stage) > 0, stage
    assert value(families, "whisperx_batch_batch_size", stage="asr") >= 1
    assert value(families, "whisperx_batch_run_exit_code") == 0
    assert value(families, "whisperx_batch_last_success_timestamp_seconds") > time.time() - 600
    assert "gpu_memory" not in textfile.read_text()  # on the CPU: no NVML figures, not zeros
