"""The queue between the VAD and the ASR: speech chunks of many files, read a batch at a time.

A batch takes the next chunks whatever file they belong to, up to the size the memory sizer allows. A batch
that runs out of memory is split (oom.map_in_batches); one that fails otherwise is read again file by file,
so that a bad file fails alone. Each file is charged its share of a batch's time, by its number of chunks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batch.common.errors import BatchError
from batch.engine.asr.languages import LanguageRule
from batch.engine.asr.recognizer import Chunk, Recognized, WhisperRecognizer
from batch.engine.audio import SAMPLE_RATE
from batch.engine.gpu.oom import raise_if_context_lost
from batch.engine.pipeline import DecodedFile, PipelineStats
from batch.engine.vad.speech import SpeechChunk

log = logging.getLogger(__name__)


@dataclass(eq=False)  # each file is itself: compared and hashed by identity
class FileInFlight:
    """A file whose chunks are queued for (or being read by) the ASR."""

    file: DecodedFile
    chunks: list[SpeechChunk]
    language: str | None
    probability: float | None
    texts: list[Recognized | None] = field(default_factory=list)
    asr_records: list[Any] = field(default_factory=list)  # oom.StageMemoryRecord of each batch it was in
    error: Exception | None = None
    quality: dict[str, Any] | None = None  # what the hallucination guard did

    def __post_init__(self) -> None:
        self.texts = [None] * len(self.chunks)

    @property
    def read(self) -> bool:
        return all(text is not None for text in self.texts)

    def asr_chunks(self, prompt_language: str | None, rule: LanguageRule | None = None) -> Iterator[Chunk]:
        audio = self.file.audio
        assert audio is not None
        for speech in self.chunks:
            yield Chunk(audio[int(speech.start * SAMPLE_RATE) : int(speech.end * SAMPLE_RATE)], prompt_language, rule)

    def chunk_languages(self) -> list[str | None]:
        """The language each chunk was read in: its detection's, else the file's (for a second reading)."""
        return [
            text.detected.language if text is not None and text.detected is not None else self.language
            for text in self.texts
        ]


@dataclass(frozen=True)
class _Item:
    owner: FileInFlight
    index: int
    chunk: Chunk


class ChunkQueue:
    def __init__(
        self,
        recognizer: WhisperRecognizer,
        sizer: Any,
        stats: PipelineStats,
        clock: Callable[[], float] = time.perf_counter,
        rule: LanguageRule | None = None,
    ):
        """`rule`: each chunk's language chosen from its own detection (None: the file's language)."""
        self.recognizer, self.sizer, self.stats, self.clock = recognizer, sizer, stats, clock
        self.rule = rule
        self._items: deque[_Item] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, file: FileInFlight) -> None:
        # An English-only model takes no language token in its prompt.
        language = file.language if self.recognizer.multilingual else None
        chunks = file.asr_chunks(language, self.rule)
        self._items.extend(_Item(file, index, chunk) for index, chunk in enumerate(chunks))

    def read_batch(self) -> list[FileInFlight]:
        """Read the next batch of chunks; return the files whose last chunk it read, or that failed in it."""
        size = self.sizer.size_for("asr")
        batch = [self._items.popleft() for _ in range(min(size, len(self._items)))]
        owners = list(dict.fromkeys(item.owner for item in batch))
        try:
            self._recognize(batch)
        except BatchError:
            raise
        except Exception as exc:
            raise_if_context_lost(exc)  # every file would fail after it: the process must go
            if len(owners) == 1:
                owners[0].error = exc
            else:  # a bad file in a shared batch fails alone: read each file's chunks on their own
                log.warning("an ASR batch of %d files failed (%s): reading each file alone", len(owners), exc)
                for owner in owners:
                    self._read_alone(owner, [item for item in batch if item.owner is owner])
        failed = {owner for owner in owners if owner.error is not None}
        if failed:  # their chunks still queued will never be needed
            self._items = deque(item for item in self._items if item.owner not in failed)
        return [owner for owner in owners if owner.error is not None or owner.read]

    def _read_alone(self, owner: FileInFlight, items: list[_Item]) -> None:
        try:
            self._recognize(items)
        except BatchError:
            raise
        except Exception as exc:
            raise_if_context_lost(exc)
            owner.error = exc

    def _recognize(self, batch: list[_Item]) -> None:
        from batch.engine.gpu.oom import map_in_batches

        started = self.clock()
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = started
        detections, detecting = self.recognizer.detections, self.recognizer.detection_seconds
        result = map_in_batches("asr", self.sizer, [item.chunk for item in batch], self.recognizer.recognize)
        detected = self.recognizer.detections - detections
        detection = self.recognizer.detection_seconds - detecting  # inside the batch's time: told apart
        elapsed = max(0.0, self.clock() - started - detection)
        self.stats.asr_batches += len(result.batches)
        self.stats.asr_items += len(batch)
        self.stats.language_detections += detected
        self.stats.gpu_records.extend(result.batches)  # the run's totals count each batch once
        for item, text in zip(batch, result.outputs, strict=True):
            item.owner.texts[item.index] = text
            item.owner.file.stopwatch.add("asr", elapsed / len(batch))
            if detected:
                item.owner.file.stopwatch.add("language", detection / len(batch))
        for owner in dict.fromkeys(item.owner for item in batch):
            owner.asr_records.append(result.record)
