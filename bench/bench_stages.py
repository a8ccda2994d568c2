"""The finishing stages alone, side by side on the same input, with full-size, randomly initialised models of the
real classes (bench/models.py: they cost what the real ones cost, so their seconds are real though their answers
are not):

- alignment: whisperx.align against whisperx-batch's (batch.engine.align.words), wav2vec2-base;
- diarization: whisperx's DiarizationPipeline as its command line calls it (pyannote's pipeline as configured)
  against whisperx-batch's Diarizer (one embedding-trunk pass per window, the batch size it is given), a
  community-1-shaped pipeline (segmentation-3.0 PyanNet, WeSpeaker ResNet34, a synthetic PLDA).

    python -m bench.bench_stages [--stage align] [--stage diarize] [--corpus mixed] [--scale 0.3] [--runs 1]
                                 [--threads 2] [--batch-size 8] [--diarize-seconds 120]

Both contenders get the same decoded arrays, the same segments (whisperx-batch's own ASR of the corpus, tiny.en,
made once before timing) and the same torch threads, as the whisperx command line would run them. Each contender
is warmed up once, then run in A-B-B-A order (`--runs` such rounds); each stage prints each one's seconds per
run, the ratio, and how their answers agree: words with identical timings; files with identical speaker turns,
and the speaker time that differs after the best renaming of labels. Diarization takes the corpus's first files
up to `--diarize-seconds` of audio (pyannote's pipeline costs about twice real time on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import DEFAULT_ROOT, Corpus, ensure_corpus
from bench.models import ALIGN_BASE, build_all
from bench.tools import tiny_en

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "out" / "bench" / "models"
Aligned = dict[str, list[dict[str, Any]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="mixed", choices=("short", "mixed"))
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=1, help="A-B-B-A rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage", choices=["align", "diarize"], action="append")
    parser.add_argument("--batch-size", type=int, default=8, help="whisperx-batch's diarization batch size")
    parser.add_argument("--diarize-seconds", type=float, default=120)
    args = parser.parse_args()

    import torch

    corpus = ensure_corpus(args.corpus, DEFAULT_ROOT, args.scale)
    inputs = transcribed(corpus)
    torch.set_num_threads(args.threads)  # after the ASR: loading it held torch to one thread for its VAD
    stages = args.stage or ["align", "diarize"]
    if "align" in stages:
        compare_alignment(inputs, corpus, args.runs, args.threads)
    if "diarize" in stages:
        compare_diarization(inputs, args.runs, args.threads, args.batch_size, args.diarize_seconds)


def a_b_b_a(contenders: dict[str, Callable[[], Any]], runs: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Each contender warmed up once (its answer kept), then timed in A-B-B-A order `runs` times."""
    results = {name: run() for name, run in contenders.items()}
    first, second = contenders
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for name in [first, second, second, first] * runs:
        started = time.perf_counter()
        contenders[name]()
        seconds[name].append(time.perf_counter() - started)
    return seconds, results


def print_seconds(seconds: dict[str, list[float]]) -> float:
    for name, values in seconds.items():
        print(f"  {name:16} {statistics.mean(values):7.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
    first, second = seconds
    return statistics.mean(seconds[first]) / statistics.mean(seconds[second])


def compare_alignment(inputs: dict[str, Any], corpus: Corpus, runs: int, threads: int) -> None:
    model, metadata = alignment_model()
    contenders: dict[str, Callable[[], list[Aligned]]] = {
        "whisperx.align": lambda: align_all(inputs, model, metadata, reference=True),
        "whisperx-batch": lambda: align_all(inputs, model, metadata, reference=False),
    }
    audio = sum(len(samples) for samples, _ in inputs.values()) / 16000
    segments = sum(len(found) for _, found in inputs.values())
    print(
        f"alignment of {len(inputs)} files, {audio:.0f} s of audio, {segments} segments ({corpus.name} corpus), "
        f"wav2vec2-base (random weights), {threads} torch threads",
        flush=True,
    )
    seconds, results = a_b_b_a(contenders, runs)
    ratio = print_seconds(seconds)
    same, total = agreement(results["whisperx.align"], results["whisperx-batch"])
    print(f"  whisperx.align / whisperx-batch: {ratio:.2f}x; words with identical timings: {same} of {total}")


def compare_diarization(inputs: dict[str, Any], runs: int, threads: int, batch_size: int, limit: float) -> None:
    from whisperx.diarize import DiarizationPipeline

    from batch.engine.diarize.diarizer import Diarizer
    from bench.models import DIARIZATION

    folder = build_all(MODELS)[DIARIZATION][0]
    arrays, total = [], 0.0
    for samples, _ in inputs.values():
        if total >= limit:
            break
        arrays.append(samples)
        total += len(samples) / 16000
    theirs = DiarizationPipeline(model_name=str(folder), token=None, device="cpu")
    ours = Diarizer(str(folder), "cpu", None, None, True)

    def whisperx_turns() -> list[list[tuple[float, float, str]]]:
        frames = [theirs(samples) for samples in arrays]
        return [[(round(r.start, 3), round(r.end, 3), str(r.speaker)) for r in f.itertuples()] for f in frames]

    def batch_turns() -> list[list[tuple[float, float, str]]]:
        found = [ours.turns(samples, None, None, None, batch_size) for samples in arrays]
        return [[(t["start"], t["end"], t["speaker"]) for t in turns] for turns in found]

    print(
        f"diarization of {len(arrays)} files, {total:.0f} s of audio, community-1-shaped pipeline (random "
        f"embeddings), {threads} torch threads; whisperx-batch batch size {batch_size}, shared trunk "
        f"{ours.shared_trunk}",
        flush=True,
    )
    seconds, results = a_b_b_a({"whisperx": whisperx_turns, "whisperx-batch": batch_turns}, runs)
    ratio = print_seconds(seconds)
    pairs = list(zip(results["whisperx"], results["whisperx-batch"], strict=True))
    identical = sum(sorted(a) == sorted(b) for a, b in pairs)
    differing = [speaker_time_differing(a, b) for a, b in pairs]
    print(
        f"  whisperx / whisperx-batch: {ratio:.2f}x; files with identical turns: {identical} of {len(pairs)}; "
        f"speaker time differing after the best renaming: at most {max(differing, default=0):.2%} of a file"
    )


def speaker_time_differing(a: list[tuple[float, float, str]], b: list[tuple[float, float, str]]) -> float:
    """Share of 10 ms frames (with a speaker on either side) whose speakers differ after the best renaming."""
    from scipy.optimize import linear_sum_assignment

    end = max([t[1] for t in a + b], default=0.0)
    frames = int(end * 100) + 1
    labels_a, labels_b = sorted({t[2] for t in a}), sorted({t[2] for t in b})
    grid_a, grid_b = np.full(frames, -1), np.full(frames, -1)
    for turns, grid, labels in ((a, grid_a, labels_a), (b, grid_b, labels_b)):
        for start, stop, speaker in turns:
            grid[int(start * 100) : int(stop * 100)] = labels.index(speaker)
    spoken = (grid_a >= 0) | (grid_b >= 0)
    if not spoken.any() or not labels_a or not labels_b:
        return 0.0 if not spoken.any() else 1.0
    counts = np.zeros((len(labels_a), len(labels_b)))
    both = (grid_a >= 0) & (grid_b >= 0)
    np.add.at(counts, (grid_a[both], grid_b[both]), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return 1.0 - counts[rows, cols].sum() / spoken.sum()


def transcribed(corpus: Corpus) -> dict[str, tuple[np.ndarray, list[dict[str, Any]]]]:
    """Each recording decoded once, with the segments whisperx-batch's ASR reads in it (not timed)."""
    from batch.engine.audio import decode
    from batch.engine.config import RuntimeOptions
    from batch.engine.whisperx_pipeline import WhisperxPipeline
    from batch.run.config import configure
    from batch.settings.options import load_settings

    settings = load_settings(
        {"source": str(corpus.folder), "out": str(corpus.folder), "model": tiny_en(), "align": False}, environ={}
    )
    config = configure(settings, {}, RuntimeOptions("cpu", "int8", 2, 8)).pipeline
    engine = WhisperxPipeline(config)
    from batch.engine.pipeline import DecodedFile, Stopwatch

    arrays = {}
    for path in corpus.paths:
        with path.open("rb") as stream:
            arrays[path.name] = decode(stream)
    files = [DecodedFile(name, samples, Stopwatch()) for name, samples in arrays.items()]
    return {outcome.key: (arrays[outcome.key], outcome.segments) for outcome in engine.process(files, lambda: False)}


def alignment_model() -> tuple[Any, dict[str, Any]]:
    from whisperx.alignment import load_align_model

    from batch.engine.align.aligner import ensure_punkt, punkt_root

    folder, _ = build_all(MODELS)[ALIGN_BASE]
    ensure_punkt("en", punkt_root(str(MODELS)))
    return load_align_model("en", "cpu", model_name=str(folder))


def align_all(inputs: dict[str, Any], model: Any, metadata: dict[str, Any], reference: bool) -> list[Aligned]:
    if reference:
        from whisperx.alignment import align
    else:
        from batch.engine.align.aligner import time_words as align
    return [align([dict(s) for s in segments], model, metadata, audio, "cpu") for audio, segments in inputs.values()]


def agreement(reference: list[Aligned], ours: list[Aligned]) -> tuple[int, int]:
    words = [(w.get("start"), w.get("end")) for result in reference for w in result["word_segments"]]
    mine = [(w.get("start"), w.get("end")) for result in ours for w in result["word_segments"]]
    return sum(a == b for a, b in zip(words, mine, strict=False)), max(len(words), len(mine))


if __name__ == "__main__":
    main()
