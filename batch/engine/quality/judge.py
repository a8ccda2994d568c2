"""The judgement of one segment: is its text something the audio carries?

Acoustic signals say whether there is speech to read: Whisper's no-speech probability, its mean log-probability,
and the VAD's share of speech and score. Text signals say whether the text looks like what Whisper writes over
non-speech: a known phrase, a loop, repetitive text, the neighbour's text again, more words a second than people
say. A segment is hallucinated when two acoustic signals are weak, or one is and a text signal fires: a text
signal alone never drops anything (a person who says "thank you" keeps it), and neither does one weak figure.
A strong figure or a text signal alone keeps the segment but asks for review. The thresholds were set on
synthetic speech and non-speech (bench/bench_hallucinations.py measures them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batch.engine.quality.signals import Loop

# Acoustic: weak at the first figure; strong (worth a review on its own) at the second.
NO_SPEECH_WEAK, NO_SPEECH_STRONG = 0.3, 0.6
LOG_PROB_WEAK, LOG_PROB_STRONG = -0.7, -1.0
VAD_SHARE_WEAK = 0.5  # less than half of the chunk inside the VAD's speech regions
VAD_SCORE_WEAK = 0.65  # the chunk's mean frame speech score (onset 0.5): barely speech
# Text
COMPRESSION_RATIO_HIGH = 2.4  # faster-whisper's fallback threshold
NGRAM_REPETITION_HIGH, NGRAM_REPETITION_MIN_WORDS = 0.4, 12
WORDS_PER_SECOND_HIGH, FAST_MIN_WORDS = 6.5, 6  # people rarely pass 5 words a second for long
# Whisper's own word that there is nothing to read: faster-whisper's silence rule at its default thresholds
# (no_speech_threshold 0.6, log_prob_threshold -1.0), under which it reads no chunk again at a higher temperature.
SILENT_NO_SPEECH, SILENT_LOG_PROB = 0.6, -1.0
# After alignment: a segment whose words' mean alignment score is below this hardly fits the audio.
ALIGNED_SCORE_WEAK = 0.2

WEAK, STRONG = "weak", "strong"


@dataclass(frozen=True)
class SegmentSignals:
    """Everything known of one segment's reading."""

    text: str
    seconds: float
    avg_logprob: float
    no_speech_prob: float | None
    compression_ratio: float
    ngram_repetition: float
    loop: Loop | None
    words_per_second: float
    speech_share: float | None
    vad_score: float | None
    known_phrase: bool
    repeats_neighbour: bool

    def to_dict(self) -> dict[str, object]:
        figures = {
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
            "compression_ratio": round(self.compression_ratio, 3),
            "ngram_repetition": self.ngram_repetition,
            "words_per_second": round(self.words_per_second, 2),
            "speech_share": self.speech_share,
            "vad_score": self.vad_score,
        }
        return {name: value for name, value in figures.items() if value is not None}


@dataclass(frozen=True)
class Verdict:
    hallucinated: bool
    reasons: tuple[str, ...]  # every signal that fired, by name
    review: bool  # kept, but the signals disagree
    loop: Loop | None = None  # a loop inside speech kept: cut it
    figures: dict[str, object] = field(default_factory=dict)  # the signals' values, for the record
    silent: bool = False  # Whisper itself finds no speech: reading it again would not help


def acoustic(signals: SegmentSignals) -> dict[str, str]:
    """The acoustic signals that fired, each weak or strong."""
    fired: dict[str, str] = {}
    nsp, lp = signals.no_speech_prob, signals.avg_logprob
    if nsp is not None and nsp >= NO_SPEECH_WEAK:
        fired["no_speech_probability"] = STRONG if nsp >= NO_SPEECH_STRONG else WEAK
    if lp < LOG_PROB_WEAK:
        fired["low_log_probability"] = STRONG if lp < LOG_PROB_STRONG else WEAK
    share, score = signals.speech_share, signals.vad_score
    if (share is not None and share < VAD_SHARE_WEAK) or (score is not None and score < VAD_SCORE_WEAK):
        fired["little_vad_speech"] = WEAK
    return fired


def textual(signals: SegmentSignals) -> list[str]:
    fired = []
    if signals.known_phrase:
        fired.append("known_phrase")
    if signals.loop is not None:
        fired.append("loop")
    words = len(signals.text.split())
    repetitive = signals.ngram_repetition >= NGRAM_REPETITION_HIGH and words >= NGRAM_REPETITION_MIN_WORDS
    if repetitive or signals.compression_ratio > COMPRESSION_RATIO_HIGH:
        fired.append("repetitive")
    if signals.repeats_neighbour:
        fired.append("repeats_neighbour")
    if signals.words_per_second > WORDS_PER_SECOND_HIGH and words >= FAST_MIN_WORDS:
        fired.append("too_fast")
    return fired


def silent(signals: SegmentSignals) -> bool:
    nsp = signals.no_speech_prob
    return nsp is not None and nsp > SILENT_NO_SPEECH and signals.avg_logprob < SILENT_LOG_PROB


def judge(signals: SegmentSignals) -> Verdict:
    sound, text = acoustic(signals), textual(signals)
    reasons, figures = (*sound, *text), signals.to_dict()
    if len(sound) >= 2 or (sound and text):
        return Verdict(True, reasons, review=False, figures=figures, silent=silent(signals))
    cut = ("loop", "repetitive") if signals.loop is not None else ()  # a loop in speech is cut, not doubted
    doubtful = STRONG in sound.values() or any(name not in cut for name in text)
    return Verdict(False, reasons, review=doubtful, loop=signals.loop, figures=figures)
