"""whisperx's pyannote VAD without importing pyannote.audio: the same network, weights and arithmetic.

Importing pyannote.audio costs about 10 s on every run (it brings in Lightning, which imports torchmetrics,
torchvision, sympy...): about as long as the VAD of a quarter of an hour of audio at the default step, and
longer than a whole run over a few voicemails. What whisperx's VAD needs from it is small, and is written out here:
- the network: pyannote's PyanNet (SincNet from asteroid-filterbanks, LSTM, linear layers, sigmoid), its
  weights read from whisperx's bundled checkpoint by torch's safe unpickler (`load_segmentation`);
- the sliding window: pyannote's `Inference.slide` and `Inference.aggregate` (5 s windows every `step`
  seconds, the last one zero-padded, frame scores averaged across windows under a Hamming window), with
  whisperx's pre-aggregation hook (the highest of the three speaker scores);
- the binarization: whisperx's `Binarize` (hysteresis, and a region longer than the chunk size cut at its
  lowest score in its second half).
tests/engine/test_vad.py checks that scores and chunks equal pyannote's and whisperx's own on real speech.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from asteroid_filterbanks import Encoder, ParamSincFB
from torch import nn

if TYPE_CHECKING:
    from batch.engine.gpu.sizing import BatchSizer

SAMPLE_RATE = 16_000
SEGMENT_PRECISION = 1e-6  # pyannote.core: a segment no longer than this is empty
BATCH_SIZE = 32  # windows per forward pass, as pyannote's Inference
# SincNet's layers: the sinc filterbank (stride from the checkpoint), then (max-pool, conv) pairs.
SINCNET_KERNELS = (251, 3, 5, 3, 5, 3)
SINCNET_STRIDES_AFTER_FILTERBANK = (3, 1, 3, 1, 3)


@dataclass(frozen=True)
class Frames:
    """pyannote.core's SlidingWindow, the parts used here, with its arithmetic (so results are bit-identical)."""

    start: float
    duration: float
    step: float

    def closest_frame(self, t: float) -> int:
        return int(np.rint((t - self.start - 0.5 * self.duration) / self.step))

    def frames_within(self, end: float) -> int:
        """How many frames a "loose" crop to [start of the audio, end] keeps: frames up to the one holding `end`."""
        return int(np.floor((end - self.start) / self.step)) + 1

    def middles(self, count: int) -> np.ndarray:
        starts = self.start + np.arange(count) * self.step
        return 0.5 * (starts + (starts + self.duration))


@dataclass
class Scores:
    """Scores of consecutive frames: data of shape (frames, classes)."""

    data: np.ndarray
    frames: Frames


class SincNet(nn.Module):
    """pyannote.audio.models.blocks.sincnet.SincNet (module names kept: the checkpoint's keys match)."""

    def __init__(self, stride: int):
        super().__init__()
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        filterbank = ParamSincFB(80, 251, stride=stride, sample_rate=SAMPLE_RATE, min_low_hz=50, min_band_hz=50)
        self.conv1d = nn.ModuleList([Encoder(filterbank), nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)])
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(n, affine=True) for n in (80, 60, 60)])

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        outputs = self.wav_norm1d(waveforms)
        for index, (conv1d, pool1d, norm1d) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d, strict=True)):
            outputs = conv1d(outputs)
            if index == 0:
                outputs = torch.abs(outputs)
            outputs = F.leaky_relu(norm1d(pool1d(outputs)))
        return outputs


class PyanNet(nn.Module):
    """pyannote.audio.models.segmentation.PyanNet, inference only: SincNet > LSTM > linear > classifier."""

    def __init__(self, sincnet: dict[str, Any], lstm: dict[str, Any], linear: dict[str, Any], num_classes: int):
        super().__init__()
        if not lstm.get("monolithic", True):
            raise ValueError("only a monolithic LSTM is supported (whisperx's checkpoint has one)")
        self.stride = int(sincnet.get("stride", 10))
        self.sincnet = SincNet(self.stride)
        lstm_options = {
            key: lstm[key] for key in ("hidden_size", "num_layers", "bidirectional", "dropout") if key in lstm
        }
        self.lstm = nn.LSTM(60, batch_first=True, **lstm_options)
        width = lstm["hidden_size"] * (2 if lstm.get("bidirectional") else 1)
        sizes = [width] + [linear["hidden_size"]] * linear["num_layers"]
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False)])
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(self.sincnet(waveforms).transpose(1, 2))
        for linear in self.linear:
            outputs = F.leaky_relu(linear(outputs))
        return torch.sigmoid(self.classifier(outputs))

    def frames(self) -> Frames:
        """The output frames' duration and step (pyannote's receptive field), starting at 0 as in aggregation."""
        size_of_one, size_of_two = self._receptive_field_size(1), self._receptive_field_size(2)
        return Frames(start=0.0, duration=size_of_one / SAMPLE_RATE, step=(size_of_two - size_of_one) / SAMPLE_RATE)

    def _receptive_field_size(self, num_frames: int) -> int:
        size = num_frames
        strides = (self.stride, *SINCNET_STRIDES_AFTER_FILTERBANK)
        for kernel, stride in reversed(list(zip(SINCNET_KERNELS, strides, strict=True))):
            size = kernel + (size - 1) * stride
        return size


# --- the checkpoint ---------------------------------------------------------------------------------------


class _Record:
    """Stands in for a pyannote class in the checkpoint's metadata: keeps the fields, runs no code."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class _Specifications(_Record):
    pass


class _Introspection(_Record):
    pass


class _Problem(enum.Enum):
    BINARY_CLASSIFICATION = 0
    MONO_LABEL_CLASSIFICATION = 1
    MULTI_LABEL_CLASSIFICATION = 2
    REPRESENTATION = 3
    REGRESSION = 4


class _Resolution(enum.Enum):
    FRAME = 1
    CHUNK = 2


def container_globals() -> list[Any]:
    """The containers and value types a pyannote checkpoint is made of, beside pyannote's own classes."""
    import collections
    import typing

    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.listconfig import ListConfig
    from omegaconf.nodes import AnyNode
    from torch.torch_version import TorchVersion

    return [
        TorchVersion,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        int,
    ]


def _safe_globals() -> list[Any]:
    """What pyannote checkpoints are made of, the pyannote classes by stand-ins under their own names."""
    return [
        (_Problem, "pyannote.audio.core.task.Problem"),
        (_Resolution, "pyannote.audio.core.task.Resolution"),
        (_Specifications, "pyannote.audio.core.task.Specifications"),
        (_Introspection, "pyannote.audio.core.model.Introspection"),
        *container_globals(),
    ]


@dataclass
class Segmentation:
    """The segmentation network and the window it was trained on."""

    net: PyanNet
    window_seconds: float

    def to(self, device: torch.device) -> Segmentation:
        self.net.to(device)
        return self


def load_segmentation(path: str | Path) -> Segmentation:
    """A PyanNet checkpoint, unpickled with torch's safe unpickler (weights_only) and the allowlist above."""
    with torch.serialization.safe_globals(_safe_globals()):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    architecture = checkpoint["pyannote.audio"]["architecture"]
    if architecture.get("class") != "PyanNet":
        raise ValueError(f"{path}: a {architecture.get('class')} checkpoint, not PyanNet")
    specifications = checkpoint["pyannote.audio"]["specifications"]
    problem = getattr(specifications, "problem", None)
    if problem != _Problem.MULTI_LABEL_CLASSIFICATION or getattr(specifications, "powerset_max_classes", None):
        raise ValueError(f"{path}: not a multi-label segmentation model ({problem})")
    if tuple(getattr(specifications, "warm_up", (0.0, 0.0)) or (0.0, 0.0)) != (0.0, 0.0):
        raise ValueError(f"{path}: models with a warm-up are not supported")
    hyper = checkpoint["hyper_parameters"]
    net = PyanNet(hyper["sincnet"], hyper["lstm"], hyper["linear"], num_classes=len(specifications.classes))
    net.load_state_dict(checkpoint["state_dict"])
    return Segmentation(net.eval(), float(specifications.duration))


# --- scores: pyannote's Inference.slide + aggregate ------------------------------------------------------


def speech_scores(model: Segmentation, audio: np.ndarray, step: float, sizer: BatchSizer | None = None) -> Scores:
    """Frame-level speech scores of 16 kHz mono `audio`: pyannote's sliding-window inference with whisperx's
    hook (max over speakers), aggregated with a Hamming window and cropped to the audio, shape (frames, 1).

    With `sizer`, the windows' batches are sized by the process's GPU budget and backed off on out-of-memory, as
    every GPU stage's are; without, BATCH_SIZE windows per forward. Each window's scores are the same either way."""
    device = next(model.net.parameters()).device
    waveform = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
    window, step_size = round(model.window_seconds * SAMPLE_RATE), round(step * SAMPLE_RATE)
    num_samples = waveform.shape[1]
    chunks = waveform.new_zeros((0, 1, window))  # (chunk, channel, sample)
    if num_samples >= window:
        chunks = waveform.unfold(1, window, step_size).permute(1, 0, 2)
    num_chunks = chunks.shape[0]
    has_last_chunk = num_samples < window or (num_samples - window) % step_size > 0
    last = None
    if has_last_chunk:  # the rest of the audio, zero-padded to a window
        rest = waveform[:, num_chunks * step_size :]
        last = F.pad(rest, (0, window - rest.shape[1]))[None]
    outputs = []
    with torch.inference_mode():
        if sizer is not None:
            outputs.append(_scores_under_budget(model.net, chunks, last, device, sizer))
        else:
            for start in range(0, num_chunks, BATCH_SIZE):
                outputs.append(model.net(chunks[start : start + BATCH_SIZE].to(device)).cpu().numpy())
            if last is not None:
                outputs.append(model.net(last.to(device)).cpu().numpy())
    scores = np.max(np.vstack(outputs), axis=-1, keepdims=True)
    windows = Frames(start=0.0, duration=model.window_seconds, step=step)
    aggregated = aggregate(scores, windows, model.net.frames())
    if has_last_chunk:  # drop the frames of the padding
        aggregated.data = aggregated.data[: aggregated.frames.frames_within(num_samples / SAMPLE_RATE)]
    return aggregated


def _scores_under_budget(
    net: PyanNet, chunks: torch.Tensor, last: torch.Tensor | None, device: torch.device, sizer: BatchSizer
) -> np.ndarray:
    """Every window's scores, the padded last one's included, in batches the budget sizes and backs off."""
    from batch.engine.gpu.oom import map_in_batches

    num_chunks = chunks.shape[0]

    def forward(batch: Sequence[int]) -> list[np.ndarray]:
        first, end = batch[0], batch[-1] + 1
        windows = chunks[first : min(end, num_chunks)]
        if end > num_chunks and last is not None:
            windows = torch.cat([windows, last])
        return list(net(windows.to(device)).cpu().numpy())

    count = num_chunks + (last is not None)
    return np.stack(map_in_batches("vad", sizer, list(range(count)), forward).outputs)


def aggregate(scores: np.ndarray, windows: Frames, frames: Frames, epsilon: float = 1e-12) -> Scores:
    """pyannote's `Inference.aggregate` as whisperx's VAD calls it (hamming=True, no warm-up, missing=0):
    the scores of every window (shape (windows, frames per window, classes)) averaged frame by frame."""
    num_chunks, frames_per_chunk, num_classes = scores.shape
    hamming = np.hamming(frames_per_chunk).reshape(-1, 1)
    last = windows.start + windows.duration + (num_chunks - 1) * windows.step + 0.5 * frames.duration
    num_frames = frames.closest_frame(last) + 1
    total = np.zeros((num_frames, num_classes), dtype=np.float32)
    weight = np.zeros((num_frames, num_classes), dtype=np.float32)
    seen = np.zeros((num_frames, num_classes), dtype=np.float32)
    ones = np.ones((frames_per_chunk, 1))  # pyannote's warm-up window, all ones without a warm-up
    for index, score in enumerate(scores):
        mask = 1 - np.isnan(score)
        np.nan_to_num(score, copy=False, nan=0.0)
        first = frames.closest_frame(windows.start + index * windows.step + 0.5 * frames.duration)
        total[first : first + frames_per_chunk] += score * mask * hamming * ones
        weight[first : first + frames_per_chunk] += mask * hamming * ones
        seen[first : first + frames_per_chunk] = np.maximum(seen[first : first + frames_per_chunk], mask)
    average = total / np.maximum(weight, epsilon)
    average[seen == 0.0] = 0.0
    return Scores(average, frames)


# --- regions: whisperx's Binarize -------------------------------------------------------------------------


def speech_regions(scores: Scores, onset: float, offset: float, max_duration: float) -> list[tuple[float, float]]:
    """whisperx's `Binarize(onset, offset, max_duration)` on one score track, as (start, end) pairs in time order:
    speech starts above `onset` and lasts until the score falls below `offset`; a region longer than
    `max_duration` is cut at its lowest score in its second half."""
    track = scores.data[:, 0]
    timestamps = scores.frames.middles(len(track))
    regions: list[tuple[float, float]] = []
    start = float(timestamps[0])
    active = track[0] > onset
    scores_so_far, times_so_far = [track[0]], [start]
    t = start
    for t, y in zip(timestamps[1:].tolist(), track[1:], strict=True):
        if active:
            if t - start > max_duration:
                cut = len(scores_so_far) // 2 + int(np.argmin(scores_so_far[len(scores_so_far) // 2 :]))
                regions.append((start, times_so_far[cut]))
                start = times_so_far[cut]
                scores_so_far, times_so_far = scores_so_far[cut + 1 :], times_so_far[cut + 1 :]
            elif y < offset:
                regions.append((start, t))
                start, active = t, False
                scores_so_far, times_so_far = [], []
            scores_so_far.append(y)
            times_so_far.append(t)
        elif y > onset:
            start, active = t, True
    if active:
        regions.append((start, t))
    return [(start, end) for start, end in regions if end - start > SEGMENT_PRECISION]  # as pyannote.core keeps them
