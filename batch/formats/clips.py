"""A review clip: a span of a recording with a little context, cut from its decoded samples and encoded small
(Opus in Ogg, which Chromium, Firefox and Safari play from disk), for the review page's players."""

from __future__ import annotations

import io

import av
import numpy as np

CONTEXT_SECONDS = 0.5  # heard before and after the span
LONGEST_SPAN_SECONDS = 40.0  # a span longer than this is cut at its first 40 s (a VAD chunk is at most 30 s)
CLIP_SUFFIX = ".ogg"
_BIT_RATE = 24_000  # speech stays clear; about 3 kB a second


def clip_window(start: float, end: float, recording_seconds: float | None) -> tuple[float, float]:
    """The times, in the recording, that the clip of the span start..end holds: the span (capped), with context."""
    end = min(end, start + LONGEST_SPAN_SECONDS)
    begin = max(0.0, start - CONTEXT_SECONDS)
    stop = end + CONTEXT_SECONDS
    if recording_seconds is not None:
        stop = min(stop, recording_seconds)
    return round(begin, 3), round(max(stop, begin), 3)


def cut(audio: np.ndarray, rate: int, window: tuple[float, float]) -> np.ndarray:
    """The window's samples, mono (channels are mixed), as a copy: the recording's array can be freed."""
    mono = audio if audio.ndim == 1 else audio.mean(axis=0)
    first, last = (round(seconds * rate) for seconds in window)
    return np.array(mono[first:last], dtype=np.float32)


def encode_clip(samples: np.ndarray, rate: int) -> bytes:
    """`samples` (mono float32 at `rate`: 8, 12, 16, 24 or 48 kHz, as Opus takes them) as Ogg Opus."""
    if samples.size == 0:
        raise ValueError("an empty clip")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="mono")
        stream.bit_rate = _BIT_RATE
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()
