"""The run's Prometheus metrics: what a scheduler's alerts read (docs/metrics.md lists every one).

`RunMetrics` is a collector in a registry of its own (never the process-wide one): it counts the files the
runner reports (`on_file`, one FileEvent per file), and reads the rest when the metrics are collected: the run
report (start, and at the end the exit code, end time and wall time), the pipeline's figures (model loading,
ASR batches, out-of-memory retries, batch sizes) and the GPU's memory through NVML. So a collection in the
middle of a long file shows the run as it is then. batch.run.metrics_export writes and pushes it.

Names follow Prometheus' rules: `whisperx_batch_` first, counters end in `_total`, base units (seconds, bytes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from batch.engine.gpu.nvml import MemoryProbe
from batch.engine.pipeline import PipelineStats
from batch.run.report import RunReport
from batch.run.tally import FileEvent

log = logging.getLogger(__name__)

PREFIX = "whisperx_batch"
OUTCOMES = ("succeeded", "failed", "skipped", "claimed_elsewhere", "left_for_next_run")
# Always exported (0 until a file spends time there), so a rate over them never starts from nothing.
STAGES = ("decode", "vad", "asr", "quality", "align", "diarize", "write")
BATCHED_STAGES = ("asr", "align", "diarize")  # the stages whose batch size is fitted to the GPU's memory

Samples = Iterable[tuple[Mapping[str, str], float]]


class RunMetrics(Collector):
    """The metrics of one run. `labels` go on every sample (the shard, so shards' files do not collide)."""

    def __init__(
        self,
        labels: Mapping[str, str] | None = None,
        info: Mapping[str, str] | None = None,
        probe: MemoryProbe | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.labels, self.info, self.probe, self.clock = dict(labels or {}), dict(info or {}), probe, clock
        self._report: RunReport | None = None
        self._stats: Callable[[], PipelineStats | None] = lambda: None
        self._lock = threading.Lock()
        self._files: Counter[tuple[str, str]] = Counter()  # (outcome, error type) -> files
        self._audio_seconds = 0.0
        self._stage_seconds: Counter[str] = Counter()
        self._segments_dropped = 0
        self._files_to_review = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def watch(self, report: RunReport, stats: Callable[[], PipelineStats | None]) -> None:
        """Read the run's report and the pipeline's figures at every collection from now on."""
        self._report, self._stats = report, stats

    def on_file(self, event: FileEvent) -> None:
        """Count one file (called from the runner's thread, while collections may run on another)."""
        with self._lock:
            self._files[(event.status, event.error_type or "")] += 1
            if event.status == "succeeded":
                self._audio_seconds += event.audio_seconds
            self._stage_seconds.update(event.timings)
            self._segments_dropped += event.segments_dropped
            self._files_to_review += event.review

    # --- collection --------------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        report = self._report
        yield from self._files_and_audio(report)
        if report is not None:
            yield from self._run(report)
        stats = self._stats()
        if stats is not None:
            yield from self._pipeline(stats, report)
            if stats.workers:
                yield from self._workers(stats.workers)
        yield from self._gpu_memory()

    def _files_and_audio(self, report: RunReport | None) -> Iterator[Metric]:
        with self._lock:
            files, audio, stages = Counter(self._files), self._audio_seconds, Counter(self._stage_seconds)
            dropped, review = self._segments_dropped, self._files_to_review
        seen = {outcome for outcome, _ in files}
        counts = {(outcome, ""): 0 for outcome in OUTCOMES if outcome not in seen} | dict(files)
        yield self._family(
            CounterMetricFamily,
            "files",
            "Files by outcome (succeeded, failed, skipped, claimed_elsewhere, left_for_next_run); "
            "failed and left ones by error_type.",
            [({"outcome": o, "error_type": e}, n) for (o, e), n in sorted(counts.items())],
        )
        yield self._family(
            CounterMetricFamily, "audio_seconds", "Seconds of audio transcribed (files that succeeded).", [({}, audio)]
        )
        yield self._family(
            CounterMetricFamily,
            "segments_dropped",
            "Segments the hallucination guard dropped from the transcripts (kept in the manifests).",
            [({}, dropped)],
        )
        yield self._family(
            CounterMetricFamily,
            "files_to_review",
            "Files marked for a person to look at (their manifest's quality.review).",
            [({}, review)],
        )
        stage_seconds = {stage: 0.0 for stage in STAGES} | dict(stages)
        yield self._family(
            CounterMetricFamily,
            "stage_seconds",
            "Seconds spent per stage, summed over files (an ASR batch's time is shared among its files).",
            [({"stage": stage}, seconds) for stage, seconds in stage_seconds.items()],
        )
        wall = self._wall_seconds(report)
        if wall is not None:
            yield self._gauge(
                "run_duration_seconds", "Wall seconds of the run so far (of the whole run once it has ended).", wall
            )
            if wall:
                yield self._family(
                    GaugeMetricFamily,
                    "stage_busy_share",
                    "Each stage's seconds over the run's wall seconds so far (stages side by side add up past 1).",
                    [({"stage": stage}, seconds / wall) for stage, seconds in stage_seconds.items()],
                )
            if audio and wall:
                yield self._gauge("realtime_factor", "Audio seconds transcribed per wall second.", audio / wall)

    def _run(self, report: RunReport) -> Iterator[Metric]:
        info = InfoMetricFamily(
            f"{PREFIX}_run", "The run: its id, version, model and device.", labels=list(self.labels)
        )
        info.add_metric(list(self.labels.values()), {"run_id": report.run_id, **self.info})
        yield info
        yield self._gauge(
            "run_start_timestamp_seconds", "When the run started (Unix time).", _timestamp(report.started_at)
        )
        if report.exit_code is None:  # still running
            return
        ended = _timestamp(report.finished_at) if report.finished_at else self.clock()
        yield self._gauge("run_end_timestamp_seconds", "When the run ended (Unix time).", ended)
        yield self._gauge(
            "run_exit_code",
            "The run's exit code: 0 done, 1 some files failed, 2 config error, "
            "3 environment error, 128+N stopped by signal N.",
            report.exit_code,
        )
        if report.exit_code == 0:
            yield self._gauge(
                "last_success_timestamp_seconds",
                "When the run ended with exit code 0 (Unix time); absent while running and after a failed run.",
                ended,
            )

    def _pipeline(self, stats: PipelineStats, report: RunReport | None) -> Iterator[Metric]:
        if stats.load_seconds is not None:
            yield self._gauge("model_load_seconds", "Seconds the ASR and VAD models took to load.", stats.load_seconds)
        yield self._family(CounterMetricFamily, "asr_batches", "ASR batches run.", [({}, stats.asr_batches)])
        yield self._family(CounterMetricFamily, "asr_chunks", "Speech chunks read by the ASR.", [({}, stats.asr_items)])
        if stats.batch_fill is not None:
            yield self._gauge(
                "asr_batch_fill", "Mean speech chunks per ASR batch (full batches: the batch size).", stats.batch_fill
            )
        records = list(stats.gpu_records)  # appended by the pipeline's threads: read a copy
        retries = Counter({stage: 0 for stage in BATCHED_STAGES})
        in_use: dict[str, int] = {}
        for record in records:
            retries[record.stage] += record.oom_retries
            in_use[record.stage] = record.batch_size_used
        yield self._family(
            CounterMetricFamily,
            "oom_retries",
            "GPU out-of-memory retries (each halves the batch size), per stage.",
            [({"stage": s}, n) for s, n in retries.items()],
        )
        configured = report.batch_size if report is not None and report.batch_size else stats.batch_size
        if configured:
            yield self._gauge(
                "batch_size_configured", "The configured batch size (the most any stage uses).", configured
            )
        if in_use:
            yield self._family(
                GaugeMetricFamily,
                "batch_size",
                "The batch size of the stage's latest batch (lower "
                "than configured after an out-of-memory, or when memory is short).",
                [({"stage": s}, size) for s, size in in_use.items()],
            )

    def _workers(self, workers: list[dict]) -> Iterator[Metric]:
        """Per worker process (--gpus, --workers), labelled by its name and device."""

        def each(value: Callable[[dict], float]) -> Samples:
            return [({"worker": w["name"], "device": w["device"]}, value(w)) for w in workers]

        def per_stage(key: str) -> Samples:
            return [
                ({"worker": w["name"], "device": w["device"], "stage": stage}, number)
                for w in workers
                for stage, number in sorted(w[key].items())
            ]

        yield self._family(
            GaugeMetricFamily,
            "worker_up",
            "1 while the worker is ready for files.",
            each(lambda w: float(w["state"] == "ready")),
        )
        yield self._family(
            CounterMetricFamily, "worker_files", "Files the worker handed back.", each(lambda w: w["files"])
        )
        yield self._family(
            CounterMetricFamily,
            "worker_restarts",
            "Fresh processes started after the worker died.",
            each(lambda w: w["restarts"]),
        )
        yield self._family(
            CounterMetricFamily,
            "worker_busy_seconds",
            "Seconds the worker's models worked.",
            each(lambda w: w["busy_seconds"]),
        )
        if any(w["batch_size"] for w in workers):
            yield self._family(
                GaugeMetricFamily,
                "worker_batch_size",
                "The batch size of the worker's latest batch, per stage.",
                per_stage("batch_size"),
            )
            yield self._family(
                CounterMetricFamily,
                "worker_oom_retries",
                "The worker's GPU out-of-memory retries, per stage.",
                per_stage("oom_retries"),
            )

    def _gpu_memory(self) -> Iterator[Metric]:
        if self.probe is None:
            return
        reading, used = self.probe.free_and_total(), self.probe.used()
        if used is not None:
            yield self._gauge(
                "gpu_memory_used_bytes", "GPU memory in use, by every process on the device (NVML).", used
            )
        if reading is not None:
            yield self._gauge("gpu_memory_total_bytes", "GPU memory of the device (NVML).", reading[1])

    # --- helpers ------------------------------------------------------------------------------------------------

    def _wall_seconds(self, report: RunReport | None) -> float | None:
        if report is None:
            return None
        if report.finished_at is not None:  # the run's own figure once it has ended (not when abandoned)
            return report.wall_seconds
        return max(0.0, self.clock() - _timestamp(report.started_at))

    def _gauge(self, name: str, documentation: str, value: float) -> Metric:
        return self._family(GaugeMetricFamily, name, documentation, [({}, value)])

    def _family(self, kind: type[Metric], name: str, documentation: str, samples: Samples) -> Metric:
        """A metric family whose every sample carries the run's labels, then its own."""
        samples = list(samples)
        own = list(samples[0][0]) if samples else []
        family = kind(f"{PREFIX}_{name}", documentation, labels=[*self.labels, *own])  # type: ignore[call-arg]
        for labels, value in samples:
            family.add_metric([*self.labels.values(), *(labels[name] for name in own)], value)  # type: ignore[attr-defined]
        return family


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def gpu_memory_probe(device: str) -> MemoryProbe | None:
    """NVML's reading of the run's GPU, for the memory gauges; None (no such gauges) on the CPU or without NVML."""
    kind, _, number = device.partition(":")
    if kind != "cuda":
        return None
    from batch.engine.gpu.nvml import NvmlProbe, NvmlUnavailable

    try:
        return NvmlProbe.open(int(number or 0))
    except NvmlUnavailable as exc:
        log.info("metrics: no GPU memory figures: %s", exc)
        return None
