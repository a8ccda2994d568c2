"""The one loop over files: skip what is done, claim and decode the rest ahead, feed them to the pipeline,
write each file's outcome as it comes back, and keep the run report.

  SOURCE listing -> skip check -> (claim) -> fetch + decode (threads) -> pipeline -> writer thread -> report
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from batch.common.concurrency import ordered_map, ordered_map_fed
from batch.common.errors import BatchError, describe, exit_code_for_signal
from batch.common.logs import file_context
from batch.engine.audio import decode
from batch.engine.pipeline import DecodedFile, FileOutcome, Pipeline, PipelineStats, Stopwatch
from batch.formats.transcript import Transcript, build_transcript
from batch.run.claims import HeldClaims
from batch.run.config import JobConfig
from batch.run.manifest import ErrorRecord, InputRecord, Manifest, manifest_name, utc_now
from batch.run.outputs import OutputWriter, write_file
from batch.run.report import (
    AsrFigures,
    RunReport,
    UntimedWords,
    WorkerRecord,
    new_run_id,
    prune_reports,
    report_name,
    sum_records,
)
from batch.run.tally import FileEvent, Tally
from batch.run.to_do import ListingWatcher, ToDo
from batch.storage import InputFile, Store

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """A file fetched and decoded ahead of the models, or the reason it could not be."""

    manifest: Manifest
    file: DecodedFile | None = None  # None: another worker holds the file
    started: float = 0.0


class Runner:
    """Feeds every pending file of SOURCE through one pipeline and writes its outputs to DEST."""

    def __init__(
        self,
        config: JobConfig,
        source: Store,
        dest: Store,
        pipeline: Pipeline,
        *,
        run_id: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_file: Callable[[FileEvent], None] = lambda event: None,
        versions: dict[str, str] | None = None,
        claims: Any = None,
        listing_watchers: Sequence[ListingWatcher] = (),
        queue: Any = None,
    ):
        runtime = config.pipeline.runtime
        self.config, self.source, self.dest, self.pipeline = config, source, dest, pipeline
        self.clock, self.on_file = clock, on_file
        if config.channels.split:
            from batch.engine.channels import ChannelSplit

            self.pipeline = ChannelSplit(pipeline, config.channels.speakers)
        self.settings_hash = config.settings_hash
        self.report = RunReport(
            run_id=run_id or new_run_id(),
            started_at=utc_now(),
            settings=dict(config.shaping),
            settings_hash=self.settings_hash,
            device=runtime.device,
            compute_type=runtime.compute_type,
            threads=runtime.threads,
            batch_size=runtime.batch_size,
            versions=versions or {},
            shard=str(config.selection.shard) if config.selection.shard else None,
        )
        self.to_do = self._to_do(queue, listing_watchers)
        self.claims = HeldClaims(claims, self._still_to_do) if claims is not None else None
        self.tally = Tally(self.report, on_file)
        self._stop = threading.Event()
        self._prepared: dict[str, _Prepared] = {}

    def _to_do(self, queue: Any, listing_watchers: Sequence[ListingWatcher]) -> ToDo:
        """Where the files come from: SOURCE's listing, or a queue's messages (--queue)."""
        if queue is None or self.config.queue is None:
            return ToDo(self.config.selection, self.settings_hash, self.source, self.dest, listing_watchers)
        from batch.run.queue import QueueToDo

        queued = QueueToDo(
            queue,
            self.config.queue.idle_seconds,
            self.config.selection,
            self.settings_hash,
            self.source,
            self.dest,
            self.stopping,
        )
        self.report.queue = queued.counts
        return queued

    # --- control ------------------------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """Take no new file; files whose every chunk is read are still written. Safe from a signal handler."""
        if signum is not None:
            self.report.stopped_by_signal = signum
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def pending(self) -> Iterator[InputFile]:
        """Files that need work, in listing order; done files are counted as skipped."""
        return self.to_do.pending(on_skipped=self._skipped)

    def _skipped(self, key: str) -> None:
        self.report.skipped.append(key)
        self.on_file(FileEvent(key, "skipped"))

    def _still_to_do(self, item: InputFile) -> bool:
        return self.to_do.still_to_do(item, self.report.started_at)

    # --- the run ------------------------------------------------------------------------------------------

    def run(self) -> RunReport:
        """Process every pending file; a BatchError ends the run early, recorded in the report (not raised)."""
        started = self.clock()
        writer = OutputWriter(after_write=self.claims.give_back if self.claims is not None else lambda key: None)
        ahead = self.config.control.prefetch * max(1, len(self.config.workers))  # --prefetch is per worker
        fetch_ahead = ordered_map if self.config.queue is None else ordered_map_fed  # a queue's next file may wait
        prepared = fetch_ahead(self._prepare, self.pending(), workers=max(1, ahead), ahead=ahead)
        files = self._decoded(prepared)
        outcomes = self.pipeline.process(files, self.stopping)
        try:
            try:
                for outcome in outcomes:
                    self._hand_to_writer(outcome, writer)
                    self.tally.count(writer.done())
            finally:
                outcomes.close()
                files.close()  # waits for the prefetch threads: no claim can be taken after this
            self.tally.count(writer.close())
        except BatchError as exc:
            self.report.error = ErrorRecord(**describe(exc))
            self.report.exit_code = exc.exit_code  # said once, by whoever reads the report (the command line)
        finally:
            self.tally.count(writer.close(), check=False)  # a file the models finished is never dropped
            self.give_back()
            self._finish_report(started)
        return self.report

    def give_back(self) -> None:
        """What this run holds and has not finished goes back at once (claims, queue messages): on every exit."""
        if self.claims is not None:
            self.claims.give_back_all()
        self.to_do.close()

    def _decoded(self, prepared: Iterator[tuple[InputFile, Future[_Prepared]]]) -> Iterator[DecodedFile]:
        """The decoded files, in listing order, for the pipeline; files other workers claimed are counted."""
        try:
            for item, future in prepared:
                if self.stopping():
                    return
                if self.claims is None:
                    # Load the models while the first files decode; with claims, only once a file is ours
                    # (a worker whose files all went to others loads nothing).
                    self.pipeline.load()
                ready = future.result()
                if ready.file is None:
                    self.report.claimed_elsewhere.append(item.key)
                    self.on_file(FileEvent(item.key, "claimed_elsewhere"))
                    continue
                if self.claims is not None:
                    self.pipeline.load()
                if self.stopping():
                    return
                # A stale "succeeded" must not survive while this file is redone: deleted only now that the
                # pipeline takes the file, not when it was fetched ahead.
                if self.to_do.blocked(item.key) is None:
                    self.dest.delete(manifest_name(item.key))
                self._prepared[item.key] = ready
                yield ready.file
        finally:
            prepared.close()

    def _prepare(self, item: InputFile) -> _Prepared:
        """Claim (with --claim), fingerprint and decode one file, on a prefetch thread."""
        manifest = new_manifest(self.config, self.report, item)
        manifest.receive_count = self.to_do.receive_count(item.key)
        with file_context(item.key):
            stopwatch = Stopwatch(self.clock)
            ready = _Prepared(manifest, started=self.clock())
            try:
                blocked = self.to_do.blocked(item.key)
                if blocked is not None:
                    raise blocked
                if self.claims is not None and not self.claims.take(item):
                    return ready
                with stopwatch.stage("fingerprint"):
                    manifest.input.fingerprint = self.source.fingerprint(item)
                with stopwatch.stage("decode"), self.source.open(item.key, item.size) as stream:
                    audio = decode(stream, split_channels=self.config.channels.split)
            except Exception as exc:
                ready.file = DecodedFile(item.key, None, stopwatch, error=exc)
                return ready
            ready.file = DecodedFile(item.key, audio, stopwatch)
            manifest.audio_seconds = round(ready.file.seconds, 3)
            return ready

    # --- outcomes -----------------------------------------------------------------------------------------

    def _hand_to_writer(self, outcome: FileOutcome, writer: OutputWriter) -> None:
        manifest = self._prepared.pop(outcome.key).manifest
        transcript = record_outcome(outcome, manifest, self.report)
        formats, layout, dest, stopwatch = self.config.formats, self.config.subtitles, self.dest, outcome.file.stopwatch
        outcome.file.audio = None  # the array is not needed any more: free it before the write

        def write() -> Manifest:
            written = write_file(dest, manifest, stopwatch, transcript, formats, outcome.error, layout)
            self.to_do.written(outcome.key)
            return written

        writer.submit(outcome.key, write)

    def _finish_report(self, started: float) -> None:
        finish_report(self.report, self.pipeline.stats(), started, self.clock())
        self.write_report()
        self.prune_reports()

    def write_report(self) -> None:
        try:
            self.dest.write_bytes(report_name(self.report.run_id), self.report.encode())
        except Exception as exc:  # the run's outcome stands; the report is a record of it
            log.error("could not write the run report: %s", describe(exc)["message"])

    def prune_reports(self) -> None:
        """Keep the newest `keep_run_reports` reports in DEST/_runs/ (this run's among them)."""
        try:
            pruned = prune_reports(self.dest, self.config.control.keep_run_reports)
        except Exception as exc:  # a record kept too long harms nothing: say so and go on
            log.warning("could not delete old run reports: %s", describe(exc)["message"])
            return
        if pruned:
            log.info(
                "deleted %d old run reports (keep_run_reports = %d)", len(pruned), self.config.control.keep_run_reports
            )


# --- one file's records, and the run's --------------------------------------------------------------------


def new_manifest(config: JobConfig, report: RunReport, item: InputFile) -> Manifest:
    """A file's manifest as it starts: failed until its outcome says otherwise."""
    runtime = config.pipeline.runtime
    return Manifest.model_construct(
        status="failed",
        input=InputRecord(key=item.key, size=item.size, version=item.version),
        settings_hash=config.settings_hash,
        settings=dict(config.shaping),
        timings={},
        batch_size=runtime.batch_size,
        model=config.pipeline.asr.model,
        device=runtime.device,
        compute_type=runtime.compute_type,
        threads=runtime.threads,
        versions=report.versions,
        run_id=report.run_id,
        started_at=utc_now(),
        finished_at="",
        outputs=[],
    )


def record_outcome(outcome: FileOutcome, manifest: Manifest, report: RunReport) -> Transcript | None:
    """Fill the manifest (and the report's untimed words) from what the pipeline did; the transcript, if any."""
    if outcome.gpu:
        manifest.gpu = {stage: record.to_dict() for stage, record in outcome.gpu.items()}
    manifest.worker = outcome.worker
    if not outcome.transcribed:
        return None
    assert outcome.file.audio is not None
    manifest.language = outcome.language
    if outcome.alignment is not None:
        manifest.alignment = outcome.alignment
        if outcome.alignment["status"] in ("unavailable", "failed"):
            report.words_untimed.append(UntimedWords(key=outcome.key, reason=outcome.alignment.get("reason")))
    if outcome.turns is not None:
        manifest.speakers = sorted({turn["speaker"] for turn in outcome.turns})
    return build_transcript(
        outcome.language,
        outcome.language_probability,
        outcome.file.seconds,
        outcome.segments,
        outcome.turns,
        outcome.channels,
    )


def finish_report(report: RunReport, stats: PipelineStats, started: float, now: float) -> None:
    """The run's closing figures, from the clock and the pipeline's own account of its work."""
    report.finished_at = utc_now()
    report.wall_seconds = round(now - started, 3)
    report.audio_seconds = round(report.audio_seconds, 3)
    report.model_load_seconds = stats.load_seconds
    if stats.first_batch_at is not None:
        report.startup_seconds = round(stats.first_batch_at - started, 3)
    report.model_seconds = round(stats.busy_seconds, 3)
    report.asr = AsrFigures(
        batches=stats.asr_batches, items=stats.asr_items, batch_size=stats.batch_size, batch_fill=stats.batch_fill
    )
    report.alignment_models_loaded = stats.alignment_models_loaded
    report.gpu = sum_records(stats.gpu_records)
    report.workers = [WorkerRecord(**figures) for figures in stats.workers]
    if report.exit_code is None:
        report.exit_code = (
            exit_code_for_signal(report.stopped_by_signal) if report.stopped_by_signal else report.outcome_code()
        )
