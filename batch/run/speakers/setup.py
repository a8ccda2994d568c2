"""The encoder and VAD an enrolment runs with, from the job's settings: the diarization model's embedding model,
from the same cache, with the same token, on the device the job would use."""

from __future__ import annotations

import os

from batch.engine.gpu.device import resolve_device
from batch.engine.loading import hf_token, hub_offline, is_local
from batch.engine.speakers.wespeaker import load_speaker_encoder
from batch.run.speakers.enrol import Enroller, enrolment_vad
from batch.settings.options import Settings


def enroller_for(settings: Settings) -> Enroller:
    device = resolve_device(settings.device)
    offline = hub_offline()
    token = None if is_local(settings.diarize_model) else hf_token(settings.hf_token_file, os.environ)[0]
    encoder = load_speaker_encoder(settings.diarize_model, device, token, settings.model_dir, offline)
    return Enroller(encoder, enrolment_vad(device))
