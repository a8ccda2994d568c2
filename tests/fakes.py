"""A fake of the pipeline interface, so the runner's behaviour is tested without a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from batch.engine.audio import SAMPLE_RATE
from batch.engine.pipeline import DecodedFile, FileOutcome, PipelineStats


@dataclass
class FakePipeline:
    """Says "hello KEY" for every file, in batches of `batch_size` files, finishing files in the order given.

    `errors` maps a key to the exception its outcome carries; `stop_errors` maps a key to an exception raised
    out of `process` when that file is reached (a BatchError stops the run). `on_batch` runs before each batch
    (tests send signals or requests from it). Everything the runner asked for is recorded.
    """

    batch_size: int = 2
    errors: dict[str, Exception] = field(default_factory=dict)
    stop_errors: dict[str, Exception] = field(default_factory=dict)
    on_batch: Callable[[list[str]], None] = lambda keys: None
    load_error: Exception | None = None
    loads: int = 0
    pulled: list[str] = field(default_factory=list)
    _stats: PipelineStats = field(default_factory=PipelineStats)

    def load(self) -> None:
        if self.load_error is not None:
            raise self.load_error
        if not self.loads:
            self._stats.load_seconds = 0.0
        self.loads += 1

    def stats(self) -> PipelineStats:
        return self._stats

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        source = iter(files)
        while not should_stop():
            batch = []
            for file in source:
                self.pulled.append(file.key)
                if file.key in self.stop_errors:
                    raise self.stop_errors[file.key]
                batch.append(file)
                if len(batch) == self.batch_size or should_stop():
                    break
            if not batch:
                return
            self.on_batch([file.key for file in batch])
            self._stats.asr_batches += 1
            self._stats.asr_items += len(batch)
            for file in batch:
                yield self._outcome(file)

    def _outcome(self, file: DecodedFile) -> FileOutcome:
        if file.error is not None:
            return FileOutcome(file, error=file.error)
        if file.key in self.errors:
            return FileOutcome(file, error=self.errors[file.key])
        assert file.audio is not None
        seconds = round(len(file.audio) / SAMPLE_RATE, 3)
        file.stopwatch.add("asr", 0.01)
        segment = {"start": 0.0, "end": seconds, "text": f"hello {file.key}", "avg_logprob": -0.1}
        return FileOutcome(file, transcribed=True, language="en", segments=[segment])
