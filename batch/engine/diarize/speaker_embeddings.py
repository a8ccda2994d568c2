"""Speaker embeddings for pyannote's SpeakerDiarization with one embedding-trunk pass per window.

pyannote's ``SpeakerDiarization.get_embeddings`` runs the whole embedding model once per (window, local
speaker) pair, the speaker's mask being the pooling weights.  For WeSpeaker ResNets only the statistics
pooling and the final linear layer read the mask: fbank and ResNet trunk depend on the waveform alone.  Here
fbank + trunk run once per window (windows batched), then every local speaker's mask is pooled from that
shared trunk output (pyannote issue #2050).  The masks, their interpolation to the trunk's frames, the
pooling code and the linear layer are pyannote's own, so the embeddings match pyannote's up to float
rounding (batching changes the order of some sums).

batch.engine.diarize.diarizer applies it to the pipeline it loads (`use_shared_trunk_embeddings`: this instance's
`get_embeddings` only, no patch of pyannote's class); a pipeline whose embedding model is not a pyannote
WeSpeaker ResNet keeps pyannote's own method. Windows in which no speaker is active skip the trunk: their slots
get what pyannote's pooling of all-zero weights gives (the final layer's bias), as pyannote 4 keeps them for
VBx's assignment. tests/engine/test_speaker_embeddings.py compares embeddings and turns with pyannote's own.
It reads private pyannote 4.0 attributes (`_embedding`, `_audio`, the model's `forward_frames` and
`forward_embedding`): those tests are the check to rerun when pyannote.audio is upgraded.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyannote.audio.core.io import AudioFile
from pyannote.audio.models.embedding.wespeaker import BaseWeSpeakerResNet
from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization
from pyannote.audio.pipelines.speaker_verification import PyannoteAudioPretrainedSpeakerEmbedding
from pyannote.audio.utils.reproducibility import fix_reproducibility
from pyannote.core import SlidingWindowFeature

Hook = Callable[..., Any]

__all__ = [
    "embed_windows",
    "pooling_masks",
    "shared_trunk_embeddings",
    "shared_trunk_embeddings_many",
    "supports_shared_trunk",
    "use_shared_trunk_embeddings",
]


@dataclass(frozen=True)
class _Window:
    item: int  # index of the (file, segmentation) pair it belongs to
    chunk: int  # index of the window in that file's segmentation
    waveform: torch.Tensor  # (1, num_samples)
    masks: np.ndarray  # (num_speakers, num_frames) float32 pooling weights


def supports_shared_trunk(pipeline: SpeakerDiarization) -> bool:
    """Whether the pipeline's embedding model is a pyannote WeSpeaker ResNet (fbank + trunk + pooling)."""
    embedding = getattr(pipeline, "_embedding", None)
    return (
        isinstance(embedding, PyannoteAudioPretrainedSpeakerEmbedding)
        and isinstance(embedding.model_, BaseWeSpeakerResNet)
        and not embedding.model_.fbank_only
    )


def pooling_masks(
    binary_segmentations: SlidingWindowFeature,
    exclude_overlap: bool,
    min_num_frames: int,
) -> np.ndarray:
    """(num_chunks, num_speakers, num_frames) float32: the weights pyannote pools each (window, speaker) with.

    As in ``SpeakerDiarization.get_embeddings``: with ``exclude_overlap``, overlapped frames are zeroed unless
    fewer than ``min_num_frames`` clean frames would be left; NaN (partial stitching) becomes 0.
    """
    return window_masks(binary_segmentations.data, exclude_overlap, min_num_frames)


def window_masks(data: np.ndarray, exclude_overlap: bool, min_num_frames: int) -> np.ndarray:
    """`pooling_masks` of windows given as an array (chunks, frames, speakers): one window at a time keeps a long
    file's masks from being copied whole several times over."""
    if exclude_overlap:
        clean = data * (1.0 * (np.sum(data, axis=2, keepdims=True) < 2))
    else:
        clean = data
        min_num_frames = -1
    masks = np.nan_to_num(data, nan=0.0).astype(np.float32)
    clean_masks = np.nan_to_num(clean, nan=0.0).astype(np.float32)
    use_clean = np.sum(clean_masks, axis=1, keepdims=True) > min_num_frames  # (chunks, 1, speakers)
    return np.ascontiguousarray(np.where(use_clean, clean_masks, masks).transpose(0, 2, 1))


def _min_num_frames(pipeline: SpeakerDiarization, binary_segmentations: SlidingWindowFeature) -> int:
    """Fewest clean frames pyannote accepts before falling back to the whole (overlapped) mask."""
    embedding = pipeline._embedding
    num_frames = binary_segmentations.data.shape[1]
    num_samples = binary_segmentations.sliding_window.duration * embedding.sample_rate
    return math.ceil(num_frames * embedding.min_num_samples / num_samples)


def _active_chunks(segmentations: SlidingWindowFeature) -> np.ndarray:
    """Windows where some local speaker is active (their pooling weights are not all zero: the clean mask is used
    only when it keeps frames); the others need no trunk (see _silent_embedding)."""
    return np.flatnonzero((segmentations.data > 0).any(axis=(1, 2)))


def _windows(
    pipeline: SpeakerDiarization,
    items: Sequence[tuple[AudioFile, SlidingWindowFeature]],
    active: Sequence[np.ndarray],
    exclude_overlap: bool,
) -> Iterator[_Window]:
    """The active windows of every item (`active`: each item's _active_chunks), with their pooling masks."""
    for item, ((file, segmentations), chunks) in enumerate(zip(items, active, strict=True)):
        min_num_frames = _min_num_frames(pipeline, segmentations) if exclude_overlap else -1
        for chunk in chunks:
            waveform, _ = pipeline._audio.crop(file, segmentations.sliding_window[chunk], mode="pad")
            masks = window_masks(segmentations.data[chunk : chunk + 1], exclude_overlap, min_num_frames)[0]
            yield _Window(item, int(chunk), waveform, masks)


def _batches(windows: Iterator[_Window], batch_size: int) -> Iterator[list[_Window]]:
    batch: list[_Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_windows(model: BaseWeSpeakerResNet, waveforms: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """(batch, 1, samples) waveforms, (batch, speakers, frames) masks -> (batch, speakers, dimension).

    fbank + ResNet trunk once per waveform; pyannote's StatsPool then interpolates the masks to the trunk's
    frames ("nearest") and pools each speaker separately, and the linear layer maps the statistics.
    """
    device = next(model.parameters()).device
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as pyannote's PyannoteAudioPretrainedSpeakerEmbedding.__call__
        frames = model.forward_frames(waveforms.to(device))
        embeddings = model.forward_embedding(frames, weights=masks.to(device))
    return embeddings.cpu().numpy()


def _silent_embedding(model: BaseWeSpeakerResNet) -> np.ndarray:
    """(dimension,) embedding of a speaker whose pooling weights are all zero, whatever the window.

    StatsPool gives mean = sum(x * 0) / 1e-8 = 0 and std = 0 for any finite trunk output x, so pyannote's
    embedding of such a slot is the linear layer applied to zero statistics; computed here on zero frames.
    """
    device = next(model.parameters()).device
    frames = torch.zeros(1, model.resnet.pool.in_dim, 1, 1, device=device)  # (batch, channels x freq, 1, time)
    weights = torch.zeros(1, 1, 1, device=device)
    with torch.inference_mode():
        return model.forward_embedding(frames, weights=weights)[0, 0].cpu().numpy()


def shared_trunk_embeddings_many(
    pipeline: SpeakerDiarization,
    items: Sequence[tuple[AudioFile, SlidingWindowFeature]],
    exclude_overlap: bool = False,
    hook: Hook | None = None,
    *,
    window_batch_size: int | None = None,
) -> list[np.ndarray]:
    """Embeddings of several files' windows, batched across files.

    items: (file, binary_segmentations) pairs, each as ``get_embeddings`` takes them.  Returns one
    (num_chunks, num_speakers, dimension) array per item, as ``get_embeddings`` would.
    window_batch_size: windows per trunk pass (default: ``pipeline.embedding_batch_size``, which gives the
    same trunk activation memory as one of pyannote's batches of that many (window, speaker) pairs).
    hook: called like pyannote's ("embeddings", batch_embeddings, total=..., completed=...).
    """
    if not supports_shared_trunk(pipeline):
        raise TypeError("the pipeline's embedding model is not a pyannote WeSpeaker ResNet")
    model: BaseWeSpeakerResNet = pipeline._embedding.model_
    fix_reproducibility(pipeline._embedding.device)  # TF32 off on CUDA, as pyannote's Pipeline.__call__ does
    batch_size = max(1, window_batch_size or pipeline.embedding_batch_size)

    silent = _silent_embedding(model)
    shapes = [(len(segmentations.data), segmentations.data.shape[2]) for _, segmentations in items]
    outputs = [np.tile(silent, (*shape, 1)) for shape in shapes]
    active = [_active_chunks(segmentations) for _, segmentations in items]
    total = math.ceil(sum(len(chunks) for chunks in active) / batch_size)
    if hook is not None:
        hook("embeddings", None, total=total, completed=0)

    for completed, batch in enumerate(_batches(_windows(pipeline, items, active, exclude_overlap), batch_size), 1):
        waveforms = torch.stack([window.waveform for window in batch])
        masks = torch.from_numpy(np.stack([window.masks for window in batch]))
        embeddings = embed_windows(model, waveforms, masks)
        for window, embedding in zip(batch, embeddings, strict=True):
            outputs[window.item][window.chunk] = embedding
        if hook is not None:
            hook("embeddings", embeddings.reshape(-1, model.dimension), total=total, completed=completed)
    return outputs


def shared_trunk_embeddings(
    pipeline: SpeakerDiarization,
    file: AudioFile,
    binary_segmentations: SlidingWindowFeature,
    exclude_overlap: bool = False,
    hook: Hook | None = None,
    *,
    window_batch_size: int | None = None,
) -> np.ndarray:
    """Drop-in for ``pipeline.get_embeddings(file, binary_segmentations, exclude_overlap, hook)``.

    Returns (num_chunks, num_speakers, dimension) float32.  Slots of speakers inactive in a window get what
    pyannote gives them (pooling all-zero weights: the linear layer's bias), never NaN, as in pyannote 4.
    """
    items = [(file, binary_segmentations)]
    return shared_trunk_embeddings_many(pipeline, items, exclude_overlap, hook, window_batch_size=window_batch_size)[0]


def use_shared_trunk_embeddings(
    pipeline: SpeakerDiarization, window_batch_size: int | None = None
) -> SpeakerDiarization:
    """Make this pipeline instance (only) compute embeddings with the shared trunk; returns it.

    Sets an instance attribute ``get_embeddings`` that shadows the class's method; ``del
    pipeline.get_embeddings`` undoes it.  window_batch_size None: follow ``pipeline.embedding_batch_size`` at
    each call (the project sets it per file).
    """
    if not isinstance(pipeline, SpeakerDiarization):
        raise TypeError(f"expected a pyannote SpeakerDiarization pipeline, got {type(pipeline).__name__}")
    if not supports_shared_trunk(pipeline):
        raise TypeError("the pipeline's embedding model is not a pyannote WeSpeaker ResNet")

    def get_embeddings(
        self: SpeakerDiarization,
        file: AudioFile,
        binary_segmentations: SlidingWindowFeature,
        exclude_overlap: bool = False,
        hook: Hook | None = None,
    ) -> np.ndarray:
        # Hyper-parameter tuning (training mode) reuses embeddings across trials: pyannote's method owns that cache.
        if self.training:
            return SpeakerDiarization.get_embeddings(self, file, binary_segmentations, exclude_overlap, hook)
        return shared_trunk_embeddings(
            self, file, binary_segmentations, exclude_overlap, hook, window_batch_size=window_batch_size
        )

    pipeline.get_embeddings = types.MethodType(get_embeddings, pipeline)
    return pipeline
