"""wav2vec2 forwards of several segments at once: only where each segment's emissions stay its own (a padded,
masked batch for frame-normalised models; equal lengths for group-norm ones), the words timed as one segment at a
time times them, and on a GPU the batch halved on out-of-memory like every batched stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from whisperx.alignment import load_align_model

from batch.engine.align import forwards, words
from batch.engine.align.aligner import Aligner, ensure_punkt, punkt_root, time_words
from batch.engine.audio import decode
from batch.engine.pipeline import DecodedFile, FileOutcome, Stopwatch
from tests.conftest import SITE
from tests.tiny_models import build_tiny_align_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("align-models")
    ensure_punkt("en", punkt_root(str(root)))
    return {
        norm: str(build_tiny_align_model(root / norm, feat_extract_norm=norm, hidden_size=48, num_heads=4))
        for norm in ("group", "layer")
    }


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """pyannote's two-speaker call and its reference turns as segments of many lengths."""
    with (SITE / "sample" / "sample.wav").open("rb") as stream:
        audio = decode(stream)
    segments = []
    for line in (SITE / "sample" / "sample.stm").read_text().splitlines():
        _, _, _, start, end, text = line.split(maxsplit=5)
        segments.append({"start": float(start), "end": float(end), "text": text})
    return audio, segments


def loaded(folder: str) -> tuple[Any, dict[str, Any]]:
    return load_align_model("en", "cpu", model_name=folder)


def timed_words(result: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    return [(w["word"], w.get("start"), w.get("end")) for w in result["word_segments"]]


def test_a_frame_normalised_model_reads_a_padded_batch_as_it_reads_each_segment(models, speech) -> None:
    audio, segments = speech
    model, metadata = loaded(models["layer"])
    tensor = forwards.audio_tensor(audio)
    plans = words.prepare_alignment(segments, metadata, tensor.shape[1])
    alone = forwards.segment_emissions(model, "huggingface", tensor, plans, "cpu", batch_size=1)
    batched = forwards.segment_emissions(model, "huggingface", tensor, plans, "cpu", batch_size=8)
    groups = forwards.forward_groups(model, "huggingface", plans, list(range(len(plans))), 8, tensor.shape[1])
    assert max(len(group) for group in groups) == 8  # segments of different lengths share batches
    for single, together in zip(alone, batched, strict=True):
        assert single.shape == together.shape
        assert np.abs(single - together).max() < 1e-4
    one_by_one = time_words(segments, model, metadata, audio, "cpu", batch_size=1)
    in_batches = time_words(segments, model, metadata, audio, "cpu", batch_size=8)
    pairs = list(zip(timed_words(one_by_one), timed_words(in_batches), strict=True))
    within = [abs(a[1] - b[1]) <= 0.02 and abs(a[2] - b[2]) <= 0.02 for a, b in pairs if a[1] is not None]
    assert len(within) > 50 and sum(within) / len(within) >= 0.99


def test_a_group_norm_model_batches_only_segments_of_equal_length(models, speech) -> None:
    audio, segments = speech
    model, metadata = loaded(models["group"])
    tensor = forwards.audio_tensor(audio)
    end = tensor.shape[1] / 16000
    twins = [
        {"start": 3.0, "end": 5.0, "text": "hello there"},
        {"start": 9.0, "end": 11.0, "text": "fine thanks"},
        {"start": end - 1.0, "end": end + 1.0, "text": "past the end"},  # 2 s as written, 1 s of it in the audio
    ]
    plans = words.prepare_alignment([*segments, *twins], metadata, tensor.shape[1])
    groups = forwards.forward_groups(model, "huggingface", plans, list(range(len(plans))), 8, tensor.shape[1])
    for group in groups:
        inputs = {min(plans[i].samples[1], tensor.shape[1]) - plans[i].samples[0] for i in group}  # type: ignore[index]
        assert len(inputs) == 1
    assert sorted(len(group) for group in groups)[-1] == 2  # the two 2 s segments, together
    alone = forwards.segment_emissions(model, "huggingface", tensor, plans, "cpu", batch_size=1)
    batched = forwards.segment_emissions(model, "huggingface", tensor, plans, "cpu", batch_size=8)
    for single, together in zip(alone, batched, strict=True):
        assert np.abs(single - together).max() < 1e-5
    one_by_one = time_words(segments, model, metadata, audio, "cpu", batch_size=1)
    assert time_words(segments, model, metadata, audio, "cpu", batch_size=8) == one_by_one


def test_on_a_gpu_an_out_of_memory_halves_the_alignment_batch(
    models, speech, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Finisher's GPU path (the device is a setting; the aligner runs on the CPU), with the fault injected at
    the model's forward: batches above 2 segments run out of memory, the stage goes on at 2, the words are the
    same as one segment at a time, and the manifest's record says so."""
    from batch.engine.config import AlignConfig, AsrConfig, DiarizeConfig, HubConfig, PipelineConfig, RuntimeOptions
    from batch.engine.finish import Finisher
    from batch.engine.gpu.sizing import BatchSizer
    from batch.engine.vad.speech import VadOptions

    audio, segments = speech
    real, sizes = forwards.batched_emissions, []

    def out_of_memory_above_two(model, audio, plans, device):  # type: ignore[no-untyped-def]
        sizes.append(len(plans))
        if len(plans) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, audio, plans, device)

    monkeypatch.setattr(forwards, "batched_emissions", out_of_memory_above_two)
    config = PipelineConfig(
        AsrConfig(), VadOptions(), AlignConfig(True, models["layer"]), DiarizeConfig(), HubConfig(str(tmp_path)),
        RuntimeOptions("cuda", "float16", 2, 8),
    )  # fmt: skip
    finisher = Finisher(config, BatchSizer(8, {"asr": 1, "align": 1, "diarize": 1}, probe=None))
    finisher._aligner = Aligner("cpu", str(tmp_path), True, models["layer"])
    outcome = FileOutcome(DecodedFile("call.wav", audio, Stopwatch()), True, "en", segments=[dict(s) for s in segments])
    finisher.finish(outcome)

    assert outcome.error is None and outcome.alignment == {"status": "aligned", "model": models["layer"]}
    assert sizes[:3] == [8, 4, 2] and max(sizes[2:]) == 2  # 8 failed, 4 failed, then batches of 2
    record = outcome.gpu["align"]
    assert record.batch_size_used == 2 and record.oom_retries == 2
    model, metadata = loaded(models["layer"])
    expected = time_words(segments, model, metadata, audio, "cpu", batch_size=1)
    timed = [(w["word"], w["start"], w["end"]) for s in outcome.segments for w in s["words"] if "start" in w]
    reference = [(w, s, e) for w, s, e in timed_words(expected) if s is not None]
    assert [w for w, _, _ in timed] == [w for w, _, _ in reference]
    assert all(abs(a[1] - b[1]) <= 0.02 for a, b in zip(timed, reference, strict=True))


def tiny_torchaudio_model() -> tuple[torch.nn.Module, dict[str, Any]]:
    """A wav2vec2 built by torchaudio (random weights, small) with the labels of its English pipeline: what
    whisperx's load_align_model gives for en, fr, de, es and it, at a size a test can hold."""
    import torchaudio
    from torchaudio.models import wav2vec2_model

    labels = torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H.get_labels()
    convolutions = [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2
    model = wav2vec2_model(
        "group_norm", convolutions, False, 32, 0.0, 16, 2, 2, 4, 0.0, 64, 0.0, 0.0, False, 0.0, aux_num_out=len(labels)
    )
    return model.eval(), {"dictionary": {c.lower(): i for i, c in enumerate(labels)}, "type": "torchaudio"}


def test_on_a_gpu_a_torchaudio_alignment_model_is_granted_one_segment(speech, tmp_path: Path) -> None:
    """whisperx's English default (torchaudio's WAV2VEC2_ASR_BASE_960H) runs one segment a forward whatever the
    batch size (forwards.forward_groups): the budget grants it one segment's memory (512 MiB), not the batch size's
    (8 x 512 MiB, which other stages then could not use)."""
    from batch.common.units import GiB
    from batch.engine.config import AlignConfig, AsrConfig, DiarizeConfig, HubConfig, PipelineConfig, RuntimeOptions
    from batch.engine.finish import Finisher
    from batch.engine.gpu.needs import seed_item_bytes
    from batch.engine.gpu.sizing import BatchSizer
    from batch.engine.vad.speech import VadOptions
    from tests.memory_fakes import FakeProbe

    audio, segments = speech
    config = PipelineConfig(
        AsrConfig(), VadOptions(), AlignConfig(True), DiarizeConfig(), HubConfig(str(tmp_path)),
        RuntimeOptions("cuda", "float16", 2, 8),
    )  # fmt: skip
    budget = BatchSizer(8, seed_item_bytes("large-v3", "float16"), FakeProbe(free=40 * GiB))
    finisher = Finisher(config, budget)
    finisher._aligner = Aligner("cpu", str(tmp_path), True)  # the device is a setting; the model runs on the CPU
    assert finisher._aligner.model_for("en") == "WAV2VEC2_ASR_BASE_960H"
    finisher._aligner._models["WAV2VEC2_ASR_BASE_960H"] = tiny_torchaudio_model()  # as loaded: no download
    outcome = FileOutcome(DecodedFile("call.wav", audio, Stopwatch()), True, "en", segments=[dict(s) for s in segments])
    finisher.finish(outcome)

    assert outcome.error is None and outcome.alignment == {"status": "aligned", "model": "WAV2VEC2_ASR_BASE_960H"}
    record = outcome.gpu["align"]
    assert record.batch_size_planned == record.batch_size_used == 1  # 8 before: 4 GiB held for one segment's work
    assert finisher._aligner.most_per_forward("fr", len(segments)) == 1  # VOXPOPULI_ASR_BASE_10K_FR: torchaudio's
    assert finisher._aligner.most_per_forward("nl", len(segments)) == len(segments)  # an XLSR model batches
