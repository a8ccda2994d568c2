"""Voice activity detection: whisperx's pyannote VAD loaded safely, or Silero."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import whisperx
from whisperx.vads import Pyannote, Silero
from whisperx.vads.pyannote import VoiceActivitySegmentation
from whisperx.vads.vad import Vad

from batch.checkpoints import load_pyannote_model
from batch.config import Settings

BUNDLED_VAD_CHECKPOINT = Path(whisperx.__file__).parent / "assets" / "pytorch_model.bin"


class TrustedPyannoteVad(Pyannote):
    """whisperx's pyannote VAD, its bundled checkpoint unpickled through the allowlist in checkpoints.py."""

    def __init__(self, device: str, vad_onset: float, vad_offset: float, chunk_size: float):
        Vad.__init__(self, vad_onset)
        self.vad_pipeline = VoiceActivitySegmentation(
            segmentation=load_pyannote_model(BUNDLED_VAD_CHECKPOINT), device=torch.device(device)
        )
        self.vad_pipeline.instantiate(
            {"onset": vad_onset, "offset": vad_offset, "min_duration_on": 0.1, "min_duration_off": 0.1}
        )


def load_vad(settings: Settings, device: str) -> Any:
    """The VAD model that `settings.vad_method` names. Silero comes from torch.hub (network or its cache)."""
    if settings.vad_method == "silero":
        return Silero(**settings.vad_options())
    return TrustedPyannoteVad(device, **settings.vad_options())
