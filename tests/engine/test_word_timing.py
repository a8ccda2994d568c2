"""batch.engine.align (trellis, forwards, words) against whisperx 3.8.6's own code: trellis/backtrack bit for bit
on random emissions, and whole ``align`` results, value for value and type for type, on real speech (pyannote's
sample call, espeak-ng) with a tiny Wav2Vec2ForCTC and a tiny torchaudio wav2vec2. whisperx's interface over the
engine's steps is tests/engine/whisperx_reference.py; the engine's own chain (`time_words`) is checked too.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import whisperx.alignment as wxa

import batch.engine.align.forwards as forwards
import batch.engine.align.trellis as trellis
import batch.engine.align.words as word_timing
import tests.engine.whisperx_reference as reference
from batch.engine.align.aligner import ensure_punkt, punkt_root, time_words
from batch.engine.audio import decode
from tests.conftest import SITE, speak
from tests.tiny_models import build_tiny_align_model

SAMPLE_DIR = SITE / "sample"


def read_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32, decoded as the project decodes recordings."""
    with path.open("rb") as stream:
        return decode(stream)


# --------------------------------------------------------------------------------------------------
# Exact comparison helpers
# --------------------------------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A comparable form that keeps dict key order, types and float bits (NaN included)."""
    if isinstance(value, dict):
        return ("dict", [(k, canonical(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [canonical(v) for v in value])
    if isinstance(value, float | np.floating):
        return (type(value).__name__, float(value).hex())
    return (type(value).__name__, repr(value))


def differences(ref: Any, mine: Any, where: str = "") -> list[str]:
    """Human-readable differences (float ones with their exact gap)."""
    if isinstance(ref, dict) and isinstance(mine, dict):
        if list(ref) != list(mine):
            return [f"{where}: keys {list(ref)} != {list(mine)}"]
        return [d for k in ref for d in differences(ref[k], mine[k], f"{where}.{k}")]
    if isinstance(ref, list) and isinstance(mine, list):
        if len(ref) != len(mine):
            return [f"{where}: {len(ref)} items != {len(mine)}"]
        return [d for i, (a, b) in enumerate(zip(ref, mine, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    if canonical(ref) != canonical(mine):
        gap = ""
        if isinstance(ref, float | np.floating) and isinstance(mine, float | np.floating):
            gap = f" (gap {float(mine) - float(ref):.3g})"
        return [f"{where}: {ref!r} ({type(ref).__name__}) != {mine!r} ({type(mine).__name__}){gap}"]
    return []


def assert_same(ref: Any, mine: Any) -> None:
    diffs = differences(ref, mine)
    assert not diffs, "\n".join(diffs[:20])
    assert canonical(ref) == canonical(mine)


# --------------------------------------------------------------------------------------------------
# Trellis and backtrack on random emissions
# --------------------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> torch.Tensor:
    return torch.log_softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), dim=-1)


def whisperx_path(emission: torch.Tensor, tokens: list[int], blank_id: int) -> list[tuple[int, int, float]] | None:
    grid = wxa.get_trellis(emission, tokens, blank_id)
    path = wxa.backtrack(grid, emission, tokens, blank_id)
    return None if path is None else [(p.token_index, p.time_index, p.score) for p in path]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal float32 bit patterns (so +0.0 != -0.0), NaN where NaN: torch.maximum gives NaNs another
    payload (0xffffffff) than numpy (0xffc00000), which no later operation can tell apart."""
    if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    keep = ~np.isnan(a)
    return np.array_equal(a[keep].view(np.uint32), b[keep].view(np.uint32))


def random_case(rng: np.random.Generator, kind: str) -> tuple[torch.Tensor, list[int], int]:
    frames = int(rng.integers(1, 80))
    vocab = int(rng.integers(2, 12))
    blank_id = int(rng.integers(0, vocab)) if rng.random() < 0.3 else 0
    num_tokens = int(rng.integers(1, max(2, frames // 2 + 1)))
    scale = float(rng.choice([0.05, 1.0, 4.0, 30.0]))
    logits = rng.standard_normal((frames, vocab)) * scale
    if kind == "ties":  # few distinct values: equal scores everywhere, "changed == stayed" often
        logits = np.round(logits / max(scale, 1.0))
    elif kind == "flat":  # every entry of a row equal
        logits = np.zeros((frames, vocab))
    elif kind == "long":  # more tokens than frames, or just as many
        num_tokens = frames + int(rng.integers(-1, 4))
    elif kind == "single":
        num_tokens = 1
        frames = int(rng.integers(1, 5))
        logits = logits[:frames]
    emission = log_softmax(logits)
    if kind == "neginf":  # -inf log-probs: inf + -inf = NaN inside the trellis
        rows = rng.integers(0, frames, 3)
        emission[rows, rng.integers(0, vocab, 3)] = -math.inf
    if kind == "repeats":  # runs of one token, no blank forced between them
        tokens = np.repeat(rng.integers(0, vocab, 3), rng.integers(1, 6, 3)).tolist()[: max(1, frames)]
    else:
        tokens = rng.integers(0, vocab, max(1, num_tokens)).tolist()
    return emission, tokens, blank_id


KINDS = ["random", "ties", "flat", "long", "single", "neginf", "repeats"]
CASES_PER_KIND = 300


@pytest.fixture(scope="module")
def random_cases() -> list[tuple[torch.Tensor, list[int], int]]:
    rng = np.random.default_rng(20240601)
    return [random_case(rng, kind) for kind in KINDS for _ in range(CASES_PER_KIND)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_trellis_bit_for_bit(random_cases):
    for emission, tokens, blank_id in random_cases:
        ref = wxa.get_trellis(emission, tokens, blank_id).numpy()
        assert same_bits(ref, reference.get_trellis(emission.numpy(), tokens, blank_id)), (tokens, blank_id)


def test_paths_equal(random_cases):
    outcomes = {"aligned": 0, "failed": 0}
    for emission, tokens, blank_id in random_cases:
        ref = whisperx_path(emission, tokens, blank_id)
        assert reference.trellis_path(emission.numpy(), tokens, blank_id) == ref, (tokens, blank_id)
        outcomes["failed" if ref is None else "aligned"] += 1
    assert min(outcomes.values()) > 50  # both outcomes well covered


def test_char_spans_equal_merge_repeats(random_cases):
    for emission, tokens, blank_id in random_cases:
        path = wxa.backtrack(wxa.get_trellis(emission, tokens, blank_id), emission, tokens, blank_id)
        spans = reference.char_spans(emission.numpy(), tokens, blank_id)
        if path is None:
            assert spans is None
            continue
        merged = wxa.merge_repeats(path, "x" * len(tokens))
        assert [(s.start, s.end, s.score) for s in merged] == [(s.start, s.end, s.score) for s in spans]


@pytest.mark.parametrize("max_cells", [1, 3000, trellis.MAX_BATCH_CELLS])
def test_batched_equals_single(random_cases, max_cells):
    """Many trellises filled together (padded, sorted, chunked) give each one's own result."""
    blank0 = [(e, t) for e, t, b in random_cases if b == 0]
    batched = reference.trellis_paths([e.numpy() for e, _ in blank0], [t for _, t in blank0], 0, max_cells=max_cells)
    assert batched == [whisperx_path(e, t, 0) for e, t in blank0]


def test_shapes_whisperx_rejects_or_fails():
    emission = log_softmax(np.random.default_rng(0).standard_normal((6, 5)))
    assert reference.trellis_path(emission.numpy(), [1] * 7, 0) is None  # more tokens than frames
    assert whisperx_path(emission, [1] * 7, 0) is None
    assert reference.trellis_path(emission.numpy()[:0], [1], 0) is None  # no frame at all
    assert reference.trellis_path(emission.numpy(), [], 0) is None  # no token (whisperx never aligns those)


def test_wildcard_column():
    """Characters missing from the vocabulary score each frame's best non-blank log-prob."""
    rng = np.random.default_rng(3)
    dictionary = {"<pad>": 0, "|": 1, "a": 2, "b": 3}
    for blank_id in (0, 2):
        emission = log_softmax(rng.standard_normal((20, 4)))
        ext, tokens = word_timing.tokens_for(emission.numpy(), "a|7b€", dictionary, blank_id)
        # whisperx.align's inline code
        mask = torch.ones(emission.size(1), dtype=torch.bool)
        mask[blank_id] = False
        ref = torch.cat([emission, emission[:, mask].max(dim=1).values.unsqueeze(1)], dim=1)
        assert same_bits(ref.numpy(), ext)
        assert tokens == [2, 1, 4, 3, 4]
    plain, tokens = word_timing.tokens_for(emission.numpy(), "ab", dictionary, 0)
    assert plain is not None and plain.shape == (20, 4) and tokens == [2, 3]


def test_nanmean_is_pandas_mean():
    """Word scores: pandas' Series.mean (numpy pairwise sum) bit for bit, NaN skipped."""
    rng = np.random.default_rng(5)
    for n in [*range(1, 40), 127, 128, 129, 300]:
        values = np.round(rng.random(n), 3)
        values[rng.random(n) < 0.2] = np.nan
        ref = pd.Series(values.tolist()).mean()
        mine = word_timing._nanmean(values.tolist())
        assert (np.isnan(ref) and np.isnan(mine)) or canonical(ref) == canonical(mine)


def test_blank_id_of():
    assert word_timing.blank_id_of({"a": 0, "<pad>": 3}) == 3
    assert word_timing.blank_id_of({"[pad]": 2, "a": 0}) == 2
    assert word_timing.blank_id_of({"a": 1}) == 0


# --------------------------------------------------------------------------------------------------
# Whole align on real speech
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aligner(tmp_path_factory) -> tuple[Any, dict[str, Any]]:
    root = tmp_path_factory.mktemp("align")
    ensure_punkt("en", punkt_root(str(root)))
    model_dir = build_tiny_align_model(root / "tiny-wav2vec2")
    return wxa.load_align_model("en", "cpu", model_name=str(model_dir))


@pytest.fixture(autouse=True)
def fast_whisperx_punkt(monkeypatch):
    """whisperx reloads the punkt tables for every segment (~0.1 s); the same tables, loaded once."""
    monkeypatch.setattr(wxa, "nltk_load", functools.cache(wxa.nltk_load))


@pytest.fixture(scope="session")
def sample_audio(sample_wav: Path) -> np.ndarray:
    return read_audio(sample_wav)


def stm_segments() -> list[dict[str, Any]]:
    """pyannote's sample transcript, as whisper would give it (leading space, avg_logprob)."""
    segments = []
    for line in (SAMPLE_DIR / "sample.stm").read_text().splitlines():
        _, _, _, start, end, text = line.split(maxsplit=5)
        segments.append({"start": float(start), "end": float(end), "text": " " + text, "avg_logprob": -0.3})
    return segments


def edge_segments(duration: float) -> list[dict[str, Any]]:
    return [
        {"start": 0.2, "end": 1.4, "text": " I a o u"},  # one-character words
        {"start": 1.5, "end": 3.5, "text": " It's 42 € & 7% at 3:15, #1!"},  # digits and symbols: wildcards
        {"start": 3.6, "end": 3.66, "text": " This text is far longer than its three frames."},  # backtrack fails
        {"start": 4.0, "end": 4.5, "text": ""},  # empty
        {"start": 4.5, "end": 4.6, "text": "   "},  # spaces only
        {"start": 4.7, "end": 4.7, "text": " x"},  # no audio: padded to 400 samples, one frame
        {"start": 4.8, "end": 4.81, "text": "k"},  # 160 samples
        {"start": 5.0, "end": 6.6, "text": " Hello there. How are you? Fine, thanks. Bye."},  # sentences
        {"start": 28.5, "end": duration, "text": " The very end."},  # ends at the last sample
        {"start": 29.2, "end": duration + 3.0, "text": " Past the end"},  # slice clipped by the audio
        {"start": duration, "end": duration + 1.0, "text": " After the audio."},  # skipped
        {"start": 6.7, "end": 7.2, "text": "\tTabs\tand  double  spaces \n"},
        {"start": 7.3, "end": 8.2, "text": " İstanbul ǅ straße ÆON"},  # lower() changes the length
        {"start": 8.3, "end": 9.0, "text": " a|b pipes|"},
        {"start": 9.1, "end": 10.0, "text": " Mr. Smith met Dr. Who at 5 p.m. today."},
        {"start": 10.2, "end": 11.9, "text": " supercalifragilisticexpialidocious internationalization"},
        {"start": np.float64(12.0), "end": np.float64(13.1), "text": " numpy times", "avg_logprob": np.float32(-1)},
        {"start": 14, "end": 15, "text": " integer times", "avg_logprob": -2},
    ]


def fuzz_segments(rng: np.random.Generator, duration: float, count: int) -> list[dict[str, Any]]:
    """Random texts (letters, unknown symbols, sentence ends, odd spacing) over random stretches."""
    words = [
        "a",
        "I",
        "the",
        "cat's",
        "OK",
        "42",
        "3.5",
        "€",
        "x-ray",
        "well,",
        "done.",
        "yes!",
        "why?",
        "'quoted'",
        "Dr.",
        "U.S.A.",
        "naïve",
        "—",
        "ab|cd",
        "internationalization",
        "hmm...",
    ]
    segments = []
    for _ in range(count):
        start = float(np.round(rng.uniform(-0.05, duration + 0.5), 3))
        length = float(rng.choice([0.0, 0.01, 0.05, 0.3, 1.0, 3.0]))
        picked = rng.choice(words, int(rng.integers(1, 12))).tolist()
        seps = rng.choice([" ", " ", " ", "  ", ". ", "? "], len(picked)).tolist()
        text = "".join(w + s for w, s in zip(picked, seps, strict=True))[:-1]
        text = str(rng.choice(["", " ", "  "])) + text + str(rng.choice(["", " ", "\n"]))
        segments.append({"start": start, "end": round(start + length, 3), "text": text})
    return segments


def both(segments, aligner, audio, **kwargs) -> tuple[dict, dict]:
    model, metadata = aligner
    ref = wxa.align(segments, model, metadata, audio, "cpu", **kwargs)
    mine = reference.align(segments, model, metadata, audio, "cpu", **kwargs)
    if not kwargs:  # whisperx's defaults: what the engine's own aligner runs
        assert_same(ref, time_words([dict(s) for s in segments], model, metadata, audio, "cpu"))
    return ref, mine


@pytest.mark.parametrize("return_char_alignments", [False, True])
def test_align_sample_transcript(aligner, sample_audio, return_char_alignments):
    segments = stm_segments()
    ref, mine = both(segments, aligner, sample_audio, return_char_alignments=return_char_alignments)
    assert_same(ref, mine)
    assert len(ref["word_segments"]) == sum(len(s["text"].split()) for s in segments)  # every word timed


@pytest.mark.parametrize("return_char_alignments", [False, True])
def test_align_edge_cases(aligner, sample_audio, return_char_alignments):
    segments = edge_segments(len(sample_audio) / 16000)
    ref, mine = both(segments, aligner, sample_audio, return_char_alignments=return_char_alignments)
    assert_same(ref, mine)
    by_text = {s["text"]: s for s in ref["segments"]}
    assert by_text[" This text is far longer than its three frames."]["words"] == []  # failed, kept
    assert by_text[" After the audio."]["words"] == []
    assert any(w["word"] == "42" for w in ref["word_segments"])  # wildcards aligned


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_align_without_word_delimiter(aligner, sample_audio, method):
    """A vocabulary without '|': spaces are not aligned, sentences can lack times (interpolated)."""
    model, metadata = aligner
    metadata = {**metadata, "dictionary": {k: v for k, v in metadata["dictionary"].items() if k != "|"}}
    segments = stm_segments() + edge_segments(len(sample_audio) / 16000)
    ref, mine = both(segments, (model, metadata), sample_audio, interpolate_method=method)
    assert_same(ref, mine)


def test_align_language_without_spaces(aligner, sample_audio):
    model, metadata = aligner
    segments = stm_segments()[:5] + edge_segments(len(sample_audio) / 16000)[:9]
    ref, mine = both(segments, (model, {**metadata, "language": "zh"}), sample_audio, return_char_alignments=True)
    assert_same(ref, mine)


def test_align_fuzz(aligner, sample_audio):
    rng = np.random.default_rng(11)
    segments = fuzz_segments(rng, len(sample_audio) / 16000, 80)
    ref, mine = both(segments, aligner, sample_audio, return_char_alignments=True)
    assert_same(ref, mine)
    assert sum(bool(s["words"]) for s in ref["segments"]) > 20


def test_align_audio_forms_and_progress(aligner, sample_audio, tmp_path, capsys):
    model, metadata = aligner
    segments = stm_segments()[:4] + edge_segments(len(sample_audio) / 16000)[2:4]
    ref_calls: list[float] = []
    ref = wxa.align(
        segments,
        model,
        metadata,
        torch.from_numpy(sample_audio),
        "cpu",
        print_progress=True,
        combined_progress=True,
        progress_callback=ref_calls.append,
    )
    ref_out = capsys.readouterr().out
    mine_calls: list[float] = []
    mine = reference.align(
        segments,
        model,
        metadata,
        sample_audio[None, :],
        "cpu",
        print_progress=True,
        combined_progress=True,
        progress_callback=mine_calls.append,
    )
    assert capsys.readouterr().out == ref_out
    assert mine_calls == ref_calls
    assert_same(ref, mine)


def test_align_audio_path(aligner, sample_wav):
    """A path is decoded by whisperx's own load_audio (ffmpeg) in both."""
    model, metadata = aligner
    path = str(sample_wav)
    segments = stm_segments()[:3]
    ref = wxa.align(segments, model, metadata, path, "cpu")
    assert_same(ref, reference.align(segments, model, metadata, path, "cpu"))


def test_align_torchaudio_model(aligner, sample_audio):
    """A torchaudio wav2vec2 (type "torchaudio": short slices get their true length passed)."""
    import torchaudio

    _, metadata = aligner
    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[(16, 10, 5), (16, 8, 8), (16, 4, 8)],
        extractor_conv_bias=False,
        encoder_embed_dim=32,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=16,
        encoder_num_layers=2,
        encoder_num_heads=2,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=len(metadata["dictionary"]),
    ).eval()
    segments = stm_segments()[:6] + edge_segments(len(sample_audio) / 16000)
    ref, mine = both(segments, (model, {**metadata, "type": "torchaudio"}), sample_audio)
    assert_same(ref, mine)


def test_split_api_with_torch_emissions(aligner, sample_audio):
    """(a) prepare, (b) forward by the caller, (c) align_segments: what align does."""
    model, metadata = aligner
    segments = stm_segments() + edge_segments(len(sample_audio) / 16000)
    audio = forwards.audio_tensor(sample_audio)
    plans = word_timing.prepare_alignment(segments, metadata, audio.shape[1])
    emissions = []
    for plan in plans:
        if plan.samples is None:
            emissions.append(None)
            continue
        waveform, _ = forwards.segment_waveform(audio, plan)
        with torch.inference_mode():
            emissions.append(torch.log_softmax(model(waveform).logits, dim=-1)[0])
    result = word_timing.align_segments(segments, plans, emissions, metadata)
    assert_same(wxa.align(segments, model, metadata, sample_audio, "cpu"), result)


def test_align_espeak_speech(aligner, tmp_path):
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "She sells 3 sea shells by the sea shore, for $5 each.",
        "I.",
        "Is it 10:30 already? Yes, it is.",
    ]
    gap = np.zeros(4000, dtype=np.float32)
    pieces, segments, cursor = [], [], 0
    for i, sentence in enumerate(sentences):
        speech = read_audio(speak(sentence, tmp_path / f"sentence{i}.wav"))
        pieces += [speech, gap]
        segments.append({"start": cursor / 16000, "end": (cursor + len(speech)) / 16000, "text": " " + sentence})
        cursor += len(speech) + len(gap)
    audio = np.concatenate(pieces[:-1])  # the last segment ends with the audio
    ref, mine = both(segments, aligner, audio, return_char_alignments=True)
    assert_same(ref, mine)
    assert all(s["words"] for s in ref["segments"])
