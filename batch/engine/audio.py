"""Decode any container or codec FFmpeg reads into 16 kHz float32 audio: one mono array, or (with
`--channels split`) one row per channel.

Decoding runs in-process through PyAV (FFmpeg's libraries), from a stream rather than a path, and
turns FFmpeg's failures into reasons a person can act on.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from typing import BinaryIO

import av
import numpy as np

from batch.common.errors import AudioDecodeError, AudioTooLong

SAMPLE_RATE = 16_000

# A file whose container promises much more audio than decodes was cut short (a partial upload, a
# recorder that died). Below this share of the declared duration the file fails instead of
# producing a transcript that silently stops halfway.
MIN_DECODED_SHARE = 0.9
DURATION_SLACK_SECONDS = 1.0


def decode(stream: BinaryIO, split_channels: bool = False, max_seconds: float | None = None) -> np.ndarray:
    """The whole audio of `stream` as float32 samples in [-1, 1] at 16 kHz: mono, shape (samples,), or with
    `split_channels` one row per channel of the audio track, shape (channels, samples), in the file's order.

    Raises AudioDecodeError when the stream is empty, not media, has no audio track, or is truncated, and
    AudioTooLong when it holds more than `max_seconds` of audio: at once when the container says so, else as
    soon as that much is decoded (a container's duration can be missing or wrong), so that memory stays bounded
    by the limit, not by the recording.
    """
    declared_seconds, layout = _probe(stream)
    if max_seconds is not None and declared_seconds is not None and declared_seconds > max_seconds:
        raise AudioTooLong(
            f"the file declares {_clock(declared_seconds)} of audio, over the duration limit of "
            f"{_clock(max_seconds)} (max_duration {max_seconds:g} s): not decoded; raise max_duration to take it"
        )
    stream.seek(0)
    try:
        samples = _decode_channels(stream, layout, max_seconds) if split_channels else _decode_mono(stream, max_seconds)
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"cannot decode audio: {_reason(exc)}") from None
    decoded_seconds = samples.shape[-1] / SAMPLE_RATE
    if samples.shape[-1] == 0:
        raise AudioDecodeError("no audio samples could be decoded (empty or truncated audio track)")
    if declared_seconds and decoded_seconds < declared_seconds * MIN_DECODED_SHARE - DURATION_SLACK_SECONDS:
        raise AudioDecodeError(
            f"truncated: decoded {decoded_seconds:.1f} s of the {declared_seconds:.1f} s the file declares"
        )
    return samples


def declared_seconds(stream: BinaryIO) -> float | None:
    """The audio duration the file's header declares, without decoding; None when it is not said or not media."""
    try:
        return _probe(stream)[0]
    except AudioDecodeError:
        return None


def _decode_mono(stream: BinaryIO, max_seconds: float | None = None) -> np.ndarray:
    """The first audio track down-mixed to mono at 16 kHz, the samples faster-whisper's `decode_audio` gives
    (16-bit, as float32), without the full garbage collection it runs after every file for old PyAV releases'
    resamplers (tests/engine/test_audio.py checks that decoding leaves nothing for it): ~0.15 s a file, holding the
    interpreter lock, in a process whose heap is not frozen as the runner's is (see batch.engine.loading)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    samples = io.BytesIO()
    for piece in _resampled(stream, resampler, max_seconds):
        samples.write(piece.to_ndarray())
    return np.frombuffer(samples.getbuffer(), dtype=np.int16).astype(np.float32) / 32768.0


def _decode_channels(stream: BinaryIO, layout: av.AudioLayout, max_seconds: float | None = None) -> np.ndarray:
    """Every channel of the first audio track at 16 kHz, shape (channels, samples).

    faster-whisper's decode_audio does the same for mono and for exactly two channels (`split_stereo`, which
    also turns a mono file into two copies of it); this keeps the track's own layout, whatever its count.
    """
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
    pieces = [piece.to_ndarray() for piece in _resampled(stream, resampler, max_seconds)]
    if not pieces:
        return np.zeros((layout.nb_channels, 0), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(pieces, axis=1), dtype=np.float32)


def _resampled(
    stream: BinaryIO, resampler: av.AudioResampler, max_seconds: float | None = None
) -> Iterator[av.AudioFrame]:
    """The first audio track through `resampler`, resampled in large pieces as faster-whisper does; AudioTooLong
    as soon as more than `max_seconds` is decoded."""
    decoded = 0.0
    with av.open(stream, mode="r", metadata_errors="ignore") as container:
        fifo = av.AudioFifo()
        for frame in _valid_frames(container.decode(audio=0)):
            decoded += frame.samples / (frame.sample_rate or SAMPLE_RATE)
            if max_seconds is not None and decoded > max_seconds:
                raise AudioTooLong(
                    f"more than {_clock(max_seconds)} of audio, the duration limit (max_duration {max_seconds:g} s): "
                    "decoding stopped there; raise max_duration to take it"
                )
            frame.pts = None  # no timestamp check between frames, as decode_audio
            fifo.write(frame)
            if fifo.samples >= 500_000:
                yield from resampler.resample(fifo.read())
        if fifo.samples:
            yield from resampler.resample(fifo.read())
        yield from resampler.resample(None)  # flush


def _valid_frames(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """The frames that decode; a damaged frame is skipped, as decode_audio skips it."""
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _probe(stream: BinaryIO) -> tuple[float | None, av.AudioLayout]:
    """Check the stream is media with an audio track; return the audio duration it declares (if any) and the
    track's channel layout."""
    if _is_empty(stream):
        raise AudioDecodeError("empty file")
    try:
        with av.open(stream, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                raise AudioDecodeError(f"no audio track (the file holds: {', '.join(kinds)})")
            audio = container.streams.audio[0]
            layout = audio.layout
            if "wav" in container.format.name.split(","):
                return _wav_header_seconds(stream), layout
            if audio.duration is not None and audio.time_base is not None:
                return float(audio.duration * audio.time_base), layout
            if container.duration is not None:
                return container.duration / av.time_base, layout
            return None, layout
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"not a readable audio or video file: {_reason(exc)}") from None


def _wav_header_seconds(stream: BinaryIO) -> float | None:
    """The length a PCM WAV header declares (FFmpeg derives it from the file size instead)."""
    position = stream.tell()
    try:
        stream.seek(0)
        with wave.open(stream) as header:
            frames, rate = header.getnframes(), header.getframerate()
    except (wave.Error, EOFError, ValueError):
        return None  # not plain PCM: no cheap way to know; trust the decoder
    finally:
        stream.seek(position)
    # Recorders that never finished write 0 or 0xFFFFFFFF-ish sizes: "unknown", not "truncated".
    if rate <= 0 or frames <= 0 or frames >= 0xFFFFFFFF // 8:
        return None
    return frames / rate


def _is_empty(stream: BinaryIO) -> bool:
    first = stream.read(1)
    stream.seek(0)
    return not first


def _clock(seconds: float) -> str:
    """4:05:00 for 14700 s: a recording's length as people say it."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _reason(exc: av.error.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc)
