"""After the ASR: time every word (wav2vec2) and label speakers (pyannote), each model loaded on first use."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from batch.engine.config import PipelineConfig
from batch.engine.pipeline import FileOutcome


class Finisher:
    """Aligns and diarizes one transcribed file at a time; models load when the first file needs them."""

    def __init__(self, config: PipelineConfig, sizer: Any):
        self.config = config
        self.sizer = sizer
        self._aligner: Any = None
        self._diarizer: Any = None
        self._lock = threading.Lock()  # one file at a time, whichever thread finishes it

    def alignment_models_loaded(self) -> list[str]:
        return list(self._aligner.loads) if self._aligner is not None else []

    def finish(self, outcome: FileOutcome) -> None:
        with self._lock, self._on_the_cpu():
            stopwatch = outcome.file.stopwatch
            if self.config.align.enabled:
                with stopwatch.stage("align"):
                    self._align(outcome)
            if self.config.diarize.enabled:
                with stopwatch.stage("diarize"):
                    self._diarize(outcome)

    @contextlib.contextmanager
    def _on_the_cpu(self) -> Iterator[None]:
        """On the CPU the stages run in turn on one thread, so while a file is finished nothing else runs:
        - wav2vec2 and pyannote get every core the ASR would (torch is held to one thread for the VAD: batch.engine.
          loading), and hand them back after;
        - their large activations go back to the kernel when freed, where the malloc setting would keep them in the
          heap (batch.common.runtime.large_blocks_mapped). Measured on MIXED at 0.3 with alignment and diarization:
          peak RSS 4.2-4.3 GiB kept, 3.2 GiB handed back (the command line's 3.7 GiB); the cost is diarization's,
          mapped afresh for every batch of windows: 37 s -> 49 s (alignment's is none)."""
        if self.config.runtime.device != "cpu":
            yield
            return
        import torch

        from batch.common.runtime import large_blocks_mapped

        held = torch.get_num_threads()
        torch.set_num_threads(self.config.runtime.threads)
        try:
            with large_blocks_mapped():
                yield
        finally:
            torch.set_num_threads(held)

    def _align(self, outcome: FileOutcome) -> None:
        """Time every word, each segment with its own language's model; when that cannot be done the segment
        timings stay and the reason is recorded."""
        from batch.engine.align.aligner import AlignmentModelNotLoaded, AlignmentOutcome, AlignmentUnavailable
        from batch.engine.asr.languages import carry_languages

        if not outcome.segments or outcome.language is None:
            outcome.alignment = AlignmentOutcome("no_speech").to_dict()
            return
        groups: dict[str, list[dict[str, Any]]] = {}
        for segment in outcome.segments:
            groups.setdefault(segment.get("language") or outcome.language, []).append(segment)
        aligned: list[dict[str, Any]] = []
        results: dict[str, dict[str, Any]] = {}
        for language, segments in groups.items():
            try:
                done, result = self._align_language(outcome, segments, language)
            except AlignmentUnavailable as problem:
                model = self._load_aligner().model_for(language)
                done, result = segments, AlignmentOutcome("failed", model=model, reason=str(problem))
                if language == outcome.language:
                    outcome.error = problem
            except AlignmentModelNotLoaded as problem:
                if language == outcome.language:  # the file's own language: a run with the model does the file
                    raise
                # A stretch in another language whose model is not here (an air-gapped job that pulled the
                # main language's): its segments keep their timings, the file is recorded, the reason with it.
                model = self._load_aligner().model_for(language)
                done, result = segments, AlignmentOutcome("unavailable", model=model, reason=str(problem))
            aligned += carry_languages(done, segments)
            results[language] = result.to_dict()
        outcome.segments = sorted(aligned, key=lambda segment: segment["start"])  # stable: a group's order stays
        outcome.alignment = alignment_of(results, outcome.language)

    def _align_language(self, outcome: FileOutcome, segments: list[dict[str, Any]], language: str) -> tuple[Any, Any]:
        from batch.engine.gpu.oom import GpuOutOfMemory, merge_records, run_with_oom_backoff

        aligner, audio = self._load_aligner(), outcome.file.audio
        assert audio is not None
        # Loaded before the back-off: an out-of-memory while loading is not the batch's (batch.engine.gpu.placing).
        aligner.ready(language)
        if self.config.runtime.device == "cpu":  # one segment a forward: it keeps the cores busy, bit for bit
            return aligner.align(segments, audio, language)
        earlier = outcome.gpu.get("align")  # another language's segments, aligned before these
        try:
            done, outcome.gpu["align"] = run_with_oom_backoff(
                "align",
                self.sizer,
                lambda size: aligner.align(segments, audio, language, size),
                items=len(segments),
                max_size=aligner.most_per_forward(language, len(segments)),  # no more granted than it runs
            )
        except GpuOutOfMemory as exc:
            outcome.gpu["align"] = exc.record
            raise
        finally:
            if earlier is not None and outcome.gpu["align"] is not earlier:
                outcome.gpu["align"] = merge_records([earlier, outcome.gpu["align"]])
        return done

    def _diarize(self, outcome: FileOutcome) -> None:
        from batch.engine.diarize.diarizer import assign_speakers
        from batch.engine.gpu.oom import GpuOutOfMemory, run_with_oom_backoff

        diarizer, settings, audio = self._load_diarizer(), self.config.diarize, outcome.file.audio

        def turns(batch_size: int) -> list[dict[str, Any]]:
            return diarizer.turns(
                audio, settings.num_speakers, settings.min_speakers, settings.max_speakers, batch_size
            )

        try:
            outcome.turns, outcome.gpu["diarize"] = run_with_oom_backoff("diarize", self.sizer, turns)
        except GpuOutOfMemory as exc:
            outcome.gpu["diarize"] = exc.record
            raise
        outcome.segments = assign_speakers(outcome.segments, outcome.turns)

    def _load_aligner(self) -> Any:
        if self._aligner is None:
            from batch.engine.align.aligner import Aligner

            align, runtime, hub = self.config.align, self.config.runtime, self.config.hub
            budget = None if runtime.device == "cpu" else self.sizer  # models go on the GPU under the run's budget
            self._aligner = Aligner(
                runtime.device, hub.cache_dir, hub.offline, align.model, dict(align.per_language), budget
            )
        return self._aligner

    def _load_diarizer(self) -> Any:
        if self._diarizer is None:
            from batch.engine.diarize.diarizer import Diarizer

            diarize, runtime, hub = self.config.diarize, self.config.runtime, self.config.hub
            self._diarizer = Diarizer(diarize.model, runtime.device, hub.token, hub.cache_dir, hub.offline)
        return self._diarizer


# When a file's languages align differently, its alignment says the worst of them.
_ALIGNMENT_SEVERITY = ("failed", "unavailable", "aligned", "no_speech")


def alignment_of(results: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """A file's alignment: its one language's, or (several) the main language's with the worst status of them
    all and each language's own under `languages`."""
    if len(results) == 1:
        return next(iter(results.values()))
    rank = {status: order for order, status in enumerate(_ALIGNMENT_SEVERITY)}
    worst = min((result["status"] for result in results.values()), key=lambda status: rank.get(status, len(rank)))
    first = results.get(main) or next(iter(results.values()))
    return {**first, "status": worst, "languages": results}
