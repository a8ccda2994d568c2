"""The pipeline interface: a stream of decoded files in, one outcome per file out.

The runner feeds files and writes outcomes; it knows nothing of models. `WhisperxPipeline`
(batch.engine.whisperx_pipeline) is the real implementation; tests drive the runner with a fake one (tests/fakes.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from batch.common.errors import FileTimeout


class Stopwatch:
    """Adds up seconds per stage; the clock is injectable so tests can use a fake one."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 4)


@dataclass(frozen=True)
class Deadline:
    """When a file must be done by (time.monotonic, one clock for every process of the machine), and the limit
    it came from (file_timeout), for the reason it fails with."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float | None) -> Deadline | None:
        return None if seconds is None else cls(time.monotonic() + seconds, seconds)

    def passed(self) -> bool:
        return time.monotonic() > self.at

    def missed(self, stage: str) -> FileTimeout:
        return FileTimeout(f"past its deadline (file_timeout {self.seconds:g} s) {stage}: stopped there")


@dataclass
class DecodedFile:
    """One input, decoded (or the reason it could not be), with the time its fetch and decode took.

    `audio` is 16 kHz mono, shape (samples,); with `--channels split` it is one row per channel, shape
    (channels, samples), which batch.engine.channels hands to the models a channel at a time.
    """

    key: str
    audio: np.ndarray | None
    stopwatch: Stopwatch
    error: Exception | None = None
    deadline: Deadline | None = None  # set when the models take it (file_timeout)

    def overdue(self, stage: str) -> Exception | None:
        """The error the file fails with when it is past its deadline, checked as `stage` ends; else None."""
        return self.deadline.missed(stage) if self.deadline is not None and self.deadline.passed() else None

    @property
    def seconds(self) -> float:
        from batch.engine.audio import SAMPLE_RATE

        assert self.audio is not None
        return self.audio.shape[-1] / SAMPLE_RATE


@dataclass
class FileOutcome:
    """What the pipeline made of one file.

    `transcribed` says there is a transcript to write. A file can have one and still fail (`error`, e.g. its
    words could not be timed): the transcript is written and a rerun retries the file.
    """

    file: DecodedFile
    transcribed: bool = False
    language: str | None = None
    language_probability: float | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] | None = None  # speaker turns, when diarized or split by channel
    channels: list[dict[str, Any]] | None = None  # with --channels split: each channel's speaker and language
    alignment: dict[str, Any] | None = None
    error: Exception | None = None
    gpu: dict[str, Any] = field(default_factory=dict)  # stage -> oom.StageMemoryRecord
    worker: str | None = None  # the worker process that made it, when the pipeline is a pool of them
    quality: dict[str, Any] | None = None  # the hallucination guard's record (batch.engine.quality.guard)
    languages: dict[str, float] | None = None  # seconds of segments per language, when found per chunk

    @property
    def key(self) -> str:
        return self.file.key

    @property
    def timings(self) -> dict[str, float]:
        return self.file.stopwatch.timings


@dataclass
class PipelineStats:
    """What the pipeline did over a run, for the run report."""

    load_seconds: float | None = None
    busy_seconds: float = 0.0  # time the models worked (the rest of the run they waited for input)
    first_batch_at: float | None = None  # the clock when the first ASR batch started
    asr_batches: int = 0
    asr_items: int = 0
    language_detections: int = 0  # chunks whose language Whisper detected (batch.engine.asr.languages)
    batch_size: int = 0  # the configured ceiling
    alignment_models_loaded: list[str] = field(default_factory=list)
    gpu_records: list[Any] = field(default_factory=list)  # oom.StageMemoryRecord: one per ASR batch, per diarized file
    workers: list[Any] = field(default_factory=list)  # per worker process, when the pipeline is a pool of them

    @property
    def batch_fill(self) -> float | None:
        """Mean speech chunks per ASR batch."""
        return round(self.asr_items / self.asr_batches, 3) if self.asr_batches else None


class Pipeline(Protocol):
    def load(self) -> None:
        """Load what every file needs, or raise a BatchError that stops the run before any file."""

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        """Yield one outcome per file, in the order files finish (not the order they came).

        Files are pulled from `files` only as the work needs them. Once `should_stop()` is true no more is
        pulled, the work in hand is finished only for files that need nothing more than what is running,
        and the files left unfinished get no outcome (their caller redoes them another time). A BatchError
        raised inside stops the whole run; any other error belongs to a file and comes back as its outcome.
        """
        ...

    def stats(self) -> PipelineStats: ...

    def close(self) -> None:
        """The run is over: let go of what outlives a `process` call (worker processes). The runner may call
        `process` several times (a queue that pauses) and calls this once, at the end, whatever ended the run."""
