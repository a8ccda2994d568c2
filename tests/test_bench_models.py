"""bench.models: full-size random models of the real classes, loaded and run through whisperx and the project's
loaders on real speech (pyannote's sample call), all offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import models

#: facebook/wav2vec2-base-960h's parameter count
WAV2VEC2_BASE_PARAMETERS = 94_396_320


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bool]]:
    """Both models built once, at full size, by the same entry point as the command line."""
    return models.build_all(tmp_path_factory.mktemp("bench-models"))


@pytest.fixture(scope="module")
def audio(sample_wav: Path) -> np.ndarray:
    """The first 12 s of pyannote's sample call (16 kHz mono), as whisperx reads it."""
    from whisperx.audio import load_audio

    return load_audio(str(sample_wav))[: 12 * models.SAMPLE_RATE]


@pytest.fixture(scope="module")
def reference_segments(sample_wav: Path) -> list[dict]:
    """The .stm reference's turns inside those 12 s, as whisperx transcript segments."""
    segments = []
    for line in sample_wav.with_suffix(".stm").read_text().splitlines():
        _, _, _, start, end, text = line.split(maxsplit=5)
        if float(end) <= 12.0:
            segments.append({"start": float(start), "end": float(end), "text": text})
    return segments


def test_alignment_model_is_wav2vec2_base_sized_and_aligns_real_speech(
    built: dict[str, tuple[Path, bool]], audio: np.ndarray, reference_segments: list[dict], tmp_path: Path
) -> None:
    import whisperx

    from batch.engine.align.aligner import ensure_punkt

    folder, _ = built[models.ALIGN_BASE]
    model, metadata = whisperx.load_align_model(language_code="en", device="cpu", model_name=str(folder))
    assert models.parameter_count(model) == WAV2VEC2_BASE_PARAMETERS
    assert model.config.feat_extract_norm == "group" and model.config.num_hidden_layers == 12
    assert metadata["type"] == "huggingface"
    assert {"a", "z", "'", "|"} <= set(metadata["dictionary"])

    ensure_punkt("en", tmp_path / "nltk_data")  # whisperx would download it otherwise
    result = whisperx.align(reference_segments, model, metadata, audio, "cpu", return_char_alignments=False)

    assert len(result["segments"]) == len(reference_segments)
    timed = 0
    for segment, reference in zip(result["segments"], reference_segments, strict=True):
        for word in segment["words"]:
            if "start" in word:
                timed += 1
                assert reference["start"] - 0.02 <= word["start"] <= word["end"] <= reference["end"] + 0.02
    assert timed >= sum(len(s["text"].split()) for s in reference_segments) - 2


def test_projects_aligner_loads_it_offline(built: dict[str, tuple[Path, bool]]) -> None:
    from batch.engine.align.aligner import Aligner

    folder = str(built[models.ALIGN_BASE][0])
    model, metadata = Aligner("cpu", cache_dir=None, offline=True, model_name=folder).load("en", folder)
    assert models.parameter_count(model) == WAV2VEC2_BASE_PARAMETERS
    assert metadata["language"] == "en"


def test_pipeline_loads_through_whisperx_and_diarizes_real_speech(
    built: dict[str, tuple[Path, bool]], audio: np.ndarray
) -> None:
    from whisperx.diarize import DiarizationPipeline

    folder, _ = built[models.DIARIZATION]
    pipeline = DiarizationPipeline(model_name=str(folder), token=None, device="cpu")
    diarization = pipeline.model
    assert type(diarization).__name__ == "SpeakerDiarization"
    assert type(diarization.clustering).__name__ == "VBxClustering"
    assert diarization.embedding_exclude_overlap
    assert diarization._segmentation.model.specifications.powerset
    assert diarization._plda.lda_dimension == models.LDA_DIMENSION

    turns = pipeline(audio[: 10 * models.SAMPLE_RATE])
    assert len(turns) > 0
    assert all(turns["speaker"].str.startswith("SPEAKER_"))
    assert ((turns["start"] >= 0.0) & (turns["start"] < turns["end"]) & (turns["end"] <= 10.0)).all()
    # the segmentation is trained: the first 6.5 s of the call are silence, so no turn may cover them
    assert turns["start"].min() > 5.0


def test_pipeline_networks_have_the_real_sizes_and_files_the_real_shapes(built: dict[str, tuple[Path, bool]]) -> None:
    from pyannote.audio import Model

    folder, _ = built[models.DIARIZATION]
    embedding = Model.from_pretrained(folder / "embedding" / "pytorch_model.bin")
    segmentation = Model.from_pretrained(folder / "segmentation" / "pytorch_model.bin")
    assert type(embedding).__name__ == "WeSpeakerResNet34"
    assert models.parameter_count(embedding) == 6_634_336
    assert embedding.dimension == models.EMBEDDING_DIMENSION
    assert type(segmentation).__name__ == "PyanNet"
    assert models.parameter_count(segmentation) == 1_473_265  # 1,472,362 shared with whisperx's + 7-class classifier
    assert segmentation.specifications.duration == 10.0
    assert segmentation.specifications.num_powerset_classes == 7

    transform, plda = np.load(folder / "plda" / "xvec_transform.npz"), np.load(folder / "plda" / "plda.npz")
    assert {key: transform[key].shape for key in transform} == {"mean1": (256,), "mean2": (128,), "lda": (256, 128)}
    assert {key: plda[key].shape for key in plda} == {"mu": (128,), "tr": (128, 128), "psi": (128,)}

    # checkpoints the safe unpickler reads (nothing but tensors, containers and pyannote's specification classes)
    with torch.serialization.safe_globals(models.checkpoint_globals()):
        for part in ("segmentation", "embedding"):
            torch.load(folder / part / "pytorch_model.bin", map_location="cpu", weights_only=True)


def test_segmentation_has_whisperx_bundled_layers_and_an_exact_powerset_classifier() -> None:
    """segmentation-3.0's layers are those of whisperx's model, so their compute per frame is the same; the
    rewritten classifier gives each powerset class the multi-label model's probability (renormalised)."""
    weights = models.whisperx_segmentation_weights()
    model = models.segmentation_model()
    shared = {key: value for key, value in model.state_dict().items() if not key.startswith("classifier.")}
    assert shared.keys() == {key for key in weights if not key.startswith("classifier.")}
    assert all(torch.equal(shared[key], weights[key]) for key in shared)

    logits = torch.randn(5, 3)
    probabilities = torch.sigmoid(logits)
    weight, bias = models.powerset_classifier(torch.eye(3), torch.zeros(3))
    powerset = torch.softmax(logits @ weight.T + bias, dim=-1)
    sets = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    joint = torch.stack(
        [
            torch.prod(torch.stack([probabilities[:, i] if i in s else 1 - probabilities[:, i] for i in range(3)]), 0)
            for s in sets
        ],
        dim=-1,
    )
    assert torch.allclose(powerset, joint / joint.sum(-1, keepdim=True), atol=1e-6)


def test_full_size_presets_have_the_real_parameter_counts() -> None:
    """Counted on the meta device: the XLSR preset (layer-norm encoder) is not built here (1.3 GB)."""
    assert models.align_parameter_count(models.ALIGN_BASE) == WAV2VEC2_BASE_PARAMETERS
    large = models.align_config(models.ALIGN_LARGE)
    assert (large.feat_extract_norm, large.do_stable_layer_norm, large.num_hidden_layers) == ("layer", True, 24)
    assert 310e6 < models.align_parameter_count(models.ALIGN_LARGE) < 320e6


def test_building_again_is_skipped_and_a_changed_spec_rebuilds(
    built: dict[str, tuple[Path, bool]], tmp_path: Path
) -> None:
    assert all(fresh for _, fresh in built.values())
    out = next(iter(built.values()))[0].parent
    calls: list[Path] = []

    def build(path: Path) -> dict[str, int]:
        calls.append(path)
        (path / "weights").write_text("x")
        return {"model": 1}

    assert not models.ensure_built(out / models.ALIGN_BASE, models.align_spec(models.ALIGN_BASE, models.SEED), build)
    assert not models.ensure_built(out / models.DIARIZATION, models.diarization_spec(models.SEED), build)
    assert calls == []

    folder = tmp_path / "model"
    assert models.ensure_built(folder, {"seed": 0}, build)
    assert not models.ensure_built(folder, {"seed": 0}, build)
    assert models.ensure_built(folder, {"seed": 1}, build)
    assert len(calls) == 2
    assert json.loads((folder / models.STAMP).read_text())["spec"] == {"seed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left behind

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        models.ensure_built(tmp_path / "foreign", {"seed": 0}, build)


def test_command_line_reports_what_is_there(built: dict[str, tuple[Path, bool]], capsys) -> None:
    out = next(iter(built.values()))[0].parent
    assert models.main([str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("already built" in line for line in lines)
    assert "model 94,396,320" in lines[0] and "embedding 6,634,336" in lines[1]
