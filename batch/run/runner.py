"""The one loop over files: skip what is done, claim and decode the rest ahead, feed them to the pipeline,
write each file's outcome as it comes back, and keep the run report.

A file's way, each step named where it happens:
  1. listed, not done already, claimed       the run's source of work (batch.run.work): its `pending`
  2. fingerprinted, decoded                  Runner._fetch, on a prefetch thread: a `Fetched`, no manifest yet
  3. handed to the pipeline                  Runner._hand_over: the models load with the first file handed over
  4. transcribed                             the pipeline (engine), files batched together
  5. its manifest made from what was done    file_manifest, on the run's thread, from the Fetched and the outcome
  6. outputs written, then the manifest      write_file (outputs.py), on the writer thread: succeeded or failed;
                                             an old manifest is deleted just before the outputs are replaced;
                                             then the source of work hears the file is finished (its `finished`:
                                             a claim given back, a queue message deleted or sent back)
  7. counted                                 Tally (tally.py): the run report
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
from batch.engine.decoder import IsolatedDecoder
from batch.engine.pipeline import Deadline, DecodedFile, FileOutcome, Pipeline, PipelineStats, Stopwatch
from batch.engine.quality.summary import summarize
from batch.formats.transcript import Transcript, build_transcript
from batch.run.config import JobConfig
from batch.run.manifest import ErrorRecord, InputRecord, Manifest, utc_now
from batch.run.outputs import OutputWriter, write_file
from batch.run.report import (
    AsrFigures,
    FailedFile,
    RunReport,
    UntimedWords,
    WorkerRecord,
    new_run_id,
    prune_reports,
    sum_records,
)
from batch.run.report_pages import write_report_and_page
from batch.run.review_clips import clips_written, cut_clips
from batch.run.tally import FileEvent, Tally
from batch.run.work import WorkSource, work_source
from batch.run.work.listing import ListingWatcher
from batch.storage import InputFile, Store

log = logging.getLogger(__name__)


@dataclass
class Fetched:
    """A file fetched and decoded ahead of the models (step 2), or the reason it could not be."""

    item: InputFile
    started_at: str  # when its way began: the manifest's started_at
    file: DecodedFile | None = None  # None until fetched
    fingerprint: str | None = None
    audio_seconds: float | None = None
    location: str | None = None  # where it was read (s3://bucket/key, a path): its manifest says so


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
        self.to_do: WorkSource = work_source(
            config,
            source,
            dest,
            run_started_at=self.report.started_at,
            stopping=self.stopping,
            grace_left=self.grace_left,
            on_left=self._left,
            on_claimed_elsewhere=self._claimed_elsewhere,
            watchers=listing_watchers,
            queue=queue,
            claims=claims,
        )
        self.to_do.record(self.report)
        self.tally = Tally(self.report, on_file)
        self._stop = threading.Event()
        self._stop_asked_at: float | None = None  # time.monotonic() of the first stop asked for
        self._in_pipeline: dict[str, Fetched] = {}  # handed over, not written yet
        self._decoder = IsolatedDecoder()  # a file that crashes or hangs FFmpeg takes down a child, not the run

    def request_stop(self, signum: int | None = None) -> None:
        """Take no new file; files whose every chunk is read are still written. Safe from a signal handler."""
        if signum is not None:
            self.report.stopped_by_signal = signum
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def grace_left(self) -> float:
        """Seconds left of the grace period (--grace-seconds) since a stop was asked for; all of it before one."""
        grace = self.config.control.grace_seconds
        if self._stop_asked_at is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self._stop_asked_at))

    def pending(self) -> Iterator[InputFile]:
        """Files that need work, in order, taken (claimed, with --claim); done files are counted as skipped."""
        return self.to_do.pending(on_skipped=self._skipped)

    def look(self) -> Iterator[InputFile]:
        """The files `pending` would take, only looked at (a dry run): nothing is claimed."""
        return self.to_do.look(on_skipped=self._skipped)

    def _skipped(self, key: str) -> None:
        self.report.skipped.append(key)
        self.on_file(FileEvent(key, "skipped"))

    def _left(self, key: str, exc: Exception) -> None:
        error = ErrorRecord.of(exc)
        self.report.left_for_next_run.append(FailedFile(key=key, error=error))
        self.on_file(FileEvent(key, "left_for_next_run", error_type=error.type))

    def _claimed_elsewhere(self, key: str) -> None:
        self.report.claimed_elsewhere.append(key)
        self.on_file(FileEvent(key, "claimed_elsewhere"))

    def run(self) -> RunReport:
        """Process every pending file; a BatchError ends the run early, recorded in the report (not raised)."""
        started = self.clock()
        writer = OutputWriter()
        ahead = self.config.control.prefetch * max(1, len(self.config.workers))  # --prefetch is per worker
        fetch_ahead = ordered_map_fed if self.to_do.waits else ordered_map  # a queue's next file may wait
        try:
            while True:  # one pass over the listing; a queue may pause (see WorkSource.more_to_come) and go on
                fetched = fetch_ahead(self._fetch, self.pending(), workers=max(1, ahead), ahead=ahead)
                files = self._handed_over(fetched)
                outcomes = self.pipeline.process(files, self.stopping)
                try:
                    for outcome in outcomes:
                        self._write(outcome, writer)
                        self.tally.count(writer.done())
                finally:
                    outcomes.close()
                    files.close()  # waits for the prefetch threads
                self.tally.count(writer.done(wait=True))  # a paused queue deletes these messages now
                if not self.to_do.more_to_come():
                    break
                log.info("the files in work are written; waiting for more (the models stay loaded)")
            self.tally.count(writer.close())
            if not self.stopping():
                self.tally.check_at_end()
        except BatchError as exc:
            self.report.error = ErrorRecord.of(exc)
            self.report.exit_code = exc.exit_code  # said once, by whoever reads the report (the command line)
        finally:
            self.tally.count(writer.close(), check=False)  # a file the models finished is never dropped
            self._close_pipeline()
            self._decoder.close()
            self.give_back()
            self._finish_report(started)
        return self.report

    def _close_pipeline(self) -> None:
        """The pipeline lets go of what it kept between passes (worker processes), once, as the run ends."""
        try:
            self.pipeline.close()
        except Exception as exc:  # the files are written; the run's outcome stands
            log.error("could not close the pipeline: %s", describe(exc)["message"])

    def give_back(self) -> None:
        """What this run holds and has not finished goes back at once (claims, queue messages): on every exit."""
        self.to_do.close()

    def _fetch(self, item: InputFile) -> Fetched:
        """Step 2, on a prefetch thread: fingerprint and decode one file."""
        with file_context(item.key):
            stopwatch = Stopwatch(self.clock)
            deadline = Deadline.after(self.config.control.file_timeout)  # for its fetch and decode
            fetched = Fetched(item, utc_now())
            try:
                fetched.location = self.source.address(item.key)
                problem = self.to_do.problem(item.key)
                if problem is not None:
                    raise problem
                with stopwatch.stage("fingerprint"):
                    fetched.fingerprint = self.source.fingerprint(item)
                with stopwatch.stage("decode"), self.source.open(item.key, item.size, item.version) as stream:
                    audio = self._decoder.decode(
                        stream,
                        split_channels=self.config.channels.split,
                        max_seconds=self.config.control.max_duration,
                        deadline=deadline,
                    )
            except Exception as exc:
                fetched.file = DecodedFile(item.key, None, stopwatch, error=exc)
                return fetched
            fetched.file = DecodedFile(item.key, audio, stopwatch)
            fetched.audio_seconds = round(fetched.file.seconds, 3)
            return fetched

    def _handed_over(self, fetched: Iterator[tuple[InputFile, Future[Fetched]]]) -> Iterator[DecodedFile]:
        """The pipeline's input: each fetched file in order, handed over (step 3)."""
        try:
            for _, future in fetched:
                if self.stopping():
                    return
                self.pipeline.load()  # the models load while the first files decode (load is idempotent)
                ready = future.result()
                if self.stopping():
                    return
                ready.file.deadline = Deadline.after(self.config.control.file_timeout)  # from here, for the models
                self._hand_over(ready)
                yield ready.file
        finally:
            fetched.close()

    def _hand_over(self, fetched: Fetched) -> None:
        """Step 3. The models loaded with the first file handed over (with claims, a file this worker won: one whose
        files all went to others loads nothing). The file's old manifest stays until its outputs are replaced
        (write_file): a try that fails before that (the object gone, a corrupt new version) leaves a "succeeded"
        record whole. Files are known by key here: a source of work never hands out a key that is in work (a queue
        holds a second message for it back until the first is written)."""
        self._in_pipeline[fetched.item.key] = fetched

    def _write(self, outcome: FileOutcome, writer: OutputWriter) -> None:
        """Steps 5 and 6: the file's manifest from what was done, then its outputs and manifest on the writer."""
        manifest, transcript = file_manifest(self.config, self.report, self._in_pipeline.pop(outcome.key), outcome)
        formats, layout, dest, stopwatch = self.config.formats, self.config.subtitles, self.dest, outcome.file.stopwatch
        clips = cut_clips(manifest, outcome.file.audio)  # the review page's players (review_clips)
        outcome.file.audio = None  # the array is not needed any more: free it before the write
        since = None if self.config.selection.force else self.to_do.checks.started_at  # see write_file

        def holds(version: str) -> bool:  # SOURCE's version now, asked only if a run beside this one did another
            return self.source.current_version(outcome.key) == version

        def write() -> Manifest:
            try:
                done = write_file(dest, manifest, stopwatch, transcript, formats, outcome.error, layout, since, holds)
                return clips_written(dest, clips, done)  # after the manifest: never one of the file's outputs
            finally:
                self.to_do.finished(outcome.key)  # a queue's message goes (or comes back), a claim is given back

        writer.submit(outcome.key, write)

    def _finish_report(self, started: float) -> None:
        finish_report(self.report, self.pipeline.stats(), started, self.clock())
        self.write_report()
        self.prune_reports()

    def write_report(self) -> None:
        """The run report, and its page beside it (report_pages): a record of the outcome, never a change to it."""
        write_report_and_page(self.dest, self.report, self.tally.files, self.config.control.price_per_hour)

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


def file_manifest(
    config: JobConfig, report: RunReport, fetched: Fetched, outcome: FileOutcome
) -> tuple[Manifest, Transcript | None]:
    """Step 5: a file's manifest from its fetch and the pipeline's outcome (failed until the writer says
    otherwise: step 6 sets the status, outputs and timings), and its transcript, if any. The report hears of
    words that could not be timed."""
    runtime, item = config.pipeline.runtime, fetched.item
    manifest = Manifest.model_construct(
        status="failed",
        input=InputRecord(
            key=item.key,
            size=item.size,
            version=item.version,
            fingerprint=fetched.fingerprint,
            location=fetched.location,
        ),
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
        started_at=fetched.started_at,
        finished_at="",
        outputs=[],
    )
    if fetched.audio_seconds is not None:
        manifest.audio_seconds = fetched.audio_seconds
    manifest.receive_count = item.receive_count
    if outcome.gpu:
        manifest.gpu = {stage: record.to_dict() for stage, record in outcome.gpu.items()}
    manifest.worker = outcome.worker
    if not outcome.transcribed:
        return manifest, None
    manifest.language, manifest.languages = outcome.language, outcome.languages
    if outcome.alignment is not None:
        manifest.alignment = outcome.alignment
        if outcome.alignment["status"] in ("unavailable", "failed"):
            report.words_untimed.append(UntimedWords(key=outcome.key, reason=outcome.alignment.get("reason")))
    if outcome.turns is not None:
        manifest.speakers = sorted({turn["speaker"] for turn in outcome.turns})
    if outcome.quality is not None:
        speakers = len(manifest.speakers) if manifest.speakers is not None else None
        manifest.quality = summarize(
            outcome.quality,
            outcome.segments,
            outcome.language,
            outcome.language_probability,
            speakers,
            config.pipeline.quality.min_speakers,
        )
    transcript = build_transcript(
        outcome.language,
        outcome.language_probability,
        outcome.file.seconds,
        outcome.segments,
        outcome.turns,
        outcome.channels,
    )
    return manifest, transcript


def finish_report(report: RunReport, stats: PipelineStats, started: float, now: float) -> None:
    """The run's closing figures, from the clock and the pipeline's own account of its work."""
    report.finished_at = utc_now()
    report.wall_seconds = round(now - started, 3)
    report.audio_seconds = round(report.audio_seconds, 3)
    report.model_load_seconds = stats.load_seconds
    if stats.first_batch_at is not None:
        report.startup_seconds = round(stats.first_batch_at - started, 3)
    report.model_seconds = round(stats.busy_seconds, 3)
    report.asr = AsrFigures.of(stats)
    report.alignment_models_loaded = stats.alignment_models_loaded
    report.gpu = sum_records(stats.gpu_records)
    report.workers = [WorkerRecord(**figures) for figures in stats.workers]
    if report.exit_code is None:
        report.exit_code = (
            exit_code_for_signal(report.stopped_by_signal) if report.stopped_by_signal else report.outcome_code()
        )
