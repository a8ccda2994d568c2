"""The one loop over files: skip what is done, transcribe the rest one at a time, isolate each failure, report."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from batch import manifest as mf
from batch.audio import SAMPLE_RATE, decode
from batch.concurrency import ordered_map
from batch.config import Settings, settings_hash
from batch.errors import EXIT_FILES_FAILED, EXIT_OK, BatchError, ConfigError, EnvironmentProblem, describe
from batch.logs import file_context
from batch.pipeline import Pipeline, RuntimeOptions, Stopwatch
from batch.runtime import package_versions
from batch.storage import Dest, InputFile, LocalDest, LocalSource, Source
from batch.transcript import build_transcript, render

log = logging.getLogger(__name__)

# This many files in a row failing with the same unexpected error type stops the run (exit 3).
BROKEN_AFTER_FAILURES = 3
# Failures that belong to a file, however many in a row (a folder of broken files is possible).
FILE_PROBLEMS = {"AudioDecodeError", "AlignmentUnavailable", "GpuOutOfMemory", "FileFailure"}

# Skip checks on S3 are requests: run this many at once, this many listing entries ahead.
SKIP_CHECK_WORKERS = 16
SKIP_CHECK_AHEAD = 64


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


@dataclass
class RunReport:
    """What a run did; written to DEST/_runs/RUN_ID.json and summed up on stderr."""

    run_id: str
    started_at: str
    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    claimed_elsewhere: list[str] = field(default_factory=list)  # with --claim: files other workers took
    failed: list[dict[str, Any]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    model_load_seconds: float | None = None
    model_seconds: float = 0.0  # time the models spent on files (the rest is waiting for input or output)
    words_untimed: list[dict[str, Any]] = field(default_factory=list)
    alignment_models_loaded: list[str] = field(default_factory=list)
    finished_at: str | None = None
    error: dict[str, str] | None = None

    def model_busy_share(self) -> float | None:
        """The share of the wall time after start-up (model loading) that the models were working."""
        working_time = self.wall_seconds - (self.model_load_seconds or 0.0)
        return round(self.model_seconds / working_time, 4) if self.model_seconds and working_time > 0 else None

    stopped_by_signal: int | None = None
    shard: str | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped_by_signal is not None:
            return 128 + self.stopped_by_signal  # 143 for SIGTERM, 130 for SIGINT, as shells and Kubernetes read it
        return EXIT_FILES_FAILED if self.failed else EXIT_OK

    def summary(self) -> str:
        hours = self.audio_seconds / 3600
        speed = ""
        if self.audio_seconds and self.wall_seconds:
            speed = f", {self.audio_seconds / self.wall_seconds:.1f}x realtime"
        lines = [
            f"whisperx-batch run {self.run_id}: {len(self.succeeded)} succeeded, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed; {hours:.3f} audio hours in {self.wall_seconds:.1f} s{speed}"
        ]
        lines += [f"  failed {f['key']}: {f['error']['type']}: {f['error']['message']}" for f in self.failed]
        lines += [f"  words not timed in {w['key']}: {w['reason']}" for w in self.words_untimed]
        if self.claimed_elsewhere:
            lines.append(f"  {len(self.claimed_elsewhere)} files were claimed by other workers")
        if self.error:
            lines.append(f"  stopped: {self.error['message']}")
        return "\n".join(lines)

    def to_dict(self, context: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            **context,
            "counts": {
                "succeeded": len(self.succeeded),
                "skipped": len(self.skipped),
                "failed": len(self.failed),
                "claimed_elsewhere": len(self.claimed_elsewhere),
            },  # fmt: skip
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "claimed_elsewhere": self.claimed_elsewhere,
            "failed": self.failed,
            "audio_seconds": round(self.audio_seconds, 3),
            "audio_hours": round(self.audio_seconds / 3600, 4),
            "wall_seconds": round(self.wall_seconds, 3),
            "model_load_seconds": self.model_load_seconds,
            "model_seconds": round(self.model_seconds, 3),
            "model_busy_share": self.model_busy_share(),
            "words_untimed": self.words_untimed,
            "alignment_models_loaded": self.alignment_models_loaded,
            "realtime_factor": round(self.wall_seconds / self.audio_seconds, 4) if self.audio_seconds else None,
            "error": self.error,
            "stopped_by_signal": self.stopped_by_signal,
            "shard": self.shard,
            "exit_code": self.exit_code if not self.error else None,
        }


class OutputWriteFailure(Exception):
    """The transcript was made but could not be stored."""


@dataclass
class Prepared:
    """A file fetched and decoded ahead of the model, or the reason it could not be."""

    record: dict[str, Any]
    stopwatch: Stopwatch
    audio: np.ndarray | None
    error: Exception | None
    claimed_elsewhere: bool = False  # another worker holds this file


class OutputWriter:
    """Writes each file's outputs and manifest on one background thread, one file at a time, so the model
    goes on with the next file meanwhile. Outcomes are counted on the caller's thread."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._in_flight: tuple[str, Future[dict[str, Any]]] | None = None

    def submit(self, key: str, record: dict, stopwatch: Stopwatch, transcript: dict | None, error: Exception | None):
        self._collect()
        future = self._pool.submit(
            contextvars.copy_context().run, self.runner.write_file, key, record, stopwatch, transcript, error
        )
        self._in_flight = (key, future)

    def _collect(self) -> None:
        if self._in_flight is None:
            return
        key, future = self._in_flight
        self._in_flight = None
        try:
            manifest = future.result()
        except Exception as exc:
            self.runner.finish_file(key, None, exc)
        else:
            self.runner.finish_file(key, manifest, None)

    def close(self) -> None:
        """Wait for the last file's outputs: a file the model finished is never dropped."""
        self._collect()
        self._pool.shutdown(wait=True)


class Runner:
    """Feeds every pending file of SOURCE through one Pipeline and writes its outputs to DEST."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        dest: Dest,
        pipeline: Pipeline,
        runtime: RuntimeOptions,
        run_id: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.settings = settings
        self.source = source
        self.dest = dest
        self.pipeline = pipeline
        self.runtime = runtime
        self.clock = clock
        self.settings_hash = settings_hash(settings, runtime.compute_type)
        self.report = RunReport(run_id=run_id or new_run_id(), started_at=mf.utc_now())
        self.gpu_records: list[Any] = []
        self._versions = package_versions()
        self.stop_signal: int | None = None  # set by a SIGTERM/SIGINT: take no new file
        self.shard = _resolve_shard(settings)
        self.claims = None
        self._held_claims: set[str] = set()
        self._consecutive_failures = 0
        if settings.claim:
            from batch.claims import Claims

            self.claims = Claims(dest, self.report.run_id, settings.claim_ttl)
        self.report.shard = str(self.shard) if self.shard else None

    def request_stop(self, signum: int) -> None:
        self.stop_signal = signum

    def pending(self) -> Iterator[InputFile]:
        """Files that need work, streamed in listing order; done files are counted as skipped.

        The skip checks (a manifest read, and output checks when it says succeeded) run in parallel, a
        bounded number ahead, since on S3 each is a request.
        """
        listing = self.source.list(self.settings.include, self.settings.exclude)
        if self.shard is not None:
            listing = (item for item in listing if self.shard.owns(item.key))
        for item, done in ordered_map(self._is_done, listing, workers=SKIP_CHECK_WORKERS, ahead=SKIP_CHECK_AHEAD):
            if done.result():
                self.report.skipped.append(item.key)
            else:
                yield item

    def _is_done(self, item: InputFile) -> bool:
        if self.settings.force:
            return False
        return self._done_by(mf.read_manifest(self.dest, item.key), item)

    def _done_by(self, manifest: dict[str, Any] | None, item: InputFile) -> bool:
        return mf.is_done(manifest, item, self.settings_hash, self.source.fingerprint, self.dest)

    def run(self, progress: Any = None) -> RunReport:
        """Process every pending file. Environment and config errors stop the run and propagate.

        While the model works on file N, file N+1 (up to `prefetch` files) is fetched and decoded in the
        background, and file N-1's outputs are written by another thread.
        """
        started = self.clock()
        writer = OutputWriter(self)
        ahead = self.settings.prefetch
        items = ordered_map(self._prepare, self.pending(), workers=max(1, ahead), ahead=ahead)
        try:
            for item, prepared in items:
                if self._stopping():
                    break
                # Load every model before the first file: a missing model or refused token stops the run
                # here instead of failing each file in turn (the first files decode meanwhile). With claims,
                # only once a file is really ours: a worker whose files all went to others loads nothing.
                if self.claims is None:
                    self.pipeline.load()
                ready = prepared.result()
                if ready.claimed_elsewhere:
                    self.report.claimed_elsewhere.append(item.key)
                    continue
                self.pipeline.load()
                if self._stopping():
                    break
                with file_context(item.key):
                    self._process(item, ready, writer)
                self._check_for_broken_environment()
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        audio_h=f"{self.report.audio_seconds / 3600:.2f}", failed=len(self.report.failed)
                    )
        except BatchError as exc:
            self.report.error = describe(exc)
            raise
        except Exception as exc:
            # Listing or store failures that retries did not ride out: the run cannot go on (exit 3).
            cause = describe(exc)
            problem = EnvironmentProblem(f"the run stopped: {cause['type']}: {cause['message']}")
            self.report.error = describe(problem)
            raise problem from exc
        finally:
            writer.close()
            self.report.wall_seconds = self.clock() - started
            self.report.model_load_seconds = self.pipeline.load_seconds
            if self.pipeline.aligner is not None:
                self.report.alignment_models_loaded = list(self.pipeline.aligner.loads)
            self.report.finished_at = mf.utc_now()
            self.report.stopped_by_signal = self.stop_signal
            self._write_report()
            self._release_unused_claims()
            items.close()  # after the report: this waits for a download or decode still in progress
        return self.report

    def _stopping(self) -> bool:
        if self.stop_signal is not None:
            log.warning("stopping on signal %d: no new file is started", self.stop_signal)
        return self.stop_signal is not None

    def _check_for_broken_environment(self) -> None:
        """Several files in a row failing the same unexpected way (a CUDA fault that sticks, a full disk) is
        the machine, not the files: stop with exit 3, so the engine retries elsewhere, instead of failing all."""
        if self._consecutive_failures < BROKEN_AFTER_FAILURES:
            return
        recent = self.report.failed[-BROKEN_AFTER_FAILURES:]  # the consecutive failures, as counted
        kinds = {failure["error"]["type"] for failure in recent}
        if len(kinds) == 1 and not kinds & FILE_PROBLEMS:
            error = recent[-1]["error"]
            raise EnvironmentProblem(
                f"{BROKEN_AFTER_FAILURES} files in a row failed with {error['type']}: {error['message']}"
            )

    def _release_unused_claims(self) -> None:
        """Claims taken ahead of the model for files it never started (a stop, an error) go back at once."""
        if self.claims is not None:
            for key in list(self._held_claims):
                self.claims.release(key)
                self._held_claims.discard(key)

    def _prepare(self, item: InputFile) -> Prepared:
        """Fetch, fingerprint and decode one file (on a background thread, ahead of the model)."""
        with file_context(item.key):
            stopwatch = Stopwatch(self.clock)
            record: dict[str, Any] = {
                "input": {"key": item.key, "size": item.size, "version": item.version},
                "started_at": mf.utc_now(),
            }
            try:
                if self.claims is not None and not self._claim(item):
                    return Prepared(record, stopwatch, None, None, claimed_elsewhere=True)
                with stopwatch.stage("fingerprint"):
                    record["input"]["fingerprint"] = self.source.fingerprint(item)
                with stopwatch.stage("decode"), self.source.open(item.key, item.size) as stream:
                    audio = decode(stream)
            except Exception as exc:
                return Prepared(record, stopwatch, None, exc)
            record["audio_seconds"] = round(len(audio) / SAMPLE_RATE, 3)
            return Prepared(record, stopwatch, audio, None)

    def _claim(self, item: InputFile) -> bool:
        """Claim the file, unless another worker holds it or finished it since this worker's skip check.

        Workers write the manifest before releasing a claim, so a claim won after a release sees the manifest.
        """
        if not self.claims.claim(item.key):
            return False
        self._held_claims.add(item.key)
        manifest = mf.read_manifest(self.dest, item.key)
        if manifest is not None and (
            manifest.get("finished_at", "") >= self.report.started_at  # done by another worker during this run
            or (not self.settings.force and self._done_by(manifest, item))
        ):
            self.claims.release(item.key)
            self._held_claims.discard(item.key)
            return False
        return True

    def _process(self, item: InputFile, prepared: Prepared, writer: OutputWriter) -> None:
        """Run the models on one decoded file and hand its outputs to the writer."""
        record, stopwatch, error = prepared.record, prepared.stopwatch, prepared.error
        transcript = None
        # A stale "succeeded" must not survive while this file is being redone (deleted only now that the
        # model takes the file, not when it was fetched ahead).
        self.dest.delete(mf.manifest_name(item.key))
        self.pipeline.gpu_records = {}
        if prepared.audio is not None:
            audio = prepared.audio
            started = self.clock()
            try:
                result = self.pipeline.transcribe(audio, stopwatch)
                record.update(language=result.language, **self._stage_records(item.key, result))
                transcript = build_transcript(
                    result.language, result.language_probability, len(audio) / SAMPLE_RATE, result.segments,
                    result.turns,
                )  # fmt: skip
                error = result.problem  # the transcript is kept; the file still fails, so a rerun retries it
            except BatchError:
                raise
            except Exception as exc:
                error = exc
            finally:
                self.report.model_seconds += self.clock() - started
        if self.pipeline.gpu_records:
            record["gpu"] = {stage: r.to_dict() for stage, r in self.pipeline.gpu_records.items()}
            self.gpu_records.extend(self.pipeline.gpu_records.values())
        if self.runtime.device == "cuda":
            from batch.gpu import free_gpu_caches

            free_gpu_caches()  # back to the steady level between files: no creep over a long run
        writer.submit(item.key, record, stopwatch, transcript, error)

    def write_file(
        self, key: str, record: dict[str, Any], stopwatch: Stopwatch, transcript: dict | None, error: Exception | None
    ) -> dict[str, Any]:
        """Write one file's outputs, then its manifest last (on the writer thread). Returns the manifest."""
        if transcript is not None:
            try:
                with stopwatch.stage("write"):
                    record["outputs"] = self._write_outputs(key, transcript)
            except Exception as exc:
                error = error or OutputWriteFailure(f"writing the outputs failed: {describe(exc)['message']}")
        record["status"] = "failed" if error is not None else "succeeded"
        if error is not None:
            record["error"] = describe(error)
        record.update(timings=stopwatch.timings, finished_at=mf.utc_now())
        manifest = self._manifest(record)
        self.dest.write_bytes(mf.manifest_name(key), mf.encode(manifest))
        if self.claims is not None:
            self.claims.release(key)
            self._held_claims.discard(key)
        return manifest

    def finish_file(self, key: str, manifest: dict[str, Any] | None, write_error: BaseException | None) -> None:
        """Count a written file in the report (on the main thread)."""
        with file_context(key):
            if manifest is None:
                self._consecutive_failures += 1
                error = describe(write_error or RuntimeError("unknown"))
                error["message"] = f"the manifest could not be written: {error['message']}"
                self.report.failed.append({"key": key, "error": error})
                log.error("failed: %s", error["message"])
            elif manifest["status"] == "failed":
                self._consecutive_failures += 1
                self.report.failed.append({"key": key, "error": manifest["error"]})
                log.warning("failed: %s: %s", manifest["error"]["type"], manifest["error"]["message"])
            else:
                self._consecutive_failures = 0
                self.report.succeeded.append(key)
                self.report.audio_seconds += manifest["audio_seconds"]
                log.info(
                    "succeeded: %.1f s of audio in %.1f s (%s)",
                    manifest["audio_seconds"],
                    sum(manifest["timings"].values()),
                    manifest["language"] or "no speech",
                )

    def _stage_records(self, key: str, result: Any) -> dict[str, Any]:
        """What the manifest says of alignment and diarization; untimed words are summed in the report."""
        records: dict[str, Any] = {}
        if result.alignment is not None:
            records["alignment"] = result.alignment
            if result.alignment["status"] in ("unavailable", "failed"):
                self.report.words_untimed.append({"key": key, "reason": result.alignment.get("reason")})
        if result.turns is not None:
            records["speakers"] = sorted({turn["speaker"] for turn in result.turns})
        return records

    def _write_outputs(self, key: str, transcript: dict[str, Any]) -> list[str]:
        names = []
        for fmt in self.settings.formats:
            name = mf.output_name(key, fmt)
            self.dest.write_bytes(name, render(transcript, fmt, key))
            names.append(name)
        return names

    def _manifest(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "manifest_version": mf.MANIFEST_VERSION,
            "status": record.pop("status"),
            **({"error": record.pop("error")} if "error" in record else {}),
            "input": record.pop("input"),
            "settings_hash": self.settings_hash,
            "settings": self.settings.output_settings() | {"compute_type": self.runtime.compute_type},
            "language": record.pop("language", None),
            "audio_seconds": record.pop("audio_seconds", None),
            "timings": record.pop("timings"),
            "batch_size": self.runtime.batch_size,
            "model": self.settings.model,
            "device": self.runtime.device,
            "compute_type": self.runtime.compute_type,
            "threads": self.runtime.threads,
            "versions": self._versions,
            "run_id": self.report.run_id,
            **record,
        }

    def _write_report(self) -> None:
        context = {
            "settings": self.settings.model_dump(mode="json"),
            "settings_hash": self.settings_hash,
            "device": self.runtime.device,
            "compute_type": self.runtime.compute_type,
            "threads": self.runtime.threads,
            "batch_size": self.runtime.batch_size,
            "versions": self._versions,
            "gpu": _sum_gpu(self.gpu_records),
        }
        try:
            name = f"{mf.RUNS_FOLDER}/{self.report.run_id}.json"
            self.dest.write_bytes(name, mf.encode(self.report.to_dict(context)))
        except Exception as exc:  # the run's outcome stands; the report is a record of it
            log.error("could not write the run report: %s", describe(exc)["message"])


def _resolve_shard(settings: Settings) -> Any:
    """--shard, else the batch engine's worker index (Kubernetes, AWS Batch); a bad combination is exit 2."""
    from batch.shard import resolve_shard

    try:
        return resolve_shard(settings.shard, os.environ)
    except ValueError as exc:
        raise ConfigError("shard", str(exc)) from None


def _sum_gpu(records: list[Any]) -> dict[str, Any]:
    from batch.gpu import sum_records

    return sum_records(records)


def print_summary(report: RunReport, stream: TextIO | None = None) -> None:
    print(report.summary(), file=stream or sys.stderr, flush=True)


def run_job(settings: Settings, stdout: TextIO | None = None) -> int:
    """Everything `whisperx-batch run` does once its settings are valid; returns the exit code."""
    from batch.logs import run_id_var
    from batch.models import require_diarization_token
    from batch.runtime import available_cpus, default_compute_type, resolve_device

    source_root, dest_root = _require(settings, "source"), _require(settings, "out")
    token = require_diarization_token(settings)  # a missing token stops the run here (exit 2)
    source, dest = open_storage(settings, source_root, dest_root)
    device = resolve_device(settings.device)
    runtime = RuntimeOptions(
        device=device,
        compute_type=settings.compute_type or default_compute_type(device),
        threads=settings.threads or available_cpus(),
        batch_size=settings.batch_size,
    )
    pipeline = Pipeline(settings, runtime, hf_token=token)
    runner = Runner(settings, source, dest, pipeline, runtime)
    run_id_var.set(runner.report.run_id)
    if settings.dry_run:
        out = stdout or sys.stdout
        for item in runner.pending():
            out.flush()
            # A key that is not valid UTF-8 (an old share's file name) is printed as its original bytes.
            out.buffer.write(item.key.encode("utf-8", "surrogateescape") + b"\n")
            out.buffer.flush()
        return EXIT_OK
    pipeline.check_model_reference()
    source.check_readable()
    dest.check_writable()
    log.info(
        "run %s: %s -> %s, model %s on %s (%s, %d threads)",
        runner.report.run_id,
        source_root,
        dest_root,
        settings.model,
        device,
        runtime.compute_type,
        runtime.threads,
    )
    with _progress(settings) as progress, graceful_stop(runner, settings.grace_seconds):
        try:
            report = runner.run(progress)
        except BatchError:
            print_summary(runner.report)
            raise
    print_summary(report)
    return report.exit_code


@contextlib.contextmanager
def graceful_stop(runner: Runner, grace_seconds: float) -> Iterator[None]:
    """SIGTERM and SIGINT stop taking new files; the file in the model may finish within the grace period.

    Past it (or on a second signal) the run is abandoned at once: the file in progress has no manifest, so
    nothing half-written counts as done, and a rerun redoes exactly that file.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def abandon(signum: int) -> None:
        log.error("grace period over: abandoning the file in progress (a rerun redoes it)")
        runner.report.stopped_by_signal = signum
        runner.report.finished_at = mf.utc_now()
        runner._write_report()  # best effort: the outcome so far, for `status` and the logs
        print_summary(runner.report)
        logging.shutdown()
        os._exit(128 + signum)

    def on_signal(signum: int, _frame: Any) -> None:
        if runner.stop_signal is not None:
            abandon(signum)
        runner.request_stop(signum)
        log.warning("signal %d: finishing the current file (up to %.0f s), then stopping", signum, grace_seconds)
        timer = threading.Timer(grace_seconds, abandon, args=(signum,))
        timer.daemon = True
        timer.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def open_storage(settings: Settings, source_root: str, dest_root: str) -> tuple[Source, Dest]:
    """SOURCE and DEST as local folders or S3 prefixes, in any mix."""
    from batch.gpu import parse_bytes
    from batch.s3 import S3Dest, S3Source, is_s3_url, make_client

    client = None
    if is_s3_url(source_root) or is_s3_url(dest_root):
        client = make_client(settings.s3_endpoint_url)
    try:
        dest = S3Dest(dest_root, client) if is_s3_url(dest_root) else LocalDest(dest_root)
        if is_s3_url(source_root):
            source = S3Source(source_root, client, skip_url=dest_root, spool_dir=settings.spool_dir,
                              max_bytes=parse_bytes(settings.max_input_size))  # fmt: skip
        else:
            source = LocalSource(source_root, skip=None if is_s3_url(dest_root) else dest.root)
    except ValueError as exc:
        raise ConfigError("source" if source_root in str(exc) else "out", str(exc)) from None
    if _same_place(source_root, dest_root):
        raise ConfigError("out", "DEST is SOURCE itself: give a folder or prefix of its own (it may lie inside SOURCE)")
    return source, dest


def _same_place(source_root: str, dest_root: str) -> bool:
    from batch.s3 import is_s3_url

    if is_s3_url(source_root) or is_s3_url(dest_root):
        return source_root.rstrip("/") == dest_root.rstrip("/")
    return Path(source_root).resolve() == Path(dest_root).resolve()


def _require(settings: Settings, key: str) -> str:
    value = getattr(settings, key)
    if not value:
        raise ConfigError(key, "missing: give it on the command line, in the config file, or by environment variable")
    return value


def _progress(settings: Settings) -> Any:
    """A tqdm bar over files on a terminal; nothing (plain log lines) otherwise."""
    import contextlib

    if settings.quiet or settings.log_format == "json" or not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    @contextlib.contextmanager
    def bar() -> Iterator[Any]:
        with logging_redirect_tqdm(), tqdm(unit="file", desc="transcribing", dynamic_ncols=True) as progress:
            yield progress

    return bar()
