"""Voice activity detection: where a recording speaks, as chunks of at most `chunk_size` seconds for Whisper.

Two detectors with one output shape, both offline:
- pyannote: whisperx's bundled segmentation model slid over the audio in 5 s windows every `step` seconds
  (batch.engine.vad.segmentation runs it as pyannote.audio and whisperx would, without importing them). pyannote's own
  step is 0.5 s, so every second of audio goes through the model ten times; a coarser step costs
  proportionally less (bench/bench_vad.py measures how coarse it can be before the chunks change).
- silero: the Silero ONNX model that faster-whisper ships, on onnxruntime with one thread (no torch.hub).
Both detectors' speech regions are merged by whisperx's `Vad.merge_chunks` rule (`merge_regions`), so both
feed Whisper the same shape of input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import whisperx

BUNDLED_VAD_CHECKPOINT = Path(whisperx.__file__).parent / "assets" / "pytorch_model.bin"
SAMPLE_RATE = 16_000
PYANNOTE_WINDOW = 5.0  # seconds of audio the bundled segmentation model sees at once (its training duration)


@dataclass(frozen=True)
class VadOptions:
    """How speech is found and merged.

    `step` (pyannote only): 2.5 s, half the 5 s window, so every frame is still scored by two windows.
    bench/bench_vad.py measured it against pyannote's 0.5 s: VAD ~4-5x cheaper, chunk boundaries that lie in
    pauses within 0.034 s, no chunk added or dropped; a cut that merge_chunks must make inside speech longer
    than chunk_size can land elsewhere (at any step but 0.5). `step=0.5` gives whisperx's chunks exactly.
    """

    method: Literal["pyannote", "silero"] = "pyannote"
    onset: float = 0.5
    offset: float = 0.363
    chunk_size: float = 30.0  # longest merged chunk, seconds
    step: float = 2.5  # pyannote window step in seconds (ignored by silero)

    def __post_init__(self) -> None:
        if self.method not in ("pyannote", "silero"):
            raise ValueError(f"VAD method must be pyannote or silero, not {self.method!r}")
        for name in ("onset", "offset"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"VAD {name} must lie between 0 and 1, not {getattr(self, name)}")
        if not self.chunk_size > 0:
            raise ValueError(f"VAD chunk_size must be positive, not {self.chunk_size}")
        # pyannote treats a step of 0 as "use the default" and a step beyond the window would leave gaps.
        if not 0 < self.step <= PYANNOTE_WINDOW:
            raise ValueError(f"VAD step must be above 0 and at most {PYANNOTE_WINDOW:g} s, not {self.step}")


@dataclass(frozen=True)
class SpeechChunk:
    """A chunk for Whisper, and what the VAD saw in it (for the hallucination guard; not compared: the chunk is
    its times)."""

    start: float  # seconds
    end: float
    speech_seconds: float | None = field(default=None, compare=False)  # inside the VAD's speech regions
    mean_score: float | None = field(default=None, compare=False)  # mean frame speech score (pyannote only)
    # The speech regions inside the chunk, (start, end) in seconds: where speech that left no text is looked for.
    regions: tuple[tuple[float, float], ...] = field(default=(), compare=False)

    @property
    def speech_regions(self) -> tuple[tuple[float, float], ...]:
        """Its speech regions; a chunk made without them is speech end to end."""
        return self.regions or ((self.start, self.end),)


class SpeechDetector(Protocol):
    def speech_chunks(self, audio: np.ndarray) -> list[SpeechChunk]:
        """16 kHz mono float32 in; merged chunks (each <= chunk_size) out, in time order."""
        ...


def load_vad(options: VadOptions, device: str) -> SpeechDetector:
    """The detector `options.method` names, loaded now so that a missing model fails before any file.

    `device` places pyannote's model ("cpu", "cuda", "cuda:1"); Silero always runs on the CPU.
    """
    if options.method == "silero":
        return SileroDetector(options)
    return PyannoteDetector(options, device)


class PyannoteDetector:
    """whisperx's pyannote VAD, with the window step as a parameter, run by batch.engine.vad.segmentation (no
    pyannote.audio import: that alone costs about 10 s of start-up)."""

    def __init__(self, options: VadOptions, device: str):
        import torch

        from batch.engine.vad.segmentation import load_segmentation

        self.options = options
        self.sizer: Any = None  # the run's GPU budget (batch.engine.gpu.sizing.BatchSizer), given once it exists
        place = torch.device(device)
        self._model = load_segmentation(BUNDLED_VAD_CHECKPOINT).to(place)
        if place.type == "cuda":
            # As pyannote does before every inference (fix_reproducibility): TF32 changes the scores.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def speech_chunks(self, audio: np.ndarray) -> list[SpeechChunk]:
        from batch.engine.vad.segmentation import speech_regions, speech_scores

        if audio.size == 0:
            return []
        o = self.options
        scores = speech_scores(self._model, audio, o.step, self.sizer)
        regions = speech_regions(scores, o.onset, o.offset, o.chunk_size)
        middles = scores.frames.middles(len(scores.data))
        return _chunks(merge_regions(regions, o.chunk_size), audio, regions, (scores.data[:, 0], middles))


class SileroDetector:
    """Silero VAD through faster-whisper's ONNX model and its `get_speech_timestamps`.

    Options map onto faster-whisper's VadOptions as:
    - onset -> threshold and offset -> neg_threshold: the same hysteresis as pyannote's (speech starts
      above onset and lasts until the probability falls below offset);
    - chunk_size -> max_speech_duration_s, so that no region (padding included) is longer than a chunk;
    - min_speech_duration_ms=250, min_silence_duration_ms=100, speech_pad_ms=30: silero-vad's own defaults,
      which whisperx's torch.hub Silero used. faster-whisper's defaults (2 s of silence, 400 ms of padding)
      are tuned for its own chunk collector; here whisperx's merge_chunks fills gaps as pyannote's path does.
    """

    def __init__(self, options: VadOptions):
        from faster_whisper.vad import VadOptions as SileroOptions
        from faster_whisper.vad import get_vad_model

        self.options = options
        self._silero = SileroOptions(
            threshold=options.onset,
            neg_threshold=options.offset,
            min_speech_duration_ms=250,
            max_speech_duration_s=options.chunk_size,
            min_silence_duration_ms=100,
            speech_pad_ms=30,
        )
        get_vad_model()  # faster-whisper loads one process-wide session (one onnxruntime thread) and reuses it

    def speech_chunks(self, audio: np.ndarray) -> list[SpeechChunk]:
        from faster_whisper.vad import get_speech_timestamps

        if audio.size == 0:
            return []
        stamps = get_speech_timestamps(audio, self._silero, sampling_rate=SAMPLE_RATE)
        regions = [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]
        return _chunks(merge_regions(regions, self.options.chunk_size), audio, regions)


def merge_regions(regions: Sequence[tuple[float, float]], chunk_size: float) -> list[dict[str, float]]:
    """Speech regions joined into chunks of at most `chunk_size` seconds: whisperx's `Vad.merge_chunks` rule,
    written out so that no path imports pyannote.audio and lightning (seconds of start-up)."""
    merged: list[dict[str, float]] = []
    if not regions:
        return merged
    start, end = regions[0][0], 0.0
    for region_start, region_end in regions:
        if region_end - start > chunk_size and end - start > 0:
            merged.append({"start": start, "end": end})
            start = region_start
        end = region_end
    merged.append({"start": start, "end": end})
    return merged


def _chunks(
    merged: Sequence[dict[str, Any]],
    audio: np.ndarray,
    regions: Sequence[tuple[float, float]] = (),
    frames: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[SpeechChunk]:
    """whisperx's merged chunk dicts as SpeechChunks, ends capped at the end of the audio, with the speech regions
    inside each and their seconds and, given the frame scores and their middles, its mean speech score.

    pyannote stamps a region at its last frame's middle, which can lie a few milliseconds past the last sample.
    """
    from batch.engine.quality.signals import mean_score_within, speech_seconds_within

    duration = len(audio) / SAMPLE_RATE
    chunks = []
    for c in merged:
        start, end = float(c["start"]), min(float(c["end"]), duration)
        score = mean_score_within(*frames, start, end) if frames is not None else None
        inside = tuple(
            (max(start, r_start), min(end, r_end)) for r_start, r_end in regions if r_start < end and r_end > start
        )
        chunks.append(SpeechChunk(start, end, round(speech_seconds_within(regions, start, end), 3), score, inside))
    return chunks
