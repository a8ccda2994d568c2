"""The production speaker encoder's plumbing: community-1's embedding model (WeSpeakerResNet34, full size, random
weights: no real weights exist offline) found through the pipeline's config.yaml and loaded by pyannote's own code,
as a run that does not diarize loads it. Shapes, identity, windows for long speech; what a missing model says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batch.common.errors import EnvironmentProblem
from batch.engine.speakers.encoder import EncoderIdentity
from batch.engine.speakers.wespeaker import (
    MAX_WINDOW_SECONDS,
    WESPEAKER_DEFAULT_THRESHOLD,
    embedding_source,
    file_digest,
    load_speaker_encoder,
)

SAMPLE_RATE = 16_000


@pytest.fixture(scope="module")
def community_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.models import build_diarization_pipeline

    folder = tmp_path_factory.mktemp("community-1")
    build_diarization_pipeline(folder)
    return folder


def test_the_diarization_pipelines_own_embedding_model_is_loaded(community_1: Path) -> None:
    source = embedding_source(str(community_1), None, None)
    assert (source.checkpoint, source.subfolder) == (str(community_1), "embedding")
    encoder = load_speaker_encoder(str(community_1), "cpu", None, None, offline=True)
    assert type(encoder._inference.model_).__name__ == "WeSpeakerResNet34"
    weights = community_1 / "embedding" / "pytorch_model.bin"
    assert EncoderIdentity.of(encoder) == EncoderIdentity(
        "pyannote/WeSpeakerResNet34", "sha256:" + file_digest(weights), 256, "l2"
    )
    assert encoder.default_threshold == WESPEAKER_DEFAULT_THRESHOLD == 0.66

    rng = np.random.default_rng(0)
    short = (0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    vector = encoder.embed(short)
    assert vector.shape == (256,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(encoder.embed(short), vector, atol=1e-6)  # deterministic

    # Speech longer than a window is embedded window by window (memory bounded), a short tail joining the last
    long = np.tile(short, int(2 * MAX_WINDOW_SECONDS / 3) + 2)  # 66 s: two windows, the 6 s tail in the second
    calls: list[int] = []
    handle = encoder._inference.model_.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[-1]))
    try:
        assert np.linalg.norm(encoder.embed(long)) == pytest.approx(1.0, abs=1e-5)
    finally:
        handle.remove()
    assert calls == [int(MAX_WINDOW_SECONDS * SAMPLE_RATE), len(long) - int(MAX_WINDOW_SECONDS * SAMPLE_RATE)]


def test_a_hub_model_not_in_the_cache_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="models pull --diarize"):
        load_speaker_encoder("pyannote/speaker-diarization-community-1", "cpu", None, str(tmp_path), offline=True)


def test_a_pipeline_without_an_embedding_model_is_said(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("pipeline:\n  name: x\n  params: {}\n")
    with pytest.raises(EnvironmentProblem, match="names no embedding model"):
        load_speaker_encoder(str(tmp_path), "cpu", None, None, offline=True)
