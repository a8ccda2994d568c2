"""One speaker per channel (`--channels split`), as call recorders write them and as AWS Transcribe's channel
identification reads them: no diarization model, no token.

A file decoded with its channels apart (batch.engine.audio) goes to the models as one stream per channel: each channel
has its own VAD, language, ASR chunks (batched with every other file's) and alignment, exactly as a mono file
would. When every channel of a file is back, their segments are merged by start time, each segment and word
labelled with its channel's speaker name, and the file comes out as one outcome: one transcript, one manifest.

  decoded file (channels, samples) -> channel 0, channel 1, ... -> models -> merged by time -> one outcome
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from batch.engine.asr.languages import spoken_languages
from batch.engine.pipeline import DecodedFile, FileOutcome, Pipeline, PipelineStats
from batch.engine.quality.guard import merge_records

# The name of channel N when --channel-speakers gives none for it (0-based, in the file's channel order).
DEFAULT_SPEAKER = "CHANNEL_{}"

# When channels' alignments end differently, the file's alignment says the worst of them.
_ALIGNMENT_SEVERITY = ("failed", "unavailable", "aligned", "no_speech")


def speaker_names(given: tuple[str, ...], count: int) -> list[str]:
    """The speaker of each of `count` channels: the names given, in order, then CHANNEL_N for the rest."""
    return [given[index] if index < len(given) else DEFAULT_SPEAKER.format(index) for index in range(count)]


@dataclass(eq=False)
class ChannelFile(DecodedFile):
    """One channel of a decoded file, on its way through the models. It shares the file's stopwatch, so the
    file's timings add up the work done on all its channels."""

    parent: DecodedFile | None = None
    channel: int = 0


class ChannelSplit:
    """A pipeline that hands each channel of a file to `inner` as a file of its own and merges them back."""

    def __init__(self, inner: Pipeline, speakers: tuple[str, ...]):
        self.inner = inner
        self.speakers = speakers

    def load(self) -> None:
        self.inner.load()

    def stats(self) -> PipelineStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        """One outcome per file, once all its channels are done; a file with a channel left unfinished when
        stopping gets none (a rerun redoes it), as the Pipeline protocol says of any unfinished file."""
        back: dict[int, dict[int, FileOutcome]] = {}  # id(file) -> {channel: outcome}
        for outcome in self.inner.process(self._channels(files), should_stop):
            if not isinstance(outcome.file, ChannelFile):
                yield outcome  # a file that failed before it was decoded
                continue
            parent = outcome.file.parent
            assert parent is not None and parent.audio is not None
            done = back.setdefault(id(parent), {})
            done[outcome.file.channel] = outcome
            outcome.file.audio = None  # a view of the file's array; the file keeps it until written
            if len(done) == parent.audio.shape[0]:
                del back[id(parent)]
                yield merge_channels(parent, [done[index] for index in sorted(done)], self.speakers)

    @staticmethod
    def _channels(files: Iterable[DecodedFile]) -> Iterator[DecodedFile]:
        for file in files:
            if file.audio is None:
                yield file
                continue
            for index, samples in enumerate(file.audio):
                yield ChannelFile(file.key, samples, file.stopwatch, deadline=file.deadline, parent=file, channel=index)


def merge_channels(file: DecodedFile, outcomes: list[FileOutcome], given: tuple[str, ...]) -> FileOutcome:
    """The file's outcome from its channels' outcomes (in channel order): it fails if any channel failed."""
    names = speaker_names(given, len(outcomes))
    merged = FileOutcome(file, transcribed=all(outcome.transcribed for outcome in outcomes))
    merged.error = next((outcome.error for outcome in outcomes if outcome.error is not None), None)
    merged.gpu = _merged_gpu(outcomes)
    workers = sorted({outcome.worker for outcome in outcomes if outcome.worker is not None})
    merged.worker = "; ".join(workers) or None  # channels may go to different worker processes
    if not merged.transcribed:
        return merged
    pairs = list(zip(outcomes, names, strict=True))
    segments = [_labelled(segment, name) for outcome, name in pairs for segment in outcome.segments]
    merged.segments = sorted(segments, key=lambda segment: (segment["start"], segment["end"]))  # stable sort
    merged.turns = [{"start": s["start"], "end": s["end"], "speaker": s["speaker"]} for s in merged.segments]
    merged.channels = [
        {
            "channel": index,
            "speaker": name,
            "language": outcome.language,
            "language_probability": outcome.language_probability,
        }
        for index, (outcome, name) in enumerate(pairs)
    ]
    main = max(outcomes, key=_speech_seconds)  # the first channel, when none has speech
    merged.language, merged.language_probability = main.language, main.language_probability
    merged.languages = spoken_languages(merged.segments)
    merged.alignment = _merged_alignment(outcomes)
    merged.quality = merge_records([outcome.quality for outcome in outcomes])
    return merged


def _labelled(segment: dict[str, Any], speaker: str) -> dict[str, Any]:
    """The segment and all its words said by `speaker` (timed or not: the channel says who, not the time)."""
    words = [{**word, "speaker": speaker} for word in segment.get("words", [])]
    return {**segment, "speaker": speaker, **({"words": words} if "words" in segment else {})}


def _speech_seconds(outcome: FileOutcome) -> float:
    return sum(segment["end"] - segment["start"] for segment in outcome.segments)


def _merged_alignment(outcomes: list[FileOutcome]) -> dict[str, Any] | None:
    results = [outcome.alignment for outcome in outcomes if outcome.alignment is not None]
    if not results:
        return None  # --no-align
    rank = {status: order for order, status in enumerate(_ALIGNMENT_SEVERITY)}
    return min(results, key=lambda result: rank.get(result["status"], len(rank)))


def _merged_gpu(outcomes: list[FileOutcome]) -> dict[str, Any]:
    from batch.engine.gpu.oom import merge_records

    stages: dict[str, list[Any]] = {}
    for outcome in outcomes:
        for stage, record in outcome.gpu.items():
            stages.setdefault(stage, []).append(record)
    return {stage: merge_records(records) for stage, records in stages.items()}
