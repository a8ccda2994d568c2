"""Benchmark corpora: real speech made with espeak-ng, as many files and as long as a benchmark needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

SENTENCES = [
    "The quarterly report is ready for review.",
    "Please send the slides to Maria before noon on Friday.",
    "Our customer asked for a refund on the second order.",
    "The meeting moved to Thursday at three in the afternoon.",
    "We agreed to ship the new release next week.",
    "Can you call me back when you get this message?",
    "The server upgrade finished without any errors last night.",
    "Let us start with a short summary of the interview.",
]


def make_corpus(folder: Path, count: int, sentences_per_file: int = 2, rate: int = 160, stem: str = "clip") -> float:
    """`count` recordings of `sentences_per_file` sentences each; returns their total duration in seconds."""
    folder.mkdir(parents=True)
    total = 0.0
    for index in range(count):
        text = " ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(sentences_per_file))
        path = folder / f"{stem}{index:03d}.wav"
        subprocess.run(["espeak-ng", "-s", str(rate), "-w", str(path), text], check=True)
        total += float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True).stdout)
    return total
