"""Word error rate against a corpus's references, with a simple normalisation applied to both sides.

Normalisation: lowercase; numbers written with digits become words as espeak-ng speaks them in the references
("3:30" -> "three thirty", "21st" -> "twenty first", "15%" -> "fifteen percent"); apostrophes dropped
("it's" -> "its"); other punctuation and hyphens become spaces. The WER is the corpus's: all errors over all
reference words, in percent.
"""

from __future__ import annotations

import re

import jiwer

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen \
seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def number_words(n: int) -> str:
    """0 <= n < 10**9 in words, without "and" or hyphens: 214 -> "two hundred fourteen"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    words[-1] = ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words)


def _clock(match: re.Match[str]) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes == 0:
        return number_words(hours)
    return f"{number_words(hours)} {'oh ' if minutes < 10 else ''}{number_words(minutes)}"


def normalise(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = re.sub(r"\b(\d{1,2})[:.](\d{2})\b", _clock, text)
    text = re.sub(r"(\d),(?=\d{3}\b)", r"\1", text)  # 1,000 -> 1000
    text = re.sub(r"(\d+)\s*%", r"\1 percent", text)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_words(int(m.group(1))), text)
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} " if len(m.group()) < 10 else m.group(), text)
    text = text.replace("'", "")
    text = re.sub(r"[^a-z0-9\s]", " ", text)
    return " ".join(text.split())


def wer_percent(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent over pairs of texts (an empty hypothesis counts all its words as deleted)."""
    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return float("nan")
    return 100 * jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])
