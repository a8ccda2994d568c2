"""Word timings as `whisperx.align` gives them, in three steps so that the wav2vec2 forwards can be run apart:

(a) `prepare_alignment`: each segment's cleaned characters, sentence spans and audio slice;
(b) the model forward: `segment_waveform` + `segment_emission` exactly as whisperx runs it, one segment at a
    time (the emissions, and so the timings, are then bit for bit whisperx's);
(c) `align_segments`: the trellis and backtrack (batch.engine.align.trellis), then the characters, words and
    sentences assembled as whisperx's pandas code does, without pandas.

`align` chains the three and returns what `whisperx.align` returns, value for value and type for type (checked
in tests/engine/test_word_timing.py). Besides the vectorised trellis, two costs of whisperx's are gone: its
sentence splitter is loaded once per language, not once per segment (~22 ms each), and its ~8 ms of pandas per
segment.
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
MIN_INPUT_SAMPLES = 400  # wav2vec2's shortest input: whisperx zero-pads shorter slices to this
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
    transcript: Sequence[dict[str, Any]],
    metadata: dict[str, Any],
    num_samples: int,
    print_progress: bool = False,
    combined_progress: bool = False,
) -> list[SegmentPlan]:
    """Step (a): one plan per segment; `num_samples` is the audio's length at 16 kHz."""
    from whisperx.utils import PUNKT_LANGUAGES

    dictionary = metadata["dictionary"]
    language = metadata["language"]
    spaced = language not in LANGUAGES_WITHOUT_SPACES
    splitter = _sentence_splitter(PUNKT_LANGUAGES.get(language, "english"))
    max_duration = num_samples / SAMPLE_RATE
    plans = []
    for sdx, segment in enumerate(transcript):
        if print_progress:
            base_progress = ((sdx + 1) / len(transcript)) * 100
            percent_complete = (50 + base_progress / 2) if combined_progress else base_progress
            print(f"Progress: {percent_complete:.2f}%...")
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
# (b) Model forward, one segment at a time, as whisperx does it
# --------------------------------------------------------------------------------------------------


def audio_tensor(audio: str | np.ndarray | torch.Tensor) -> torch.Tensor:
    """[1, samples] tensor, as whisperx.align makes it (a path is decoded with whisperx's load_audio)."""
    if not torch.is_tensor(audio):
        if isinstance(audio, str):
            from whisperx.audio import load_audio

            audio = load_audio(audio)
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
    progress_callback: ProgressCallback = None,
    batch_size: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """Drop-in for whisperx.align: same arguments, same result; `batch_size` above 1 batches the forwards where
    that leaves the emissions as they are (`segment_emissions`)."""
    audio = audio_tensor(audio)
    plans = prepare_alignment(transcript, align_model_metadata, audio.shape[1], print_progress, combined_progress)
    emissions = segment_emissions(model, align_model_metadata["type"], audio, plans, device, batch_size)
    return align_segments(
        transcript,
        plans,
        emissions,
        align_model_metadata,
        interpolate_method=interpolate_method,
        return_char_alignments=return_char_alignments,
        progress_callback=progress_callback,
    )
