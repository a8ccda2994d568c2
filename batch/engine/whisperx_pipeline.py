"""The WhisperX pipeline: files stream through VAD, into ASR batches shared across files, then alignment and
diarization, each file handed back as soon as its last chunk is read.

  files --VAD (+ language)--> chunk queue --ASR batch (any files, any languages)--> finish (align, diarize)

The queue is kept at least a batch deep by taking in more files, so every ASR batch is full unless the input
has run out: forty voicemails of five seconds make five batches of eight, not forty batches of one. A
file's chunks are read in order and its transcript is the same as when it is read alone (see asr.py).

On a GPU, the VAD of the next files and the finishing of done ones run on threads of their own while an ASR
batch runs. On the CPU they run in turn on the caller's thread: the ASR already uses every core, and
sharing them would slow it down more than it gains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from batch.common.concurrency import ordered_map
from batch.common.errors import BatchError, describe
from batch.engine.asr.chunks import ChunkQueue, FileInFlight
from batch.engine.asr.languages import LanguageRule, main_language, segment_language, spoken_languages
from batch.engine.asr.recognizer import WINDOW_SAMPLES, Chunk, Recognized, WhisperRecognizer
from batch.engine.audio import SAMPLE_RATE
from batch.engine.config import PipelineConfig
from batch.engine.gpu.oom import raise_if_context_lost, run_with_oom_backoff
from batch.engine.loading import load_models
from batch.engine.pipeline import DecodedFile, FileOutcome, PipelineStats
from batch.engine.quality.coverage import speech_without_text
from batch.engine.quality.guard import QualityRecord, Reading, guard, recheck_aligned
from batch.engine.quality.signals import VadView
from batch.engine.vad.speech import SpeechChunk

log = logging.getLogger(__name__)

VAD_AHEAD = 2  # files whose speech is found ahead of the ASR, on a GPU


class WhisperxPipeline:
    """Whisper ASR with VAD, word alignment and diarization; models load once and serve every file."""

    def __init__(self, config: PipelineConfig, clock: Callable[[], float] = time.perf_counter):
        self.config = config
        self.clock = clock
        self.overlap = config.runtime.device == "cuda"
        self.recognizer: WhisperRecognizer | None = None
        self.vad: Any = None
        self.sizer: Any = None
        self._finisher: Any = None
        self._input_wait = 0.0  # seconds spent waiting for the next decoded file
        self._rule: LanguageRule | None = None  # each chunk's language from its own detection (asr.languages)
        self._stats = PipelineStats(batch_size=config.runtime.batch_size)

    # --- loading ---------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the models (once); refuse a language or task the model cannot do before any file."""
        if self.recognizer is not None:
            return
        models = load_models(self.config)
        self.vad, self.recognizer = models.vad, models.recognizer
        self.sizer, self._finisher = models.sizer, models.finisher
        self._rule = self.config.asr.language_rule(self.recognizer.multilingual)
        self._stats.load_seconds = models.seconds
        log.info("models loaded in %.1f s", models.seconds)

    def stats(self) -> PipelineStats:
        if self._finisher is not None:
            self._stats.alignment_models_loaded = self._finisher.alignment_models_loaded()
        return self._stats

    def close(self) -> None:
        """Nothing outlives a `process` call but the models, which stay with this process."""

    # --- the stream --------------------------------------------------------------------------------------------

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        files = iter(files)
        first = next(files, None)
        if first is None:
            return  # nothing to do: no model is loaded
        self.load()
        heard = ordered_map(
            self._find_speech,
            itertools.chain([first], self._timed_input(files)),
            workers=1,
            ahead=VAD_AHEAD if self.overlap else 0,
        )
        queue = ChunkQueue(self.recognizer, self.sizer, self._stats, self.clock, self._rule)
        finishing: deque[Future[FileOutcome]] = deque()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish") if self.overlap else None
        exhausted = False
        try:
            while True:
                while not exhausted and len(queue) < self.sizer.size_for("asr") and not should_stop():
                    with self._working():  # VAD on the caller's thread (CPU), or waiting for the VAD thread (GPU)
                        entry = next(heard, None)
                    if entry is None:
                        exhausted = True
                        break
                    file, speech = entry
                    with self._working():
                        admitted = self._admit(file, speech)
                    if isinstance(admitted, FileOutcome):
                        yield admitted
                    else:
                        queue.add(admitted)
                if should_stop() or (exhausted and not queue):
                    break
                with self._working():
                    done_files = queue.read_batch()
                    for done in done_files:
                        done.error = done.error or done.file.overdue("in asr")
                        self._guard(done)
                    finishing.extend(self._start_finish(done, pool) for done in done_files)
                while finishing and finishing[0].done():
                    yield finishing.popleft().result()
            while finishing:  # files whose every chunk is read are written, even when stopping
                with self._working():
                    outcome = finishing.popleft().result()
                yield outcome
        finally:
            heard.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        """Time the models spend on files; the time they wait for input (fetch, decode, model loading, which
        the caller does inside `next(files)`) is taken out, and so is the caller's time between outcomes."""
        started, before = self.clock(), self._input_wait
        try:
            yield
        finally:
            self._stats.busy_seconds += self.clock() - started - (self._input_wait - before)

    def _timed_input(self, files: Iterator[DecodedFile]) -> Iterator[DecodedFile]:
        while True:
            started = self.clock()
            file = next(files, None)
            self._input_wait += self.clock() - started
            if file is None:
                return
            yield file

    def _find_speech(self, file: DecodedFile) -> list[SpeechChunk]:
        if file.audio is None:
            return []
        with file.stopwatch.stage("vad"):
            return self.vad.speech_chunks(file.audio)

    def _admit(self, file: DecodedFile, speech: Future[list[SpeechChunk]]) -> FileInFlight | FileOutcome:
        """A file with speech joins the queue; one that failed or holds no speech is done at once."""
        if file.error is not None:
            return FileOutcome(file, error=file.error)
        try:
            chunks = speech.result()
            language, probability = self._language(file, chunks)
        except BatchError:
            raise
        except Exception as exc:
            raise_if_context_lost(exc)
            return FileOutcome(file, error=exc)
        overdue = file.overdue("in vad")  # --file-timeout: checked as each stage ends
        if overdue is not None:
            return FileOutcome(file, error=overdue)
        if not chunks:
            outcome = FileOutcome(file, transcribed=True, language=language, language_probability=probability)
            outcome.quality = QualityRecord().to_dict()  # no speech found: a person may want to know why
            return outcome
        return FileInFlight(file, chunks, language, probability)

    def _language(self, file: DecodedFile, chunks: list[SpeechChunk]) -> tuple[str | None, float | None]:
        """The configured language, English for an English-only model, none yet when each chunk's is detected,
        else detected on this file alone (on the first 30 s from where its speech starts: --task translate)."""
        assert self.recognizer is not None and file.audio is not None
        requested = self.config.asr.language
        if not self.recognizer.multilingual:
            return "en", None
        if requested != "auto" or self._rule is not None:
            return (None if requested == "auto" else requested), None
        if len(self.config.asr.languages) == 1:  # a choice of one: nothing to detect
            return self.config.asr.languages[0], None
        if not chunks:
            return None, None
        start = int(chunks[0].start * SAMPLE_RATE)
        window = file.audio[start : start + WINDOW_SAMPLES]
        with file.stopwatch.stage("language"):
            guess, _ = run_with_oom_backoff(  # on the GPU beside the other stages: under the same budget
                "language", self.sizer, lambda size: self.recognizer.detect_language(window, self.config.asr.languages)
            )
            return guess

    # --- after the ASR --------------------------------------------------------------------------------------

    def _guard(self, state: FileInFlight) -> None:
        """The hallucination guard over a file whose chunks are all read (batch.engine.quality), on the ASR's
        thread: a segment judged hallucinated is read once more, with the temperature fallback. Off, nothing is
        judged and the record holds the speech alone (what is said of the text comes once it is final)."""
        options = self.config.quality
        if state.error is not None:
            return
        if not options.enabled:
            state.quality = QualityRecord(speech_seconds=speech_seconds_of(state.chunks)).to_dict()
            return
        try:
            with state.file.stopwatch.stage("quality"):
                readings = [reading_of(chunk, text) for chunk, text in zip(state.chunks, state.texts, strict=True)]
                language = state.language or main_language(chunk_segments(state))[0]
                kept, record = guard(readings, options, language, lambda indices: self._reread(state, indices))
        except BatchError:
            raise
        except Exception as exc:  # the transcript is read whole: it is kept as whisperx wrote it, for review
            raise_if_context_lost(exc)
            state.quality = unguarded(state.file.key, state.chunks, exc).to_dict()
            return
        state.texts = [guarded(text, r) for text, r in zip(state.texts, kept, strict=True)]
        state.quality = record.to_dict()

    def _reread(self, state: FileInFlight, indices: list[int]) -> list[Reading]:
        from batch.engine.asr.decoding import FALLBACK_TEMPERATURES
        from batch.engine.gpu.oom import map_in_batches

        assert self.recognizer is not None
        recognizer = self.recognizer
        chunks = list(state.asr_chunks(None))
        languages = state.chunk_languages() if recognizer.multilingual else [None] * len(chunks)
        result = map_in_batches(  # each chunk read again in the language it was read in, not detected again
            "asr",
            self.sizer,
            [Chunk(chunks[index].audio, languages[index]) for index in indices],
            lambda batch: recognizer.recognize(batch, FALLBACK_TEMPERATURES, bounded=True),
        )
        return [reading_of(state.chunks[index], again) for index, again in zip(indices, result.outputs, strict=True)]

    def _start_finish(self, state: FileInFlight, pool: ThreadPoolExecutor | None) -> Future[FileOutcome]:
        if pool is not None:
            return pool.submit(self._finish, state)
        future: Future[FileOutcome] = Future()
        try:
            future.set_result(self._finish(state))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def _finish(self, state: FileInFlight) -> FileOutcome:
        from batch.engine.gpu.oom import merge_records

        outcome = FileOutcome(state.file, language=state.language, language_probability=state.probability)
        if state.asr_records:
            outcome.gpu["asr"] = merge_records(state.asr_records)
        if state.error is not None:
            outcome.error = state.error
            return outcome
        outcome.transcribed = True
        outcome.quality = state.quality
        outcome.segments = segments_of(state.chunks, state.texts, state.language, state.probability)
        if self._rule is not None:
            self._file_language(outcome, state)
        outcome.languages = spoken_languages(outcome.segments)
        try:
            self._finisher.finish(outcome)
        except BatchError:
            raise
        except Exception as exc:  # alignment or diarization broke on this file: it fails alone, unwritten
            raise_if_context_lost(exc)
            outcome.transcribed, outcome.error = False, exc
        if outcome.transcribed and outcome.quality is not None and (outcome.alignment or {}).get("status") == "aligned":
            self._recheck_aligned(outcome)
        if outcome.transcribed and outcome.quality is not None:
            outcome.quality["speech_without_text_seconds"] = speech_without_text_of(state.chunks, outcome.segments)
        self._stats.gpu_records.extend(record for stage, record in outcome.gpu.items() if stage != "asr")
        return outcome

    def _file_language(self, outcome: FileOutcome, state: FileInFlight) -> None:
        """The language spoken most, by seconds of segments (of speech chunks, when no text was kept); a forced
        language keeps no file probability (it was not detected), as without the check."""
        language, probability = main_language(outcome.segments)
        if language is None:
            language, probability = main_language(chunk_segments(state))
        assert self._rule is not None
        if self._rule.forced is not None:
            probability = None
        outcome.language = language or state.language
        outcome.language_probability = probability

    def _recheck_aligned(self, outcome: FileOutcome) -> None:
        """The guard's look at the aligned words; should it break, the segments stay as aligned, for review."""
        assert outcome.quality is not None
        quality = copy.deepcopy(outcome.quality)  # updated in place: kept only once the check is through
        try:
            outcome.segments = recheck_aligned(outcome.segments, quality, self.config.quality.mode)
        except BatchError:
            raise
        except Exception as exc:
            raise_if_context_lost(exc)
            outcome.quality["guard_error"] = guard_failure(outcome.key, exc)
            return
        outcome.quality = quality


def unguarded(key: str, chunks: list[SpeechChunk], exc: Exception) -> QualityRecord:
    """The record of a file the guard broke on: its speech, and why nothing was judged."""
    return QualityRecord(speech_seconds=speech_seconds_of(chunks), guard_error=guard_failure(key, exc))


def speech_seconds_of(chunks: list[SpeechChunk]) -> float:
    return sum(chunk.end - chunk.start if chunk.speech_seconds is None else chunk.speech_seconds for chunk in chunks)


def speech_without_text_of(chunks: list[SpeechChunk], segments: list[dict[str, Any]]) -> float:
    """The seconds of the VAD's speech regions no kept segment overlaps (batch.engine.quality.coverage)."""
    speech = [region for chunk in chunks for region in chunk.speech_regions]
    return round(speech_without_text(speech, [(segment["start"], segment["end"]) for segment in segments]), 3)


def guard_failure(key: str, exc: Exception) -> str:
    """The guard's error as the manifest keeps it (secrets removed), logged once: the file goes on unguarded."""
    error = describe(exc)
    message = f"{error['type']}: {error['message'].splitlines()[0]}"  # never empty (describe)
    log.warning("%s: the hallucination guard failed (%s): the transcript is kept unguarded, for review", key, message)
    return message


def guarded(read: Recognized | None, kept: Reading) -> Recognized:
    """The chunk's reading as the guard kept it (its text dropped, or read again), its detected language kept."""
    assert read is not None
    return dataclasses.replace(read, text=kept.text, avg_logprob=kept.avg_logprob, no_speech_prob=kept.no_speech_prob)


def reading_of(chunk: SpeechChunk, recognized: Recognized | None) -> Reading:
    """A chunk's reading as the hallucination guard takes it: plain values."""
    assert recognized is not None
    vad = VadView(chunk.speech_seconds, chunk.mean_score) if chunk.speech_seconds is not None else None
    return Reading(chunk.start, chunk.end, recognized.text, recognized.avg_logprob, recognized.no_speech_prob, vad)


def segments_of(
    chunks: list[SpeechChunk],
    texts: list[Recognized | None],
    language: str | None = None,
    probability: float | None = None,
) -> list[dict[str, Any]]:
    """One segment per chunk that Whisper read something in, timed by the VAD, in the language its chunk was
    detected in (else the file's `language`)."""
    segments = []
    for chunk, recognized in zip(chunks, texts, strict=True):
        if recognized is not None and recognized.text.strip():
            detected = recognized.detected
            segments.append(
                {
                    "start": round(chunk.start, 3),
                    "end": round(chunk.end, 3),
                    "text": recognized.text.strip(),
                    "avg_logprob": recognized.avg_logprob,
                    **(
                        segment_language(detected)
                        if detected is not None
                        else {"language": language, "language_probability": probability}
                    ),
                }
            )
    return segments


def chunk_segments(state: FileInFlight) -> list[dict[str, Any]]:
    """Every chunk of the file with its detected language, text or none: what a file whose every text was
    dropped is said to be spoken in."""
    return [
        {"start": chunk.start, "end": chunk.end, **segment_language(text.detected)}
        for chunk, text in zip(state.chunks, state.texts, strict=True)
        if text is not None and text.detected is not None
    ]
