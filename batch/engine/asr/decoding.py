"""How Whisper decodes: the options of the whisperx command line, and the temperature fallback.

The defaults are what whisperx's batched pipeline really does: beam search of 5 at temperature 0, one pass.
whisperx accepts `--temperature_increment_on_fallback` and the compression-ratio, log-probability and
no-speech thresholds but ignores them in that pipeline; here they work as in faster-whisper's own
`generate_with_fallback`, and only when asked for (a second temperature, or a no-speech threshold), so that
a default run reads exactly as whisperx's does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

# Characters a token must not hold under --suppress-numerals: whisperx's digits, % and currency symbols (it
# has $ and £), with € and ¥ as well. wav2vec2 alignment models cannot time such tokens; spoken forms can be.
NUMERAL_SYMBOLS = frozenset("0123456789%$£€¥")


@dataclass(frozen=True)
class DecodingOptions:
    task: Literal["transcribe", "translate"] = "transcribe"
    initial_prompt: str | None = None
    hotwords: str | None = None
    beam_size: int = 5
    best_of: int = 5  # candidates sampled at a temperature above 0
    patience: float = 1.0
    length_penalty: float = 1.0
    temperatures: tuple[float, ...] = (0.0,)  # tried in turn while a chunk's reading fails the thresholds
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float | None = None
    suppress_numerals: bool = False
    no_speech_probability: bool = False  # asked for by the hallucination guard (it changes no reading)

    @property
    def wants_no_speech_probability(self) -> bool:
        return self.no_speech_threshold is not None or self.no_speech_probability


def generation_arguments(options: DecodingOptions, temperature: float) -> dict[str, Any]:
    """faster-whisper's choice: beam search at temperature 0, else `best_of` samples at that temperature."""
    if temperature > 0:
        return {
            "beam_size": 1,
            "num_hypotheses": options.best_of,
            "sampling_topk": 0,
            "sampling_temperature": temperature,
        }
    return {"beam_size": options.beam_size, "patience": options.patience}


@dataclass(frozen=True)
class Attempt:
    """One reading of a chunk at one temperature."""

    text: str
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float | None = None


def reading(text: str, avg_logprob: float, no_speech_prob: float | None = None) -> Attempt:
    data = text.strip().encode("utf-8")  # faster-whisper's get_compression_ratio
    return Attempt(text, avg_logprob, len(data) / len(zlib.compress(data)), no_speech_prob)


def needs_fallback(options: DecodingOptions, attempt: Attempt) -> bool:
    """Too repetitive or too unlikely, unless it is silence (faster-whisper's rules)."""
    failed = (
        attempt.compression_ratio > options.compression_ratio_threshold
        or attempt.avg_logprob < options.log_prob_threshold
    )
    return failed and not _silent(options, attempt)


# The guard's second reading of a segment it judged hallucinated: faster-whisper's temperature fallback, from 0.2.
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)


def choose(options: DecodingOptions, attempts: list[Attempt]) -> Attempt:
    """The last attempt when it passed; when every temperature failed, the likeliest of those that are not
    too repetitive (or of all). A chunk found silent reads as nothing."""
    chosen = attempts[-1]
    if needs_fallback(options, chosen):
        repetitive = [a for a in attempts if a.compression_ratio <= options.compression_ratio_threshold]
        chosen = max(repetitive or attempts, key=lambda attempt: attempt.avg_logprob)
    if _silent(options, chosen):
        return Attempt("", chosen.avg_logprob, 0.0, chosen.no_speech_prob)
    return chosen


def _silent(options: DecodingOptions, attempt: Attempt) -> bool:
    """Whisper's no-speech probability above the threshold, and a reading not likely enough to keep anyway."""
    if options.no_speech_threshold is None or attempt.no_speech_prob is None:
        return False
    return attempt.no_speech_prob > options.no_speech_threshold and attempt.avg_logprob <= options.log_prob_threshold


def numeral_symbol_tokens(hf_tokenizer: Any) -> list[int]:
    """The text tokens (those below end-of-text) whose text holds a digit, % or a currency symbol, found as
    whisperx finds them: every token decoded on its own (one batch call to the `tokenizers` library)."""
    end_of_text = hf_tokenizer.token_to_id("<|endoftext|>")
    texts = hf_tokenizer.decode_batch([[token] for token in range(end_of_text)])
    return [token for token, text in enumerate(texts) if NUMERAL_SYMBOLS.intersection(text)]
