"""The Python API: a job assembled from its settings, run in-process, returning a typed run report.

    from batch import Job, load_settings
    report = Job(load_settings({"source": "calls/", "out": "transcripts/", "model": "small"})).run()
    print(report.succeeded, report.failed, report.exit_code)

Nothing here prints or installs a signal handler: the command line does those around it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from batch.common.errors import ConfigError
from batch.common.logs import run_id_var
from batch.common.version import __version__
from batch.engine.gpu.listing import gpu_in_use
from batch.engine.pipeline import Pipeline
from batch.run.config import JobConfig, configure
from batch.run.metrics import RunMetrics, gpu_memory_probe
from batch.run.metrics_export import FINAL_PUSH_TIMEOUT_SECONDS, MetricsExporter
from batch.run.report import RunReport, new_run_id
from batch.run.runner import Runner
from batch.run.tally import FileEvent
from batch.run.work.listing import ListingWatcher
from batch.settings.options import Settings
from batch.storage import InputFile, open_job_stores

log = logging.getLogger(__name__)


class Job:
    """One run over SOURCE into DEST. Build it, then `run()` it (once), or list `pending()` for a dry run.

    `pipeline` replaces the WhisperX pipeline (tests pass a fake one); `on_file` hears of every file counted.
    With metrics options set, `metrics` holds the run's Prometheus metrics, written and pushed as it runs.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        environ: Mapping[str, str] | None = None,
        pipeline: Pipeline | None = None,
        on_file: Callable[[FileEvent], None] = lambda event: None,
    ):
        self.config: JobConfig = configure(settings, environ)
        self.queue: Any = None
        self.source, self.dest = self._stores()
        self.run_id = new_run_id()
        run_id_var.set(self.run_id)
        self._pipeline = pipeline
        self._on_file = on_file
        self.runner: Runner | None = None
        self.claims = self._claims()
        self._listing_watchers: list[ListingWatcher] = []
        self.metrics = self._run_metrics() if self.config.metrics.enabled else None
        self._exporter: MetricsExporter | None = None
        self.stop_requested = False
        self.stop_signal: int | None = None  # the first signal that asked for the stop
        self.finished = threading.Event()  # run() has returned its report

    def _stores(self) -> tuple[Any, Any]:
        """SOURCE and DEST; in queue mode, SOURCE is the objects the queue's messages name."""
        storage = self.config.storage
        if self.config.queue is None:
            return open_job_stores(
                storage.source,
                storage.out,
                endpoint_url=storage.endpoint_url,
                spool_dir=storage.spool_dir,
                max_input_bytes=storage.max_input_bytes,
            )
        from batch.storage import open_store
        from batch.storage.s3 import make_client
        from batch.storage.sqs import QueuedObjects, SqsQueue

        self.queue = SqsQueue(self.config.queue.url)
        client = make_client(storage.endpoint_url)
        source = QueuedObjects(client, storage.spool_dir, storage.max_input_bytes, location=self.config.queue.url)
        try:
            dest = open_store(storage.out, endpoint_url=storage.endpoint_url, client=client)
        except ValueError as exc:
            raise ConfigError("out", str(exc)) from None
        return source, dest

    def pending(self) -> Iterator[InputFile]:
        """The files a run would take (listing, shard and skip check only; nothing is claimed, no model is
        loaded)."""
        return self._runner().look()

    def watch_listing(self, watcher: ListingWatcher) -> None:
        """`watcher` hears of every file selected in SOURCE as the run lists it (the progress census). Before
        `run()` or `pending()`."""
        self._listing_watchers.append(watcher)

    def run(self) -> RunReport:
        """Transcribe every pending file. Problems that stop the run are in the report (`error`, `exit_code`).
        A stop asked for before the runner exists (during the start-up checks, an S3 probe say) is kept: the run
        then takes no file."""
        try:
            return self._run()
        finally:
            self.finished.set()

    def _run(self) -> RunReport:
        self._check_places()
        runner = self._runner()
        runtime = self.config.pipeline.runtime
        log.info(
            "run %s: %s -> %s, model %s on %s (%s, %d threads)",
            self.run_id,
            self.config.storage.source,
            self.config.storage.out,
            self.config.pipeline.asr.model,
            runtime.device,
            runtime.compute_type,
            runtime.threads,
        )
        if self.config.workers:
            names = ", ".join(f"{slot.name} ({slot.detail})" for slot in self.config.workers)
            log.info("%d workers: %s", len(self.config.workers), names)
        with self._exporting(runner):
            return runner.run()

    def request_stop(self, signum: int | None = None) -> None:
        """Take no new file; what is fully read is written. Safe to call from a signal handler or a thread, and
        before the run has started (the runner hears of it when it is made). After the run, nothing changes."""
        if self.finished.is_set():
            return
        self.stop_requested = True
        if self.stop_signal is None:
            self.stop_signal = signum
        if self.runner is not None:
            self.runner.request_stop(signum)

    def give_back(self) -> None:
        """Claims and queue messages not finished go back at once (the run is being abandoned)."""
        if self.runner is not None:
            self.runner.give_back()

    def flush_metrics(self) -> None:
        """Write and push the metrics now, briefly (the run is being abandoned); a no-op without metrics."""
        if self._exporter is not None:
            self._exporter.export(timeout=FINAL_PUSH_TIMEOUT_SECONDS)

    @property
    def report(self) -> RunReport | None:
        """The report so far (the run updates it as it goes)."""
        return self.runner.report if self.runner is not None else None

    def _runner(self) -> Runner:
        if self.runner is None:
            from batch.common.runtime import package_versions

            self.runner = Runner(
                self.config,
                self.source,
                self.dest,
                self._pipeline or self._real_pipeline(),
                run_id=self.run_id,
                on_file=self._file_counted,
                versions=package_versions(),
                claims=self.claims,
                listing_watchers=self._listing_watchers,
                queue=self.queue,
            )
            if not self.config.workers:  # the parent of several workers holds no GPU: each worker says its own
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # as the CUDA runtime reads it
                self.runner.report.gpu_device = gpu_in_use(self.config.pipeline.runtime.device, visible)
            if self.stop_requested:
                self.runner.request_stop(self.stop_signal)
        return self.runner

    def _file_counted(self, event: FileEvent) -> None:
        if self.metrics is not None:
            self.metrics.on_file(event)
        self._on_file(event)

    def _run_metrics(self) -> RunMetrics:
        runtime = self.config.pipeline.runtime
        return RunMetrics(
            labels=metrics_group(self.config),
            info={
                "version": __version__,
                "model": self.config.pipeline.asr.model,
                "device": runtime.device,
                "compute_type": runtime.compute_type,
            },
        )

    def _exporting(self, runner: Runner) -> contextlib.AbstractContextManager[Any]:
        """While the run goes: its metrics written and pushed every few seconds, and once more at its end."""
        if self.metrics is None:
            return contextlib.nullcontext()
        config = self.config.metrics
        if not self.config.workers:  # the parent of several workers holds no GPU of its own
            self.metrics.probe = gpu_memory_probe(self.config.pipeline.runtime.device)
        self.metrics.watch(runner.report, runner.pipeline.stats)
        self._exporter = MetricsExporter(
            self.metrics.registry,
            textfile=config.textfile,
            pushgateway=config.pushgateway,
            job=config.job,
            grouping=self.metrics.labels,
            interval=config.interval,
        )
        return self._exporter

    def _real_pipeline(self) -> Pipeline:
        if self.config.workers:
            from batch.run.pool.pool import WorkerPool

            return WorkerPool(self.config.pipeline, self.config.workers, run_id=self.run_id)
        from batch.engine.whisperx_pipeline import WhisperxPipeline

        return WhisperxPipeline(self.config.pipeline)

    def _claims(self) -> Any:
        if not self.config.selection.claim:
            return None
        from batch.run.work.claims import Claims

        return Claims(self.dest, self.run_id, self.config.selection.claim_ttl)

    def _check_places(self) -> None:
        from batch.common.errors import EnvironmentProblem
        from batch.engine.loading import is_local

        model = self.config.pipeline.asr.model
        if self._pipeline is None and is_local(model) and not os.path.isdir(model):
            raise EnvironmentProblem(f"model folder not found: {model}")
        if self.queue is not None:
            self.queue.check()
        self.source.check_readable()
        self.dest.check_writable()
        if self.claims is not None:
            self.claims.check()


def run_job(settings: Settings, **options: Any) -> RunReport:
    """Build and run a job in one call: see `Job`."""
    return Job(settings, **options).run()


def metrics_group(config: JobConfig) -> dict[str, str]:
    """The Pushgateway group beside `job` (and a label on every sample): one per process that pushes at the same
    time as others. A shard has its index; a queue consumer or a claiming worker, which split the work without
    shards, has its host name (the pod's name in Kubernetes), so that pods do not overwrite each other's set."""
    shard = config.selection.shard
    if shard is not None:
        return {"shard": str(shard.index)}
    if config.queue is not None or config.selection.claim:
        return {"instance": socket.gethostname()}
    return {}
