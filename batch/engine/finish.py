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
        """Time every word; when that cannot be done the segment timings stay and the reason is recorded."""
        from batch.engine.align.aligner import AlignmentOutcome, AlignmentUnavailable
        from batch.engine.gpu.oom import GpuOutOfMemory, run_with_oom_backoff

        if not outcome.segments or outcome.language is None:
            outcome.alignment = AlignmentOutcome("no_speech").to_dict()
            return
        aligner = self._load_aligner()
        audio, segments, language = outcome.file.audio, outcome.segments, outcome.language
        assert audio is not None
        # Loaded before the back-off: an out-of-memory while loading is not the batch's (batch.engine.gpu.placing).
        aligner.ready(language)
        try:
            if self.config.runtime.device == "cpu":  # one segment a forward: it keeps the cores busy, bit for bit
                outcome.segments, result = aligner.align(segments, audio, language)
            else:
                (outcome.segments, result), outcome.gpu["align"] = run_with_oom_backoff(
                    "align",
                    self.sizer,
                    lambda size: aligner.align(segments, audio, language, size),
                    items=len(segments),
                    max_size=aligner.most_per_forward(language, len(segments)),  # no more granted than it runs
                )
        except GpuOutOfMemory as exc:
            outcome.gpu["align"] = exc.record
            raise
        except AlignmentUnavailable as problem:
            model = aligner.model_for(outcome.language)
            result, outcome.error = AlignmentOutcome("failed", model=model, reason=str(problem)), problem
        outcome.alignment = result.to_dict()

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
