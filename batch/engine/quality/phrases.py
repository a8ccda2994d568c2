"""The bag of known hallucinations: phrases Whisper writes where nobody speaks, per language.

The project's own lists live in phrases/LANG.txt (how each was built is in its header: bench/hallucination_phrases.py);
a user adds more from a file of their own (one phrase a line, `#` starts a comment), for every language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from batch.engine.quality.signals import normalise

PHRASES_FOLDER = Path(__file__).parent / "phrases"
# A phrase found inside a longer segment counts from this many words, and when it is at least this share of it.
CONTAINED_MIN_WORDS = 3
CONTAINED_MIN_SHARE = 0.75


def read_phrases(text: str) -> frozenset[str]:
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return frozenset(phrase for phrase in map(normalise, lines) if phrase)


@cache
def bundled_phrases(language: str) -> frozenset[str]:
    path = PHRASES_FOLDER / f"{language}.txt"
    return read_phrases(path.read_text(encoding="utf-8")) if path.is_file() else frozenset()


@dataclass(frozen=True)
class PhraseBag:
    """The bundled phrases of each language, and the user's for all of them."""

    extra: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def with_file(cls, path: str | None) -> PhraseBag:
        return cls(read_phrases(Path(path).read_text(encoding="utf-8")) if path else frozenset())

    def phrases(self, language: str | None) -> frozenset[str]:
        return bundled_phrases(language or "en") | self.extra

    def matches(self, text: str, language: str | None) -> bool:
        """The segment is a known phrase, or one of at least CONTAINED_MIN_WORDS words makes most of it."""
        spoken = normalise(text)
        phrases = self.phrases(language)
        if spoken in phrases:
            return True
        words = len(spoken.split())
        padded = f" {spoken} "
        return any(
            len(phrase.split()) >= CONTAINED_MIN_WORDS
            and len(phrase.split()) >= CONTAINED_MIN_SHARE * words
            and f" {phrase} " in padded
            for phrase in phrases
        )
