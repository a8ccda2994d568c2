"""The stages' networks at full size with seeded random weights, built on the lent machine from what it has
(torch, transformers) and the few wheels the kit carries (asteroid-filterbanks, einops, pyannote.audio):

- VAD: the project's own PyanNet (`batch.engine.vad.segmentation`) with the layers of the segmentation model
  whisperx bundles (SincNet stride 10, 4 bidirectional LSTM layers of 128, 2 linear layers, 3 speakers), on 5 s
  windows as the project's VAD runs it.
- alignment: transformers' Wav2Vec2ForCTC configured as wav2vec2-base-960h (`bench.models.align_config`), whisperx's
  English model, and as wav2vec2-large-xlsr-53 (24 layers, hidden 1024, layer-norm feature encoder: 315 M
  parameters), the shape of the fine-tunes whisperx loads for most other languages, and what the batch sizer's
  `ALIGN_ITEM_MIB` is to hold.
- speaker embeddings: pyannote's WeSpeaker ResNet34 (its `resnet` module) behind the same kaldi fbank front end
  as pyannote's WeSpeakerResNet34, on 10 s windows. pyannote.audio's package imports Lightning, which the
  machine lacks; the ResNet's module needs only torch and einops, so it is imported with pyannote.audio's
  packages standing in as bare namespaces (`wespeaker_resnet_module`) unless pyannote.audio is already imported.

`STAGES` gives, per stage, how to build it, make a batch of inputs and run a forward, as the project runs them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

SAMPLE_RATE = 16_000
SEED = 0

#: whisperx's bundled segmentation model (whisperx/assets/pytorch_model.bin): its hyper-parameters
VAD_HPARAMS: dict[str, Any] = {
    "sincnet": {"stride": 10},
    "lstm": {"hidden_size": 128, "num_layers": 4, "bidirectional": True, "monolithic": True, "dropout": 0.5},
    "linear": {"hidden_size": 128, "num_layers": 2},
    "num_classes": 3,
}
#: pyannote's WeSpeakerResNet34 front end (its defaults: 80 kaldi fbanks, 25 ms frames every 10 ms)
FBANK = {
    "num_mel_bins": 80,
    "frame_length": 25.0,
    "frame_shift": 10.0,
    "round_to_power_of_two": True,
    "snip_edges": True,
    "dither": 0.0,
    "sample_frequency": SAMPLE_RATE,
    "window_type": "hamming",
    "use_energy": False,
}
EMBEDDING_DIMENSION = 256


@dataclass(frozen=True)
class StageModel:
    """One stage's network: `build(device)` -> model, `inputs(batch, seconds, device)` -> a batch of random
    audio shaped as the stage takes it, `forward(model, inputs)` -> the stage's output for the batch."""

    name: str
    build: Callable[[str], Any]
    inputs: Callable[[int, float, str], Any]
    forward: Callable[[Any, Any], Any]
    item_seconds: float  # what one batch item is (see batch.engine.gpu.needs.STAGES)
    sizer_stage: str | None  # the batch sizer's stage this item is counted in (None: the sizer has none)


def _seeded() -> None:
    import torch

    torch.manual_seed(SEED)


def build_vad(device: str) -> Any:
    from batch.engine.vad.segmentation import PyanNet

    _seeded()
    hparams = dict(VAD_HPARAMS)
    return PyanNet(hparams["sincnet"], hparams["lstm"], hparams["linear"], hparams["num_classes"]).eval().to(device)


def build_align(device: str, preset: str | None = None) -> Any:
    """transformers' Wav2Vec2ForCTC (the real class) at the shape of `preset` (`bench.models.ALIGN_PRESETS`; by
    default wav2vec2-base-960h's)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    from bench.models import ALIGN_BASE, align_config

    _seeded()
    with torch.device(device):
        return Wav2Vec2ForCTC(align_config(preset or ALIGN_BASE)).eval()


def build_align_large(device: str) -> Any:
    from bench.models import ALIGN_LARGE

    return build_align(device, ALIGN_LARGE)


def wespeaker_resnet_module() -> types.ModuleType:
    """pyannote.audio.models.embedding.wespeaker.resnet, without running pyannote.audio's package imports."""
    name = "pyannote.audio.models.embedding.wespeaker.resnet"
    if "pyannote.audio" in sys.modules or name in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("pyannote")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyannote.audio is not installed (the kit carries its wheel)")
    root = Path(next(iter(spec.submodule_search_locations))) / "audio"
    for package in ("audio", "audio.models", "audio.models.blocks", "audio.models.embedding", "audio.utils"):
        stand_in = types.ModuleType(f"pyannote.{package}")
        stand_in.__path__ = [str(root.parent / package.replace(".", "/"))]
        sys.modules.setdefault(stand_in.__name__, stand_in)
    wespeaker = types.ModuleType("pyannote.audio.models.embedding.wespeaker")
    wespeaker.__path__ = [str(root / "models" / "embedding" / "wespeaker")]
    sys.modules.setdefault(wespeaker.__name__, wespeaker)
    return importlib.import_module(name)


class Embedder:
    """pyannote's WeSpeakerResNet34 forward: fbank of each waveform (x 2^15, centred on its mean), then ResNet34."""

    def __init__(self, device: str):
        import torch
        import torchaudio.compliance.kaldi as kaldi

        _seeded()
        resnet = wespeaker_resnet_module().ResNet34(
            FBANK["num_mel_bins"], EMBEDDING_DIMENSION, pooling_func="TSTP", two_emb_layer=False
        )
        self.resnet = resnet.eval().to(device)
        self._fbank = torch.vmap(partial(kaldi.fbank, **FBANK))

    def __call__(self, waveforms: Any) -> Any:
        import torch

        features = self._fbank(waveforms * (1 << 15))
        features = features - torch.mean(features, dim=1, keepdim=True)
        return self.resnet(features)[1]

    def parameters(self) -> Any:
        return self.resnet.parameters()


def channel_audio(batch: int, seconds: float, device: str) -> Any:
    """(batch, 1, samples) of noise at speech level, as the VAD and pyannote take windows; made on `device` (a
    batch far too large for the GPU, as the oom step makes, takes no time on the CPUs)."""
    import torch

    generator = torch.Generator(device).manual_seed(SEED)
    samples = round(seconds * SAMPLE_RATE)
    return 0.1 * torch.randn(batch, 1, samples, generator=generator, device=device)


def flat_audio(batch: int, seconds: float, device: str) -> Any:
    """(batch, samples): segments of equal length, as wav2vec2 takes a batch (group norm: equal lengths only)."""
    return channel_audio(batch, seconds, device)[:, 0]


def align_forward(model: Any, inputs: Any) -> Any:
    import torch

    return torch.log_softmax(model(inputs).logits, dim=-1)


STAGES: dict[str, StageModel] = {
    "vad": StageModel("vad", build_vad, channel_audio, lambda model, x: model(x), 5.0, None),
    "align": StageModel("align", build_align, flat_audio, align_forward, 30.0, "align"),
    "align_large": StageModel("align_large", build_align_large, flat_audio, align_forward, 30.0, "align"),
    "embed": StageModel("embed", Embedder, channel_audio, lambda model, x: model(x), 10.0, "diarize"),
}


def parameter_count(model: Any) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
