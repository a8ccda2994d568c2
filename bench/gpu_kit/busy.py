"""The `pipeline` step's figure: how busy the GPU is while the stages run on the kit's recording (espeak-ng speech
made when packing), one after the other in one thread: VAD windows, ASR (large-v3-shaped, CTranslate2) on 30 s
chunks with their log-mel features computed on the CPU as faster-whisper does, alignment forwards on 10 s
segments, speaker embeddings of 10 s windows every second. NVML's utilisation (the share of time a kernel ran)
is sampled every 50 ms. The runner overlaps these stages in threads; this is the share without that overlap,
the floor the runner's pipelining is to raise.
"""

from __future__ import annotations

import threading
import time
import wave
from pathlib import Path
from typing import Any

from bench.gpu_kit.steps import StepContext

SAMPLE_RATE = 16_000
RECORDING = "speech.wav"


def read_recording(kit: Path | None) -> tuple[Any, str]:
    """The kit's 16 kHz mono recording as float32, or (without one) 60 s of noise bursts; and which it is."""
    import numpy as np

    path = kit / RECORDING if kit is not None else None
    if path is not None and path.exists():
        with wave.open(str(path)) as recording:
            frames = recording.readframes(recording.getnframes())
        return np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0, f"{RECORDING} (espeak-ng)"
    rng = np.random.default_rng(0)
    audio = 0.1 * rng.standard_normal(60 * SAMPLE_RATE).astype(np.float32)
    audio[(np.arange(audio.size) // SAMPLE_RATE) % 3 == 2] = 0.0  # a second of silence in three
    return audio, "60 s of noise bursts (no recording in the kit)"


class Utilisation:
    """NVML's GPU utilisation, sampled from a thread; `mean(since)` over the samples taken after `since`."""

    def __init__(self, interval: float = 0.05):
        import pynvml

        pynvml.nvmlInit()
        self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.samples.append((time.monotonic(), int(rates.gpu)))

    def mean(self, since: float, until: float) -> float | None:
        values = [value for at, value in self.samples if since <= at <= until]
        return round(sum(values) / len(values), 1) if values else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def windows(audio: Any, seconds: float, step: float) -> Any:
    import torch

    size, hop = round(seconds * SAMPLE_RATE), round(step * SAMPLE_RATE)
    tensor = torch.from_numpy(audio)
    if tensor.numel() < size:
        tensor = torch.nn.functional.pad(tensor, (0, size - tensor.numel()))
    return tensor.unfold(0, size, hop)  # (windows, samples)


def busy_share(context: StepContext) -> dict[str, Any]:
    import torch
    from transformers import WhisperFeatureExtractor

    from bench.gpu_kit.asr import ASR_TOKENS, load_large
    from bench.gpu_kit.kit_models import STAGES
    from bench.gpu_kit.whisper_ct2 import LARGE_V3, prompt

    audio, source = read_recording(context.kit)
    whisper, result = load_large(context)
    models = {name: STAGES[name].build("cuda") for name in ("vad", "align", "embed")}
    extractor = WhisperFeatureExtractor(feature_size=LARGE_V3["num_mel_bins"])
    result.update(recording=source, audio_seconds=round(audio.size / SAMPLE_RATE, 1))

    def vad() -> None:
        for batch in windows(audio, 5.0, 0.5).split(32):
            models["vad"](batch[:, None].contiguous().cuda())

    def asr() -> None:
        import ctranslate2

        chunks = [audio[start : start + 30 * SAMPLE_RATE] for start in range(0, audio.size, 30 * SAMPLE_RATE)]
        features = extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        storage = ctranslate2.StorageView.from_array(features.astype("float32"))
        whisper.generate(storage, [prompt(LARGE_V3["vocab_size"])] * len(chunks), beam_size=5, max_length=ASR_TOKENS)

    def align() -> None:
        for batch in windows(audio, 10.0, 10.0).split(16):
            torch.log_softmax(models["align"](batch.contiguous().cuda()).logits, dim=-1).cpu()

    def embed() -> None:
        for batch in windows(audio, 10.0, 1.0).split(32):
            models["embed"](batch[:, None].contiguous().cuda()).cpu()

    utilisation = Utilisation()
    stages: dict[str, Any] = {}
    started = time.monotonic()
    with torch.inference_mode():
        for name, run in (("vad", vad), ("asr", asr), ("align", align), ("embed", embed)):
            begun = time.monotonic()
            run()
            torch.cuda.synchronize()
            ended = time.monotonic()
            stages[name] = {"seconds": round(ended - begun, 2), "gpu_busy_percent": utilisation.mean(begun, ended)}
    ended = time.monotonic()
    utilisation.stop()
    result.update(
        stages=stages,
        seconds=round(ended - started, 2),
        gpu_busy_percent=utilisation.mean(started, ended),
        samples=len(utilisation.samples),
    )
    return result


def pipeline_step(context: StepContext) -> dict[str, Any]:
    from bench.gpu_kit.asr import unusable_reason

    reason = unusable_reason(context)
    return {"skipped": reason} if reason is not None else busy_share(context)
