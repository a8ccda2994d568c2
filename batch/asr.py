"""Whisper recognition of speech chunks, in batches that may mix files and languages.

whisperx's `FasterWhisperPipeline` gives every item of a batch the same prompt (one language), and is fed
one file at a time, so a file with less than a batch of speech runs in a batch of its own. Here a batch
is any list of chunks: each item carries its own prompt, which CTranslate2 accepts, so the chunks of
many short recordings, in any languages, fill one batch. The decoding itself is whisperx's
(`WhisperModel.generate_segment_batched`): same features (whisperx's log-Mel), same options, same average
log-probability; only the prompt is per item.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batch.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

# Whisper reads 30 s windows.
WINDOW_SAMPLES = 30 * SAMPLE_RATE

# whisperx's decoding defaults (whisperx.asr.load_model), so that a transcript here reads as the
# whisperx command line's does with the same model.
WHISPERX_DEFAULTS: dict[str, Any] = {
    "beam_size": 5,
    "best_of": 5,
    "patience": 1,
    "length_penalty": 1,
    "repetition_penalty": 1,
    "no_repeat_ngram_size": 0,
    "temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    "compression_ratio_threshold": 2.4,
    "log_prob_threshold": -1.0,
    "no_speech_threshold": 0.6,
    "condition_on_previous_text": False,
    "prompt_reset_on_temperature": 0.5,
    "initial_prompt": None,
    "prefix": None,
    "suppress_blank": True,
    "suppress_tokens": [-1],
    "without_timestamps": True,
    "max_initial_timestamp": 0.0,
    "word_timestamps": False,
    "prepend_punctuations": "\"'“¿([{-",
    "append_punctuations": "\"'.。,，!！?？:：”)]}、",
    "max_new_tokens": None,
    "clip_timestamps": None,
    "hallucination_silence_threshold": None,
    "hotwords": None,
}


@dataclass(frozen=True)
class Chunk:
    """Up to 30 s of one file's speech, and the language to read it in (None: English-only model)."""

    audio: np.ndarray
    language: str | None


@dataclass(frozen=True)
class Recognized:
    text: str
    avg_logprob: float


class WhisperRecognizer:
    """A loaded Whisper model that reads batches of chunks and guesses languages."""

    def __init__(self, model: Any, options: Any, task: str = "transcribe"):
        self.model = model  # faster_whisper.WhisperModel
        self.options = options  # faster_whisper.transcribe.TranscriptionOptions
        self.task = task
        self._tokenizers: dict[str | None, Any] = {}
        self._n_mels = model.feat_kwargs.get("feature_size") or 80

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def detect_language(self, window: np.ndarray) -> tuple[str, float]:
        """Whisper's language guess for one window of up to 30 s, with its probability."""
        features = self._features(window[:WINDOW_SAMPLES])
        results = self.model.model.detect_language(self.model.encode(features))
        token, probability = results[0][0]
        return token[2:-2], round(float(probability), 4)

    def recognize(self, chunks: Sequence[Chunk]) -> list[Recognized]:
        """Read one batch of chunks (any mix of files and languages); results in the chunks' order."""
        if not chunks:
            return []
        features = np.stack([self._features(chunk.audio) for chunk in chunks])
        prompts = [self._prompt(chunk.language) for chunk in chunks]
        options = self.options
        results = self.model.model.generate(
            self.model.encode(features),
            prompts,
            beam_size=options.beam_size,
            patience=options.patience,
            length_penalty=options.length_penalty,
            max_length=self.model.max_length,
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            repetition_penalty=options.repetition_penalty,
            return_scores=True,
        )
        tokenizer = self._tokenizer(chunks[0].language)
        texts = tokenizer.tokenizer.decode_batch(
            [[token for token in result.sequences_ids[0] if token < tokenizer.eot] for result in results]
        )
        return [
            Recognized(text, _average_logprob(result, options.length_penalty))
            for text, result in zip(texts, results, strict=True)
        ]

    def _features(self, audio: np.ndarray) -> np.ndarray:
        from whisperx.audio import log_mel_spectrogram

        padding = max(0, WINDOW_SAMPLES - audio.shape[0])
        return log_mel_spectrogram(audio, n_mels=self._n_mels, padding=padding).numpy()

    def _prompt(self, language: str | None) -> list[int]:
        options, tokenizer = self.options, self._tokenizer(language)
        previous: list[int] = []
        if options.initial_prompt is not None:
            previous = tokenizer.encode(" " + options.initial_prompt.strip())
        return self.model.get_prompt(
            tokenizer,
            previous,
            without_timestamps=options.without_timestamps,
            prefix=options.prefix,
            hotwords=options.hotwords,
        )

    def _tokenizer(self, language: str | None) -> Any:
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[language] = Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task=self.task, language=language
            )
        return self._tokenizers[language]


def _average_logprob(result: Any, length_penalty: float) -> float:
    """whisperx's figure: the sequence score undone of its length penalty, over the tokens and the end token."""
    length = len(result.sequences_ids[0])
    return round(float(result.scores[0] * (length**length_penalty) / (length + 1)), 4)


def load_recognizer(
    model: str,
    device: str,
    compute_type: str,
    threads: int,
    model_dir: str | None,
    offline: bool,
    options: dict[str, Any] | None = None,
) -> WhisperRecognizer:
    """Load a Whisper model (name, hub id or CTranslate2 folder) with whisperx's decoding defaults.

    faster-whisper's model class is used as it is: whisperx's subclass adds only its one-prompt batch method,
    and importing whisperx.asr would pull in the transformers pipeline machinery (seconds of start-up).
    """
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import TranscriptionOptions

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
    values = WHISPERX_DEFAULTS | (options or {}) | {"multilingual": whisper.model.is_multilingual}
    return WhisperRecognizer(whisper, TranscriptionOptions(**values))
