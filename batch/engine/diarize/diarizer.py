"""Speaker diarization with pyannote (through whisperx), fed the decoded array, loaded once per run."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

from batch.common.errors import EnvironmentProblem, redact
from batch.common.runtime import pyannote_telemetry_off_unless_asked

if TYPE_CHECKING:  # numpy only in a signature
    import numpy as np

log = logging.getLogger(__name__)

# When diarization finds no speaker turn at all in a file that has speech, its segments are labelled so.
UNKNOWN_SPEAKER = "UNKNOWN"


class Diarizer:
    def __init__(self, model: str, device: str, token: str | None, cache_dir: str | None, offline: bool):
        self.model_name = model
        self._pipeline = load_diarization(model, device, token, cache_dir, offline)
        self.shared_trunk = share_the_embedding_trunk(self._pipeline.model)

    def turns(
        self, audio: np.ndarray, num: int | None, low: int | None, high: int | None, batch_size: int | None = None
    ) -> list[dict[str, Any]]:
        """Speaker turns [{start, end, speaker}] of the whole array, in time order."""
        if batch_size is not None:  # pyannote batches segmentation windows and speaker embeddings
            self._pipeline.model.segmentation_batch_size = batch_size
            self._pipeline.model.embedding_batch_size = batch_size
        frame = self._pipeline(audio, num_speakers=num, min_speakers=low, max_speakers=high)
        turns = [
            {"start": round(float(row.start), 3), "end": round(float(row.end), 3), "speaker": str(row.speaker)}
            for row in frame.itertuples()
        ]
        return sorted(turns, key=lambda turn: (turn["start"], turn["end"]))


def load_diarization(model: str, device: str, token: str | None, cache_dir: str | None, offline: bool) -> Any:
    """whisperx's DiarizationPipeline, with pyannote's failures turned into what to do about them."""
    pyannote_telemetry_off_unless_asked()
    from whisperx.diarize import DiarizationPipeline

    printed = io.StringIO()
    try:
        # pyannote prints its download failure (with a `token='hf_....'` example) on every attempt; the
        # message raised below says what to do, once.
        with contextlib.redirect_stdout(printed):
            return DiarizationPipeline(model_name=model, token=token, device=device, cache_dir=cache_dir)
    except Exception as exc:
        log.debug("pyannote printed: %s", printed.getvalue().strip())
        raise EnvironmentProblem(diarization_failure_message(model, exc, offline)) from exc


def share_the_embedding_trunk(pipeline: Any) -> bool:
    """One pass of the speaker-embedding network per window instead of one per local speaker (community-1 has
    three): the same turns for a third of the embedding work (batch.engine.diarize.speaker_embeddings). Pipelines whose
    embedding model is not a WeSpeaker ResNet keep pyannote's own method."""
    from pyannote.audio.pipelines.speaker_diarization import SpeakerDiarization

    from batch.engine.diarize.speaker_embeddings import supports_shared_trunk, use_shared_trunk_embeddings

    try:
        if not isinstance(pipeline, SpeakerDiarization) or not supports_shared_trunk(pipeline):
            return False
        use_shared_trunk_embeddings(pipeline)
    except Exception as exc:  # a speed-up only (it reads pyannote internals): never the reason a file fails
        log.warning("speaker embeddings: pyannote's own method is used (%s: %s)", type(exc).__name__, exc)
        return False
    return True


def diarization_failure_message(model: str, exc: BaseException, offline: bool) -> str:
    text = redact(f"{type(exc).__name__}: {exc}")
    gated = any(word in text.lower() for word in ("gated", "401", "403", "unauthorized", "access to model"))
    if offline or "offline" in text.lower() or "LocalEntryNotFound" in text:
        return (
            f"diarization model {model!r} is not in the model cache and the hub is not reachable "
            "(HF_HUB_OFFLINE or no network): run `whisperx-batch models pull --diarize` where there is network"
        )
    if gated or "NoneType" in text:
        # pyannote returns None (and whisperx then fails on it) when the hub refuses the download.
        return (
            f"diarization model {model!r} could not be downloaded: the token is not accepted for it. Accept the "
            f"model's terms at https://hf.co/{model} with the account the token belongs to, then rerun"
        )
    return f"diarization model {model!r} could not be loaded: {text}"


def assign_speakers(segments: list[dict[str, Any]], turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every segment and every timed word gets the speaker it overlaps most, or the nearest one in a gap."""
    if not segments:
        return segments
    if not turns:
        for segment in segments:
            segment["speaker"] = UNKNOWN_SPEAKER
            for word in segment.get("words", []):
                if "start" in word:
                    word["speaker"] = UNKNOWN_SPEAKER
        return segments
    import pandas as pd

    pyannote_telemetry_off_unless_asked()
    from whisperx.diarize import assign_word_speakers

    frame = pd.DataFrame(turns)
    result = assign_word_speakers(frame, {"segments": segments}, fill_nearest=True)
    return result["segments"]
