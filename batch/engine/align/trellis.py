"""whisperx's forced alignment of one segment's characters to its wav2vec2 frames, vectorised.

The trellis is whisperx's (from the torchaudio tutorial), which is not standard CTC: each frame stays on a token
(scored with the blank) or moves to the next token, no blank is forced between repeats, the last `len(tokens)`
rows of column 0 are +inf, and the backtrack starts from the best final frame. whisperx fills it with a Python
loop of torch operations and walks it back frame by frame in Python; here it is filled with one numpy operation
per frame over all tokens (and over all the segments of a batch), every element going through the same float32
operations as torch's, so the trellis is bit-for-bit equal. The backtrack's test ("changed > stayed") is the
fill's own comparison, kept per cell; the path is then read off per token (the latest change before the current
frame), not per frame. tests/engine/test_word_timing.py checks trellises, paths, spans and whole alignments
against whisperx's own functions (through tests/engine/whisperx_reference.py, whisperx's interface on these).

Only float32 emissions are reproduced exactly (what whisperx's float32 alignment models give): other dtypes are
converted to float32 first, whereas whisperx would run its trellis on them as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CharSpan:
    """One token's frames on the path: [start, end) and its mean frame probability (merge_repeats)."""

    start: int
    end: int
    score: float


@dataclass(frozen=True)
class _Path:
    starts: list[int]  # first frame of each token
    stop: int  # one past the last frame of the last token (whisperx's argmax row of the last column)
    probs: list[float]  # exp(log-prob) of each frame from starts[0] to stop - 1


@dataclass(frozen=True)
class _Problem:
    """One segment's trellis inputs, as contiguous float32 copies."""

    blank: np.ndarray  # [F] log-prob of the blank
    token_cols: np.ndarray  # [F, N] log-prob of each token

    @classmethod
    def of(cls, emission: np.ndarray, tokens: Sequence[int], blank_id: int) -> _Problem:
        emission = np.asarray(emission, dtype=np.float32)
        blank = np.ascontiguousarray(emission[:, blank_id])
        token_cols = np.ascontiguousarray(emission[:, np.asarray(tokens, dtype=np.intp)])
        return cls(blank, token_cols)


#: trellis cells filled together at most: 2**22 -> 16 MiB of float32, ~60 MiB with inputs and decisions
MAX_BATCH_CELLS = 2**22


def _init_edges(trellis: np.ndarray, blank: np.ndarray) -> None:
    """Row 0 and column 0, statement for statement as whisperx's get_trellis (on a view)."""
    num_tokens = trellis.shape[1] - 1
    trellis[0, 0] = 0
    # torch's CPU cumsum accumulates float32 in double, then rounds each partial sum to float32.
    trellis[1:, 0] = np.cumsum(blank, dtype=np.float64).astype(np.float32)
    # The same slices on purpose: "-num_tokens:" clips, and means "all" when num_tokens == 0.
    trellis[0, -num_tokens:] = -np.inf
    trellis[-num_tokens:, 0] = np.inf


@dataclass
class _Batch:
    """Problems padded to one shape, laid out [frame, problem, token] so that a frame is one block.

    Padding never leaks into a problem's own cells: cell (t, j) depends on cells (<= t, <= j) only."""

    problems: Sequence[_Problem]
    blank: np.ndarray  # [F, S, 1]
    token_cols: np.ndarray  # [F, S, N]
    trellis: np.ndarray  # [F + 1, S, N + 1]

    @classmethod
    def of(cls, problems: Sequence[_Problem]) -> _Batch:
        num_frames = max(p.token_cols.shape[0] for p in problems)
        num_tokens = max(p.token_cols.shape[1] for p in problems)
        size = len(problems)
        blank = np.zeros((num_frames, size, 1), dtype=np.float32)
        token_cols = np.zeros((num_frames, size, num_tokens), dtype=np.float32)
        trellis = np.empty((num_frames + 1, size, num_tokens + 1), dtype=np.float32)
        trellis[0] = 0
        trellis[:, :, 0] = 0
        for i, problem in enumerate(problems):
            frames, tokens = problem.token_cols.shape
            blank[:frames, i, 0] = problem.blank
            token_cols[:frames, i, :tokens] = problem.token_cols
            _init_edges(trellis[: frames + 1, i, : tokens + 1], problem.blank)
        return cls(problems, blank, token_cols, trellis)

    def fill(self) -> np.ndarray:
        """whisperx's get_trellis loop, one numpy op per frame over every problem and token.
        Returns the backtrack's test "changed > stayed" [F, S, N] (the same float32 values)."""
        size, num_tokens = self.token_cols.shape[1:]
        stay = np.empty((size, num_tokens), dtype=np.float32)
        change = np.empty((size, num_tokens), dtype=np.float32)
        changed = np.empty(self.token_cols.shape, dtype=bool)
        trellis = self.trellis
        rows = zip(
            trellis[:-1, :, 1:],
            trellis[:-1, :, :-1],
            self.blank,
            self.token_cols,
            trellis[1:, :, 1:],
            changed,
            strict=True,
        )
        with np.errstate(invalid="ignore"):  # inf + -inf: NaN, as in torch
            for tail, head, blank_t, tokens_t, following, changed_t in rows:
                np.add(tail, blank_t, out=stay)
                np.add(head, tokens_t, out=change)
                np.maximum(stay, change, out=following)
                np.greater(change, stay, out=changed_t)
        return changed

    def trellis_of(self, i: int) -> np.ndarray:
        frames, tokens = self.problems[i].token_cols.shape
        return self.trellis[: frames + 1, i, : tokens + 1]

    @staticmethod
    def last_changes(changed: np.ndarray) -> np.ndarray:
        """[F, S, N] int32: the latest frame <= f where the backtrack, on token k, moves to k - 1, else -1."""
        frames = np.arange(changed.shape[0], dtype=np.int32)[:, None, None]
        last = np.where(changed, frames, np.int32(-1))
        return np.maximum.accumulate(last, axis=0, out=last)

    def paths(self) -> list[_Path | None]:
        last = self.last_changes(self.fill())
        return [_backtrack(self.trellis_of(i), last[:, i, :], p) for i, p in enumerate(self.problems)]


def _backtrack(trellis: np.ndarray, last_change: np.ndarray, problem: _Problem) -> _Path | None:
    """whisperx's backtrack, read off per token instead of per frame."""
    num_frames, num_tokens = problem.token_cols.shape
    stop = int(np.argmax(trellis[:, num_tokens]))  # first maximum, NaN counting as maximum: like torch
    if num_tokens == 0 or num_frames == 0:
        return None
    starts = [0] * num_tokens
    t = stop
    for k in range(num_tokens - 1, -1, -1):
        if t == 0:
            return None  # ran out of frames before reaching the first token
        t = last_change.item(t - 1, k)
        if t < 0:
            return None
        starts[k] = t
    first = starts[0]
    values = problem.blank[first:stop].copy()  # a frame staying on its token scores the blank,
    values[np.asarray(starts) - first] = problem.token_cols[starts, np.arange(num_tokens)]  # one entering it, the token
    # torch's exp, not numpy's: they differ in the last bit for many float32 inputs.
    probs = torch.from_numpy(values).exp().tolist()
    return _Path(starts, stop, probs)


def _batches(problems: Sequence[_Problem], max_cells: int) -> list[list[int]]:
    """Indices of problems grouped by size (little padding), each group within max_cells."""
    order = sorted(range(len(problems)), key=lambda i: problems[i].token_cols.shape, reverse=True)
    batches: list[list[int]] = []
    frames = widest = 0
    for i in order:
        tokens = problems[i].token_cols.shape[1]
        if batches and (len(batches[-1]) + 1) * (frames + 1) * (max(widest, tokens) + 1) <= max_cells:
            batches[-1].append(i)
            widest = max(widest, tokens)
        else:
            batches.append([i])
            frames, widest = problems[i].token_cols.shape
    return batches


def _paths(problems: Sequence[_Problem], max_cells: int = MAX_BATCH_CELLS) -> list[_Path | None]:
    paths: list[_Path | None] = [None] * len(problems)
    for batch in _batches(problems, max_cells):
        for i, path in zip(batch, _Batch.of([problems[i] for i in batch]).paths(), strict=True):
            paths[i] = path
    return paths


def _char_spans(path: _Path) -> list[CharSpan]:
    """whisperx.alignment.merge_repeats, one span per token (each token holds >= 1 frame)."""
    first = path.starts[0]
    spans = []
    for start, end in itertools.pairwise([*path.starts, path.stop]):
        # Python's left-to-right sum, like merge_repeats (numpy would sum pairwise)
        score = sum(path.probs[start - first : end - first]) / (end - start)
        spans.append(CharSpan(start, end, score))
    return spans


def char_spans_batch(
    emissions: Sequence[np.ndarray],
    token_lists: Sequence[Sequence[int]],
    blank_id: int = 0,
    max_cells: int = MAX_BATCH_CELLS,
) -> list[list[CharSpan] | None]:
    """char_spans of many segments, their trellises filled together (same results)."""
    problems = [_Problem.of(e, t, blank_id) for e, t in zip(emissions, token_lists, strict=True)]
    return [None if p is None else _char_spans(p) for p in _paths(problems, max_cells)]
