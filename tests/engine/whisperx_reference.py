"""whisperx's alignment interface on top of the engine's pieces, for the tests that compare them with whisperx 3.8.6.

The engine takes decoded arrays and runs the three steps of alignment itself (batch.engine.align.aligner.time_words);
whisperx's functions take more forms and report progress. These give the engine's answers under whisperx's own
signatures, so that a test can call both alike: `align` for `whisperx.alignment.align`, and `get_trellis`,
`trellis_path(s)` and `char_spans` for its `get_trellis`, `backtrack` and `merge_repeats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from batch.engine.align import forwards, words
from batch.engine.align.trellis import (
    MAX_BATCH_CELLS,
    CharSpan,
    _Batch,
    _Path,
    _paths,
    _Problem,
    char_spans_batch,
)

Point = tuple[int, int, float]  # the fields of whisperx's Point, in order: token_index, time_index, score


def align(
    transcript: Sequence[dict[str, Any]],
    model: torch.nn.Module,
    align_model_metadata: dict[str, Any],
    audio: str | np.ndarray | torch.Tensor,
    device: str,
    interpolate_method: str = "nearest",
    return_char_alignments: bool = False,
    print_progress: bool = False,
    combined_progress: bool = False,
    progress_callback: Callable[[float], None] | None = None,
    batch_size: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """whisperx.align's arguments, the engine's steps: a path is decoded with whisperx's load_audio, and the
    progress lines whisperx prints while it prepares each segment are printed the same."""
    if isinstance(audio, str):
        from whisperx.audio import load_audio

        audio = load_audio(audio)
    tensor = forwards.audio_tensor(audio)
    if print_progress:
        for sdx in range(len(transcript)):
            base_progress = ((sdx + 1) / len(transcript)) * 100
            percent_complete = (50 + base_progress / 2) if combined_progress else base_progress
            print(f"Progress: {percent_complete:.2f}%...")
    plans = words.prepare_alignment(transcript, align_model_metadata, tensor.shape[1])
    emissions = forwards.segment_emissions(model, align_model_metadata["type"], tensor, plans, device, batch_size)
    return words.align_segments(
        transcript,
        plans,
        emissions,
        align_model_metadata,
        interpolate_method=interpolate_method,
        return_char_alignments=return_char_alignments,
        progress_callback=progress_callback,
    )


def get_trellis(emission: np.ndarray, tokens: Sequence[int], blank_id: int = 0) -> np.ndarray:
    """whisperx.alignment.get_trellis(emission, tokens, blank_id).numpy(), for a float32 emission."""
    batch = _Batch.of([_Problem.of(emission, tokens, blank_id)])
    batch.fill()
    return np.ascontiguousarray(batch.trellis_of(0))


def _points(path: _Path) -> list[Point]:
    lengths = np.diff([*path.starts, path.stop])
    token_of_frame = np.repeat(np.arange(len(path.starts)), lengths).tolist()
    return list(zip(token_of_frame, range(path.starts[0], path.stop), path.probs, strict=True))


def trellis_path(emission: np.ndarray, tokens: Sequence[int], blank_id: int = 0) -> list[Point] | None:
    """whisperx's get_trellis + backtrack: one Point per frame of the path, or None where its backtrack fails."""
    path = _paths([_Problem.of(emission, tokens, blank_id)])[0]
    return None if path is None else _points(path)


def trellis_paths(
    emissions: Sequence[np.ndarray],
    token_lists: Sequence[Sequence[int]],
    blank_id: int = 0,
    max_cells: int = MAX_BATCH_CELLS,
) -> list[list[Point] | None]:
    """trellis_path of many segments, their trellises filled together."""
    problems = [_Problem.of(e, t, blank_id) for e, t in zip(emissions, token_lists, strict=True)]
    return [None if p is None else _points(p) for p in _paths(problems, max_cells)]


def char_spans(emission: np.ndarray, tokens: Sequence[int], blank_id: int = 0) -> list[CharSpan] | None:
    """get_trellis + backtrack + merge_repeats: one (start, end, score) per token, or None."""
    return char_spans_batch([emission], [tokens], blank_id)[0]
