"""Whisper recognition of speech chunks, in batches that may mix files and languages.

whisperx's `FasterWhisperPipeline` gives every item of a batch the same prompt (one language), and is fed
one file at a time, so a file with less than a batch of speech runs in a batch of its own. Here a batch
is any list of chunks: each item carries its own prompt, which CTranslate2 accepts, so the chunks of
many short recordings, in any languages, fill one batch. The decoding itself is whisperx's
(`WhisperModel.generate_segment_batched`): same features (whisperx's log-Mel), same options, same average
log-probability; only the prompt is per item. The temperature fallback whisperx's batched decoding leaves out
is here when asked for (batch.engine.asr.decoding): chunks that fail it are read again together at the next temperature.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batch.engine.asr.decoding import (
    Attempt,
    DecodingOptions,
    choose,
    generation_arguments,
    needs_fallback,
    numeral_symbol_tokens,
    reading,
)
from batch.engine.asr.languages import Detected, LanguageRule
from batch.engine.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

# Whisper reads 30 s windows.
WINDOW_SAMPLES = 30 * SAMPLE_RATE

# What whisperx's batched decoding fixes and this tool does not expose (see batch.engine.asr.decoding for the rest).
FIXED_GENERATION: dict[str, Any] = {"repetition_penalty": 1, "no_repeat_ngram_size": 0, "suppress_blank": True}
MODEL_SUPPRESSED_TOKENS = [-1]  # CTranslate2: the model's own list of non-speech symbols


@dataclass(frozen=True)
class Chunk:
    """Up to 30 s of one file's speech, and the language to read it in (None: English-only model), or the rule
    that chooses it from Whisper's detection on this chunk (batch.engine.asr.languages)."""

    audio: np.ndarray
    language: str | None
    rule: LanguageRule | None = None


# The guard's second reading stops at this many tokens a second of audio (plus MIN_READING_TOKENS): fast speech is
# about 4 words, 5-6 tokens, a second; twice that leaves any real speech whole.
READING_TOKENS_PER_SECOND = 12
MIN_READING_TOKENS = 16


@dataclass(frozen=True)
class Recognized:
    text: str
    avg_logprob: float
    no_speech_prob: float | None = None  # when asked for (DecodingOptions.wants_no_speech_probability)
    detected: Detected | None = None  # the chunk's language as detected, when its Chunk had a rule


class WhisperRecognizer:
    """A loaded Whisper model that reads batches of chunks and guesses languages."""

    def __init__(self, model: Any, options: DecodingOptions | None = None):
        self.model = model  # faster_whisper.WhisperModel
        self.options = options or DecodingOptions()
        self._tokenizers: dict[str | None, Any] = {}
        self._prompts: dict[str | None, list[int]] = {}
        self._n_mels = model.feat_kwargs.get("feature_size") or 80
        self._eot = model.hf_tokenizer.token_to_id("<|endoftext|>")
        self._suppressed = MODEL_SUPPRESSED_TOKENS + (
            numeral_symbol_tokens(model.hf_tokenizer) if self.options.suppress_numerals else []
        )
        self.detections = 0  # chunks whose language was detected, and the seconds that took (the run's figures)
        self.detection_seconds = 0.0

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def knows_language(self, code: str) -> bool:
        return self.model.hf_tokenizer.token_to_id(f"<|{code}|>") is not None

    def prompt_tokens(self) -> int:
        """How many tokens the initial prompt and the hotwords add to every prompt."""
        tokenizer = self._tokenizer("en" if self.multilingual else None)
        texts = (self.options.initial_prompt, self.options.hotwords)
        return sum(len(tokenizer.encode(" " + text)) for text in texts if text)

    def detect_language(self, window: np.ndarray, among: Collection[str] = ()) -> tuple[str, float]:
        """Whisper's language guess for one window of up to 30 s, with its probability; with `among`, the
        likeliest of those languages (its probability still Whisper's, over every language)."""
        features = self._features(window[:WINDOW_SAMPLES])
        guesses = [
            (token[2:-2], probability)
            for token, probability in self.model.model.detect_language(self.model.encode(features))[0]
        ]
        language, probability = next(guess for guess in guesses if not among or guess[0] in among)
        return language, round(float(probability), 4)

    def recognize(
        self, chunks: Sequence[Chunk], temperatures: Sequence[float] | None = None, bounded: bool = False
    ) -> list[Recognized]:
        """Read one batch of chunks (any mix of files and languages); results in the chunks' order.

        Chunks whose reading fails the thresholds are read again, together, at the next temperature (of
        `temperatures`, when given: the hallucination guard's second reading; else the options'). `bounded`
        (the guard's second reading): no reading runs longer than the batch's audio could hold when spoken
        fast (READING_TOKENS_PER_SECOND), where a loop would otherwise run to the model's longest output at
        every temperature and every sample."""
        if not chunks:
            return []
        features = np.stack([self._features(chunk.audio) for chunk in chunks])
        encoded = self.model.encode(features)  # once: the language detection and the first reading share it
        detected = self._detect(encoded, chunks)
        languages = [found.language if found else chunk.language for chunk, found in zip(chunks, detected, strict=True)]
        prompts = [self._prompt(language) for language in languages]
        attempts: list[list[Attempt]] = [[] for _ in chunks]
        pending = list(range(len(chunks)))
        longest = self.model.max_length
        if bounded:
            seconds = max(chunk.audio.shape[0] for chunk in chunks) / SAMPLE_RATE
            spoken = max(len(prompt) for prompt in prompts) + MIN_READING_TOKENS
            longest = min(longest, spoken + math.ceil(seconds * READING_TOKENS_PER_SECOND))
        for temperature in temperatures or self.options.temperatures:
            subset = encoded if len(pending) == len(chunks) else self.model.encode(features[pending])
            read = self._read(subset, [prompts[index] for index in pending], temperature, longest)
            for index, attempt in zip(pending, read, strict=True):
                attempts[index].append(attempt)
            pending = [index for index in pending if needs_fallback(self.options, attempts[index][-1])]
            if not pending:
                break
        chosen = [choose(self.options, tries) for tries in attempts]
        return [
            Recognized(attempt.text, round(attempt.avg_logprob, 4), _rounded(attempt.no_speech_prob), found)
            for attempt, found in zip(chosen, detected, strict=True)
        ]

    def _detect(self, encoded: Any, chunks: Sequence[Chunk]) -> list[Detected | None]:
        """Each chunk's language by its rule, from Whisper's detection on the encoder output of the whole batch
        (one decoder step for every item; nothing for a batch without a rule)."""
        if all(chunk.rule is None for chunk in chunks):
            return [None] * len(chunks)
        started = time.perf_counter()
        guesses = self.model.model.detect_language(encoded)
        self.detection_seconds += time.perf_counter() - started
        self.detections += sum(chunk.rule is not None for chunk in chunks)
        return [
            None if chunk.rule is None else chunk.rule.choose([(token[2:-2], p) for token, p in item])
            for chunk, item in zip(chunks, guesses, strict=True)
        ]

    def _read(self, encoded: Any, prompts: list[list[int]], temperature: float, max_length: int) -> list[Attempt]:
        options = self.options
        no_speech = {"return_no_speech_prob": True} if options.wants_no_speech_probability else {}
        results = self.model.model.generate(
            encoded,
            prompts,
            length_penalty=options.length_penalty,
            max_length=max_length,
            suppress_tokens=self._suppressed,
            return_scores=True,
            **FIXED_GENERATION,
            **generation_arguments(options, temperature),
            **no_speech,
        )
        texts = self.model.hf_tokenizer.decode_batch(
            [[token for token in result.sequences_ids[0] if token < self._eot] for result in results]
        )
        return [
            reading(
                text, _average_logprob(result, options.length_penalty), result.no_speech_prob if no_speech else None
            )
            for text, result in zip(texts, results, strict=True)
        ]

    def _features(self, audio: np.ndarray) -> np.ndarray:
        from whisperx.audio import log_mel_spectrogram

        padding = max(0, WINDOW_SAMPLES - audio.shape[0])
        return log_mel_spectrogram(audio, n_mels=self._n_mels, padding=padding).numpy()

    def _prompt(self, language: str | None) -> list[int]:
        """whisperx's prompt: the initial prompt as previous text, the hotwords, the task and language."""
        if language not in self._prompts:
            options, tokenizer = self.options, self._tokenizer(language)
            previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
            self._prompts[language] = self.model.get_prompt(
                tokenizer, previous, without_timestamps=True, prefix=None, hotwords=options.hotwords
            )
        return self._prompts[language]

    def _tokenizer(self, language: str | None) -> Any:
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[language] = Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task=self.options.task, language=language
            )
        return self._tokenizers[language]


def _rounded(probability: float | None) -> float | None:
    return None if probability is None else round(float(probability), 4)


def _average_logprob(result: Any, length_penalty: float) -> float:
    """whisperx's figure: the sequence score undone of its length penalty, over the tokens and the end token."""
    length = len(result.sequences_ids[0])
    return float(result.scores[0] * (length**length_penalty) / (length + 1))


def load_recognizer(
    model: str,
    device: str,
    compute_type: str,
    threads: int,
    model_dir: str | None,
    offline: bool,
    options: DecodingOptions | None = None,
) -> WhisperRecognizer:
    """Load a Whisper model (name, hub id or CTranslate2 folder) to decode with `options` (whisperx's defaults).

    faster-whisper's model class is used as it is: whisperx's subclass adds only its one-prompt batch method,
    and importing whisperx.asr would pull in the transformers pipeline machinery (seconds of start-up).
    """
    from faster_whisper import WhisperModel

    # faster-whisper prints nothing, but stdout belongs to --dry-run output: keep it clean whatever it does.
    with contextlib.redirect_stdout(io.StringIO()):
        whisper = WhisperModel(
            model,
            device=device,
            compute_type=compute_type,
            download_root=model_dir,
            local_files_only=offline,
            cpu_threads=threads,
        )
    return WhisperRecognizer(whisper, options)
