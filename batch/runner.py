"""The one loop over files: skip what is done, transcribe the rest one at a time, isolate each failure, report."""

from __future__ import annotations

import logging
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from batch import manifest as mf
from batch.audio import SAMPLE_RATE, decode
from batch.config import Settings, settings_hash
from batch.errors import EXIT_FILES_FAILED, EXIT_OK, BatchError, describe
from batch.logs import file_context
from batch.pipeline import Pipeline, RuntimeOptions, Stopwatch
from batch.runtime import package_versions
from batch.storage import InputFile, LocalDest, LocalSource
from batch.transcript import build_transcript, render

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


@dataclass
class RunReport:
    """What a run did; written to DEST/_runs/RUN_ID.json and summed up on stderr."""

    run_id: str
    started_at: str
    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    model_load_seconds: float | None = None
    words_untimed: list[dict[str, Any]] = field(default_factory=list)
    alignment_models_loaded: list[str] = field(default_factory=list)
    finished_at: str | None = None
    error: dict[str, str] | None = None

    @property
    def exit_code(self) -> int:
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
        if self.error:
            lines.append(f"  stopped: {self.error['message']}")
        return "\n".join(lines)

    def to_dict(self, context: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            **context,
            "counts": {"succeeded": len(self.succeeded), "skipped": len(self.skipped), "failed": len(self.failed)},
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "failed": self.failed,
            "audio_seconds": round(self.audio_seconds, 3),
            "audio_hours": round(self.audio_seconds / 3600, 4),
            "wall_seconds": round(self.wall_seconds, 3),
            "model_load_seconds": self.model_load_seconds,
            "words_untimed": self.words_untimed,
            "alignment_models_loaded": self.alignment_models_loaded,
            "realtime_factor": round(self.wall_seconds / self.audio_seconds, 4) if self.audio_seconds else None,
            "error": self.error,
            "exit_code": self.exit_code if not self.error else None,
        }


class Runner:
    """Feeds every pending file of SOURCE through one Pipeline and writes its outputs to DEST."""

    def __init__(
        self,
        settings: Settings,
        source: LocalSource,
        dest: LocalDest,
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

    def pending(self) -> Iterator[InputFile]:
        """Files that need work, streamed in listing order; done files are counted as skipped."""
        for item in self.source.list(self.settings.include, self.settings.exclude):
            if not self.settings.force and mf.is_done(
                mf.read_manifest(self.dest, item.key), item, self.settings_hash, self.source.fingerprint, self.dest
            ):
                self.report.skipped.append(item.key)
                continue
            yield item

    def run(self, progress: Any = None) -> RunReport:
        """Process every pending file. Environment and config errors stop the run and propagate."""
        started = self.clock()
        try:
            for item in self.pending():
                # Load every model before the first file: a missing model or refused token stops the run
                # here instead of failing each file in turn.
                self.pipeline.load()
                with file_context(item.key):
                    self._process(item)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        audio_h=f"{self.report.audio_seconds / 3600:.2f}", failed=len(self.report.failed)
                    )
        except BatchError as exc:
            self.report.error = describe(exc)
            raise
        finally:
            self.report.wall_seconds = self.clock() - started
            self.report.model_load_seconds = self.pipeline.load_seconds
            if self.pipeline.aligner is not None:
                self.report.alignment_models_loaded = list(self.pipeline.aligner.loads)
            self.report.finished_at = mf.utc_now()
            self._write_report()
        return self.report

    def _process(self, item: InputFile) -> None:
        started_at = mf.utc_now()
        stopwatch = Stopwatch(self.clock)
        # A stale "succeeded" must not survive while this file is being redone.
        self.dest.delete(mf.manifest_name(item.key))
        self.pipeline.gpu_records = {}
        record: dict[str, Any] = {"input": {"key": item.key, "size": item.size, "version": item.version}}
        try:
            with stopwatch.stage("fingerprint"):
                record["input"]["fingerprint"] = self.source.fingerprint(item)
            with stopwatch.stage("decode"), self.source.open(item.key) as stream:
                audio = decode(stream)
            record["audio_seconds"] = round(len(audio) / SAMPLE_RATE, 3)
            result = self.pipeline.transcribe(audio, stopwatch)
            record.update(language=result.language, **self._stage_records(item.key, result))
            transcript = build_transcript(
                result.language, result.language_probability, len(audio) / SAMPLE_RATE, result.segments, result.turns
            )
            with stopwatch.stage("write"):
                record["outputs"] = self._write_outputs(item.key, transcript)
            if result.problem is not None:
                raise result.problem  # the transcript above is kept; the file still fails, so a rerun retries it
        except BatchError:
            raise
        except Exception as exc:
            record["status"], record["error"] = "failed", describe(exc)
            self.report.failed.append({"key": item.key, "error": record["error"]})
            log.warning("failed: %s: %s", record["error"]["type"], record["error"]["message"])
        else:
            record["status"] = "succeeded"
            self.report.succeeded.append(item.key)
            self.report.audio_seconds += record["audio_seconds"]
            log.info(
                "succeeded: %.1f s of audio in %.1f s (%s)",
                record["audio_seconds"],
                sum(stopwatch.timings.values()),
                record["language"] or "no speech",
            )
        if self.pipeline.gpu_records:
            record["gpu"] = {stage: r.to_dict() for stage, r in self.pipeline.gpu_records.items()}
            self.gpu_records.extend(self.pipeline.gpu_records.values())
        if self.runtime.device == "cuda":
            from batch.gpu import free_gpu_caches

            free_gpu_caches()  # back to the steady level between files: no creep over a long run
        record.update(timings=stopwatch.timings, started_at=started_at, finished_at=mf.utc_now())
        self.dest.write_bytes(mf.manifest_name(item.key), mf.encode(self._manifest(record)))

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
        except OSError as exc:
            log.error("could not write the run report: %s", exc)


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
    dest = LocalDest(dest_root)
    source = LocalSource(source_root, skip=dest.root)
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
        for item in runner.pending():
            print(item.key, file=stdout or sys.stdout, flush=True)
        return EXIT_OK
    pipeline.check_model_reference()
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
    with _progress(settings) as progress:
        try:
            report = runner.run(progress)
        except BatchError:
            print_summary(runner.report)
            raise
    print_summary(report)
    return report.exit_code


def _require(settings: Settings, key: str) -> str:
    from batch.errors import ConfigError

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
