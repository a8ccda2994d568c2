"""Word timings as `whisperx.align` gives them, in three steps so that the wav2vec2 forwards can be run apart:

(a) `prepare_alignment`: each segment's cleaned characters, sentence spans and audio slice;
(b) the model forward (batch.engine.align.forwards);
(c) `align_segments`: the trellis and backtrack (batch.engine.align.trellis), then the characters, words and
    sentences assembled as whisperx's pandas code does, without pandas.

The three chained give what `whisperx.align` returns, value for value and type for type (checked from the tests'
side: tests/engine/test_word_timing.py, through tests/engine/whisperx_reference.py). Besides the vectorised
trellis, two costs of whisperx's are gone: its sentence splitter is loaded once per language, not once per
segment (~22 ms each), and its ~8 ms of pandas per segment.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from batch.engine.align.trellis import CharSpan, char_spans_batch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
LANGUAGES_WITHOUT_SPACES = ("ja", "zh")

Emission = np.ndarray | torch.Tensor
ProgressCallback = Callable[[float], None] | None


# --------------------------------------------------------------------------------------------------
# (a) Preparation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentPlan:
    """What alignment needs of one transcript segment before the model runs."""

    text_clean: str  # lowercased characters to align ('|' for spaces), unknown ones kept (wildcards)
    clean_cdx: list[int]  # index in the segment text of each clean character
    sentence_spans: list[tuple[int, int]]
    samples: tuple[int, int] | None  # audio[:, f1:f2] to run the model on; None: not alignable
    skip_warning: str | None = None


@functools.cache
def _sentence_splitter(punkt_lang: str) -> Any:
    import nltk
    from nltk.data import load as nltk_load

    try:
        return nltk_load(f"tokenizers/punkt_tab/{punkt_lang}.pickle")
    except LookupError:
        nltk.download("punkt_tab", quiet=True)
        return nltk_load(f"tokenizers/punkt_tab/{punkt_lang}.pickle")


def _clean_chars(text: str, dictionary: dict[str, int], spaced: bool) -> tuple[list[str], list[int]]:
    num_leading = len(text) - len(text.lstrip())
    num_trailing = len(text) - len(text.rstrip())
    clean_char, clean_cdx = [], []
    for cdx, char in enumerate(text):
        if cdx < num_leading or cdx > len(text) - num_trailing - 1:
            continue
        char_ = char.lower()
        if spaced:
            char_ = char_.replace(" ", "|")
        # known characters, and unknown ones (digits, symbols...: wildcards), but never a space
        if char_ in dictionary or char_ not in (" ", "|"):
            clean_char.append(char_)
            clean_cdx.append(cdx)
    return clean_char, clean_cdx


def prepare_alignment(
    transcript: Sequence[dict[str, Any]], metadata: dict[str, Any], num_samples: int
) -> list[SegmentPlan]:
    """Step (a): one plan per segment; `num_samples` is the audio's length at 16 kHz."""
    from whisperx.utils import PUNKT_LANGUAGES

    dictionary = metadata["dictionary"]
    language = metadata["language"]
    spaced = language not in LANGUAGES_WITHOUT_SPACES
    splitter = _sentence_splitter(PUNKT_LANGUAGES.get(language, "english"))
    max_duration = num_samples / SAMPLE_RATE
    plans = []
    for segment in transcript:
        text = segment["text"]
        clean_char, clean_cdx = _clean_chars(text, dictionary, spaced)
        spans = list(splitter.span_tokenize(text))
        samples, warning = None, None
        if not clean_char:
            warning = (
                f'Failed to align segment ("{text}"): no characters in this segment found in model '
                "dictionary, resorting to original"
            )
        elif segment["start"] >= max_duration:
            warning = f'Failed to align segment ("{text}"): original start time longer than audio duration, skipping'
        else:
            samples = (int(segment["start"] * SAMPLE_RATE), int(segment["end"] * SAMPLE_RATE))
        plans.append(SegmentPlan("".join(clean_char), clean_cdx, spans, samples, warning))
    return plans


# --------------------------------------------------------------------------------------------------
# (c) Alignment from emissions, and assembly of words and sentences
# --------------------------------------------------------------------------------------------------


def blank_id_of(dictionary: dict[str, int]) -> int:
    blank_id = 0
    for char, code in dictionary.items():
        if char in ("[pad]", "<pad>"):
            blank_id = code
    return blank_id


def tokens_for(
    emission: np.ndarray, text_clean: str, dictionary: dict[str, int], blank_id: int
) -> tuple[np.ndarray, list[int]]:
    """(emission, tokens); characters missing from the vocabulary map to an extra wildcard column
    holding each frame's best non-blank log-probability."""
    if all(c in dictionary for c in text_clean):
        return emission, [dictionary[c] for c in text_clean]
    wildcard = np.delete(emission, blank_id, axis=1).max(axis=1)
    emission = np.concatenate([emission, wildcard[:, None]], axis=1)
    wildcard_id = emission.shape[1] - 1
    return emission, [dictionary.get(c, wildcard_id) for c in text_clean]


def _as_numpy(emission: Emission) -> np.ndarray:
    if torch.is_tensor(emission):
        emission = emission.detach().cpu().numpy()
    return np.asarray(emission, dtype=np.float32)


@dataclass
class _Chars:
    """Per character of the segment text: times, score (NaN when unaligned), word index."""

    starts: list[float]
    ends: list[float]
    scores: list[float]
    word_idx: list[int]


def _char_table(text: str, plan: SegmentPlan, spans: list[CharSpan], t1: Any, ratio: Any, spaced: bool) -> _Chars:
    nan = float("nan")
    span_of = {cdx: k for k, cdx in reversed(list(enumerate(plan.clean_cdx)))}  # first index, as list.index
    starts, ends, scores, word_idx = [], [], [], []
    word = 0
    for cdx in range(len(text)):
        k = span_of.get(cdx)
        if k is None:
            start = end = score = nan
        else:
            span = spans[k]
            start, end, score = round(span.start * ratio + t1, 3), round(span.end * ratio + t1, 3), round(span.score, 3)
        starts.append(start)
        ends.append(end)
        scores.append(score)
        word_idx.append(word)
        if not spaced or cdx == len(text) - 1 or text[cdx + 1] == " ":
            word += 1
    return _Chars(starts, ends, scores, word_idx)


def _nanmin(values: list[float]) -> float:
    valid = [v for v in values if v == v]
    return min(valid) if valid else float("nan")


def _nanmax(values: list[float]) -> float:
    valid = [v for v in values if v == v]
    return max(valid) if valid else float("nan")


def _nanmean(values: list[float]) -> Any:
    """pandas' Series.mean (no bottleneck): NaN -> 0, numpy's (pairwise) sum, / count of non-NaN."""
    array = np.array(values, dtype=np.float64)
    missing = np.isnan(array)
    count = np.float64(len(values) - int(missing.sum()))
    if missing.any():
        array[missing] = 0
    return array.sum() / count if count > 0 else np.nan


def _words(text: str, chars: _Chars, rows: range) -> list[dict[str, Any]]:
    words = []
    for _, group in itertools.groupby(rows, key=chars.word_idx.__getitem__):
        cols = list(group)
        word_text = "".join(text[i] for i in cols).strip()
        if not word_text:
            continue
        cols = [i for i in cols if text[i] != " "]
        word_start = _nanmin([chars.starts[i] for i in cols])
        word_end = _nanmax([chars.ends[i] for i in cols])
        word_score = round(_nanmean([chars.scores[i] for i in cols]), 3)
        word: dict[str, Any] = {"word": word_text}
        # pandas' min/max of a float64 column are np.float64
        if not np.isnan(word_start):
            word["start"] = np.float64(word_start)
        if not np.isnan(word_end):
            word["end"] = np.float64(word_end)
        if not np.isnan(word_score):
            word["score"] = word_score
        words.append(word)
    return words


def _interpolate_words(words: list[dict[str, Any]], method: str) -> None:
    """Times for words with no aligned character (whisperx's pandas code, only run when needed)."""
    import pandas as pd
    from whisperx.utils import interpolate_nans

    starts = pd.Series([w.get("start", np.nan) for w in words])
    ends = pd.Series([w.get("end", np.nan) for w in words])
    if not (starts.isna().any() and starts.notna().any()):
        return
    starts = interpolate_nans(starts, method=method)
    ends = interpolate_nans(ends, method=method)
    for i, w in enumerate(words):
        if "start" not in w and pd.notna(starts.iloc[i]):
            w["start"] = starts.iloc[i]
        if "end" not in w and pd.notna(ends.iloc[i]):
            w["end"] = ends.iloc[i]


def _char_records(text: str, chars: _Chars, rows: range) -> list[dict[str, Any]]:
    """return_char_alignments: NaN (and, as in whisperx, -1) values left out, plain floats."""
    records = []
    for i in rows:
        record: dict[str, Any] = {"char": text[i]}
        for key, value in (("start", chars.starts[i]), ("end", chars.ends[i]), ("score", chars.scores[i])):
            if value == value and value != -1:
                record[key] = float(value)
        records.append(record)
    return records


def _interpolate_times(values: list[float], method: str) -> list[float]:
    if all(v == v for v in values):
        return values
    import pandas as pd
    from whisperx.utils import interpolate_nans

    return interpolate_nans(pd.Series(values, dtype=np.float64), method=method).tolist()


def _box(value: Any) -> Any:
    """What DataFrame.to_dict gives back for a scalar (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _merge_sentences(
    sentences: list[dict[str, Any]], spaced: bool, return_char_alignments: bool, avg_logprob: Any
) -> list[dict[str, Any]]:
    """groupby(["start", "end"]).agg(...).to_dict("records"): NaN keys dropped, sorted by (start, end),
    sentences with the same times merged."""
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for sentence in sentences:
        start, end = sentence["start"], sentence["end"]
        if start == start and end == end:
            groups.setdefault((start, end), []).append(sentence)
    joiner = " " if spaced else ""
    merged = []
    for (start, end), members in sorted(groups.items(), key=lambda item: item[0]):
        record: dict[str, Any] = {
            "start": float(start),
            "end": float(end),
            "text": joiner.join(m["text"] for m in members),
            "words": [word for m in members for word in m["words"]],
        }
        if return_char_alignments:
            record["chars"] = [char for m in members for char in m["chars"]]
        if avg_logprob is not None:
            firsts = [v for m in members if (v := m["avg_logprob"]) == v]  # "first": first non-NaN
            record["avg_logprob"] = _box(firsts[0] if firsts else np.nan)
        merged.append(record)
    return merged


def _assemble(
    segment: dict[str, Any],
    plan: SegmentPlan,
    spans: list[CharSpan],
    num_frames: int,
    spaced: bool,
    interpolate_method: str,
    return_char_alignments: bool,
) -> list[dict[str, Any]]:
    t1, t2, text = segment["start"], segment["end"], segment["text"]
    avg_logprob = segment.get("avg_logprob")
    # whisperx: duration * waveform_segment.size(0) / (trellis.size(0) - 1), size(0) being the batch (1)
    ratio = (t2 - t1) * 1 / num_frames
    chars = _char_table(text, plan, spans, t1, ratio, spaced)
    sentences = []
    for sstart, send in plan.sentence_spans:
        rows = range(sstart, min(send, len(text) - 1) + 1)  # both ends included, as whisperx selects
        words = _words(text, chars, rows)
        if words:
            _interpolate_words(words, interpolate_method)
        sentence: dict[str, Any] = {
            "text": text[sstart:send],
            "start": _nanmin([chars.starts[i] for i in rows]),
            "end": _nanmax([chars.ends[i] for i in rows if text[i] != " "]),
            "words": words,
        }
        if avg_logprob is not None:
            sentence["avg_logprob"] = avg_logprob
        if return_char_alignments:
            sentence["chars"] = _char_records(text, chars, rows)
        sentences.append(sentence)
    starts = _interpolate_times([s["start"] for s in sentences], interpolate_method)
    ends = _interpolate_times([s["end"] for s in sentences], interpolate_method)
    for sentence, start, end in zip(sentences, starts, ends, strict=True):
        sentence["start"], sentence["end"] = start, end
    return _merge_sentences(sentences, spaced, return_char_alignments, avg_logprob)


def _unaligned(segment: dict[str, Any], return_char_alignments: bool) -> dict[str, Any]:
    kept: dict[str, Any] = {
        "start": segment["start"],
        "end": segment["end"],
        "text": segment["text"],
        "words": [],
        "chars": [] if return_char_alignments else None,
    }
    if segment.get("avg_logprob") is not None:
        kept["avg_logprob"] = segment["avg_logprob"]
    return kept


def align_segments(
    transcript: Sequence[dict[str, Any]],
    plans: Sequence[SegmentPlan],
    emissions: Sequence[Emission | None],
    metadata: dict[str, Any],
    interpolate_method: str = "nearest",
    return_char_alignments: bool = False,
    progress_callback: ProgressCallback = None,
) -> dict[str, list[dict[str, Any]]]:
    """Step (c): whisperx.align's result from each segment's log-probabilities [frames, vocab]
    (None where ``plans[i].samples`` is None)."""
    dictionary = metadata["dictionary"]
    spaced = metadata["language"] not in LANGUAGES_WITHOUT_SPACES
    blank_id = blank_id_of(dictionary)
    alignable = [sdx for sdx, plan in enumerate(plans) if plan.samples is not None]
    inputs = {}
    for sdx in alignable:
        emission = emissions[sdx]
        assert emission is not None, f"segment {sdx} is alignable but has no emission"
        inputs[sdx] = tokens_for(_as_numpy(emission), plans[sdx].text_clean, dictionary, blank_id)
    found = char_spans_batch([inputs[s][0] for s in alignable], [inputs[s][1] for s in alignable], blank_id)
    spans_of = dict(zip(alignable, found, strict=True))
    aligned: list[dict[str, Any]] = []
    for sdx, (segment, plan) in enumerate(zip(transcript, plans, strict=True)):
        if plan.samples is None:
            log.warning("%s", plan.skip_warning)
            aligned.append(_unaligned(segment, return_char_alignments))
            continue
        spans = spans_of[sdx]
        if spans is None:
            log.warning('Failed to align segment ("%s"): backtrack failed, resorting to original', segment["text"])
            aligned.append(_unaligned(segment, return_char_alignments))
            continue
        num_frames = inputs[sdx][0].shape[0]
        aligned += _assemble(segment, plan, spans, num_frames, spaced, interpolate_method, return_char_alignments)
        if progress_callback is not None:
            progress_callback(((sdx + 1) / len(transcript)) * 100)
    word_segments = [word for segment in aligned for word in segment["words"]]
    return {"segments": aligned, "word_segments": word_segments}
