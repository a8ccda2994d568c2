"""The wav2vec2 forwards of alignment: each alignable segment's log-probabilities [frames, vocab], step (b) between
`batch.engine.align.words`' preparation and assembly.

At batch size 1 each segment runs alone, exactly as whisperx runs it (the emissions, and so the timings, are then
bit for bit whisperx's); larger batches are formed only where they leave each segment's frames as its own forward
computes them (`segment_emissions`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from batch.engine.align.words import SegmentPlan

MIN_INPUT_SAMPLES = 400  # wav2vec2's shortest input: whisperx zero-pads shorter slices to this


def audio_tensor(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[1, samples] tensor, as whisperx.align makes it."""
    if not torch.is_tensor(audio):
        audio = torch.from_numpy(audio)
    if len(audio.shape) == 1:
        audio = audio.unsqueeze(0)
    return audio


def segment_waveform(audio: torch.Tensor, plan: SegmentPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model input for an alignable segment: audio[:, f1:f2] zero-padded to 400 samples, and the
    true length where it was padded (only torchaudio models take it)."""
    assert plan.samples is not None
    f1, f2 = plan.samples
    waveform = audio[:, f1:f2]
    if waveform.shape[-1] < MIN_INPUT_SAMPLES:
        lengths = torch.as_tensor([waveform.shape[-1]])
        return torch.nn.functional.pad(waveform, (0, MIN_INPUT_SAMPLES - waveform.shape[-1])), lengths
    return waveform, None


def segment_emission(
    model: torch.nn.Module, model_type: str, waveform: torch.Tensor, lengths: torch.Tensor | None, device: str
) -> np.ndarray:
    """[frames, vocab] float32 log-probabilities of one segment."""
    with torch.inference_mode():
        if model_type == "torchaudio":
            emissions, _ = model(waveform.to(device), lengths=None if lengths is None else lengths.to(device))
        elif model_type == "huggingface":
            emissions = model(waveform.to(device)).logits
        else:
            raise NotImplementedError(f"Align model of type {model_type} not supported.")
        emissions = torch.log_softmax(emissions, dim=-1)
    return emissions[0].cpu().detach().numpy()


def segment_emissions(
    model: torch.nn.Module,
    model_type: str,
    audio: torch.Tensor,
    plans: Sequence[SegmentPlan],
    device: str,
    batch_size: int = 1,
) -> list[np.ndarray | None]:
    """Step (b) for every alignable segment (None for the others). At `batch_size` 1, whisperx's forward, one
    segment at a time. Larger batches are formed only where each segment's frames stay what its own forward
    computes, up to float rounding: a Hugging Face model whose feature encoder normalises each frame (layer norm:
    the XLSR models most languages use) reads a padded batch with an attention mask; one that normalises each
    channel over the whole input (group norm: wav2vec2-base, whisperx's English default) would see the padding,
    so only segments of the same length share its batches; torchaudio models run one segment at a time."""
    emissions: list[np.ndarray | None] = [None] * len(plans)
    alignable = [i for i, plan in enumerate(plans) if plan.samples is not None]
    for group in forward_groups(model, model_type, plans, alignable, batch_size, audio.shape[-1]):
        if len(group) == 1:
            emissions[group[0]] = segment_emission(model, model_type, *segment_waveform(audio, plans[group[0]]), device)
            continue
        for i, emission in zip(group, batched_emissions(model, audio, [plans[i] for i in group], device), strict=True):
            emissions[i] = emission
    return emissions


def frame_normalised(model: torch.nn.Module) -> bool:
    """Whether a Hugging Face wav2vec2 model's feature encoder normalises per frame (and so takes a padded batch)."""
    return getattr(getattr(model, "config", None), "feat_extract_norm", None) == "layer"


def forward_groups(
    model: torch.nn.Module,
    model_type: str,
    plans: Sequence[SegmentPlan],
    alignable: list[int],
    batch_size: int,
    num_samples: int,
) -> list[list[int]]:
    """Segments (indices into `plans`) run together: longest first, so that a batch pads little."""
    if batch_size <= 1 or model_type != "huggingface":
        return [[i] for i in alignable]

    def length(i: int) -> int:
        """The model input's length: the slice as the audio holds it (a segment may end past it), padded to 400."""
        f1, f2 = plans[i].samples  # type: ignore[misc]
        return max(min(f2, num_samples) - f1, MIN_INPUT_SAMPLES)

    ordered = sorted(alignable, key=length, reverse=True)
    # A frame-normalised model takes any lengths together (padded, masked); the others only equal ones.
    alike = (lambda i: 0) if frame_normalised(model) else length
    groups: list[list[int]] = []
    for _, same in itertools.groupby(ordered, key=alike):
        members = list(same)
        groups += [members[start : start + batch_size] for start in range(0, len(members), batch_size)]
    return groups


def batched_emissions(
    model: torch.nn.Module, audio: torch.Tensor, plans: Sequence[SegmentPlan], device: str
) -> list[np.ndarray]:
    """One padded forward of a Hugging Face model over several segments; each segment's own frames back."""
    waveforms = [segment_waveform(audio, plan)[0][0] for plan in plans]
    lengths = torch.as_tensor([waveform.shape[-1] for waveform in waveforms])
    batch = torch.zeros(len(waveforms), int(lengths.max()), dtype=waveforms[0].dtype)
    mask = torch.zeros(batch.shape, dtype=torch.long)
    for row, waveform in enumerate(waveforms):
        batch[row, : waveform.shape[-1]] = waveform
        mask[row, : waveform.shape[-1]] = 1
    with torch.inference_mode():
        attention = {"attention_mask": mask.to(device)} if frame_normalised(model) else {}
        log_probs = torch.log_softmax(model(batch.to(device), **attention).logits, dim=-1).cpu()
    frames = model._get_feat_extract_output_lengths(lengths)
    return [log_probs[row, : int(frames[row])].numpy() for row in range(len(waveforms))]
