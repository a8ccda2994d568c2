"""The production speaker encoder: the embedding model of the diarization pipeline (community-1's WeSpeaker
ResNet34), loaded on its own, by pyannote's own code, from where diarization loads it.

The pipeline's config.yaml says which embedding model it uses (`$model/embedding` for community-1: its embedding/
subfolder; a hub name for older pipelines); pyannote's `download_from_hf_hub` fetches the weights into the same cache
(`--model-dir`, the token, HF_HUB_OFFLINE) and `PyannoteAudioPretrainedSpeakerEmbedding` loads them, as the
pipeline would. The revision is a digest of the weights file itself: the same weights agree wherever they are
stored, and a hub commit that changes only a README changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch.common.errors import EnvironmentProblem, redact
from batch.common.runtime import pyannote_telemetry_off_unless_asked
from batch.engine.speakers.encoder import L2, SAMPLE_RATE, unit

log = logging.getLogger(__name__)

#: Cosine at or above which two WeSpeaker embeddings are taken as one voice when the library has no calibrated
#: threshold: LinTO's diarization benchmark (linagora-labs/speaker-diarization-benchmark) raised it from 0.5 to 0.66,
#: and wrong names on 13 recordings with no enrolled speaker fell from 25 to 3.
WESPEAKER_DEFAULT_THRESHOLD = 0.66
#: Longer speech is embedded in windows of at most this length and their unit vectors averaged (weighted by
#: length): the ResNet's activations grow with the input (about 30 MB a layer for 30 s), a window bounds them.
MAX_WINDOW_SECONDS = 30.0
CHECKPOINT = "pytorch_model.bin"


@dataclass(frozen=True)
class EmbeddingSource:
    """Where the embedding model's weights are: a hub repository or local folder, and a subfolder in it."""

    checkpoint: str
    subfolder: str | None


class PyannoteEncoder:
    """A pyannote embedding model (WeSpeakerResNet34 for community-1) as a SpeakerEncoder."""

    normalisation = L2
    default_threshold = WESPEAKER_DEFAULT_THRESHOLD

    def __init__(self, inference: Any, weights: Path):
        self._inference = inference  # pyannote's PyannoteAudioPretrainedSpeakerEmbedding
        self.name = f"pyannote/{type(inference.model_).__name__}"
        self.revision = "sha256:" + file_digest(weights)
        self.dimension = int(inference.dimension)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import torch

        samples = np.asarray(audio, dtype=np.float32)
        size = int(MAX_WINDOW_SECONDS * SAMPLE_RATE)
        windows = [samples[start : start + size] for start in range(0, max(len(samples), 1), size)]
        if len(windows) > 1 and len(windows[-1]) < size // 2:  # a short tail joins the window before it
            windows[-2:] = [np.concatenate(windows[-2:])]
        vectors, weights = [], []
        for window in windows:
            waveform = torch.from_numpy(np.ascontiguousarray(window)).reshape(1, 1, -1)
            vectors.append(unit(self._inference(waveform)[0]))
            weights.append(len(window))
        return unit(np.average(np.stack(vectors), axis=0, weights=weights))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_speaker_encoder(
    diarization_model: str, device: str, token: str | None, cache_dir: str | None, offline: bool
) -> PyannoteEncoder:
    """The embedding model of `diarization_model` (a hub name or a local pipeline folder) on `device`; an
    EnvironmentProblem that says what to do when it cannot be had."""
    pyannote_telemetry_off_unless_asked()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # pyannote prints its download failures, token examples included
            source = embedding_source(diarization_model, token, cache_dir)
            weights = weights_file(source, token, cache_dir)
            return _load(weights, device)
    except EnvironmentProblem:
        raise
    except Exception as exc:
        log.debug("pyannote printed: %s", printed.getvalue().strip())
        raise EnvironmentProblem(load_failure_message(diarization_model, exc, offline)) from exc


def _load(weights: Path, device: str) -> PyannoteEncoder:
    import torch
    from pyannote.audio.pipelines.speaker_verification import PyannoteAudioPretrainedSpeakerEmbedding

    inference = PyannoteAudioPretrainedSpeakerEmbedding(str(weights), device=torch.device(device))
    return PyannoteEncoder(inference, weights)


def embedding_source(diarization_model: str, token: str | None, cache_dir: str | None) -> EmbeddingSource:
    """The embedding model the pipeline's config.yaml names: `$model/SUB` is a subfolder of the pipeline itself."""
    import yaml

    folder = Path(diarization_model)
    if folder.is_dir():
        config_file = folder / "config.yaml"
    else:
        from huggingface_hub import hf_hub_download

        config_file = Path(hf_hub_download(diarization_model, "config.yaml", cache_dir=cache_dir, token=token))
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    reference = ((config.get("pipeline") or {}).get("params") or {}).get("embedding")
    if not isinstance(reference, str):
        raise EnvironmentProblem(
            f"diarization model {diarization_model!r}: its config.yaml names no embedding model (pipeline.params."
            "embedding), so no speaker encoder can be loaded from it"
        )
    if reference.startswith("$model/"):
        return EmbeddingSource(diarization_model, reference.removeprefix("$model/").split("@")[0])
    return EmbeddingSource(reference, None)


def weights_file(source: EmbeddingSource, token: str | None, cache_dir: str | None) -> Path:
    """The checkpoint file itself, local or fetched into the cache by pyannote's own download code."""
    folder = Path(source.checkpoint)
    if folder.is_dir():
        return folder / (source.subfolder or "") / CHECKPOINT
    if folder.is_file():
        return folder
    from pyannote.audio.utils.hf_hub import AssetFileName, download_from_hf_hub

    path = download_from_hf_hub(
        source.checkpoint, AssetFileName.Model, subfolder=source.subfolder, cache_dir=cache_dir, token=token
    )
    if path is None:  # pyannote returns None when the hub refuses the download
        raise RuntimeError("the hub refused the download (gated: NoneType)")
    return Path(path)


def load_failure_message(model: str, exc: BaseException, offline: bool) -> str:
    text = redact(f"{type(exc).__name__}: {exc}")
    lowered = text.lower()
    if offline or "offline" in lowered or "localentrynotfound" in lowered:
        return (
            f"the speaker encoder of {model!r} is not in the model cache and the hub is not reachable "
            "(HF_HUB_OFFLINE or no network): run `whisperx-batch models pull --diarize` where there is network"
        )
    if any(word in lowered for word in ("gated", "401", "403", "unauthorized", "nonetype")):
        return (
            f"the speaker encoder of {model!r} could not be downloaded: the token is not accepted for it. Accept "
            f"the model's terms at https://hf.co/{model} with the account the token belongs to, then rerun"
        )
    return f"the speaker encoder of {model!r} could not be loaded: {text}"


def default_threshold_of(encoder_name: str) -> float | None:
    """The documented default threshold of an encoder named in a library (None: not one this module loads)."""
    return WESPEAKER_DEFAULT_THRESHOLD if encoder_name == "pyannote/WeSpeakerResNet34" else None
