"""Random Whisper models in CTranslate2's format, built offline: transformers' WhisperForConditionalGeneration at a
real model's shapes, seeded, converted by CTranslate2's own Whisper loader (`WhisperLoader`) with a stand-in
tokenizer that gives Whisper's special tokens their real ids (the vocabulary's other entries are placeholders:
what is decoded is not text, but every token costs what a real one does).

`python -m bench.gpu_kit.whisper_ct2 smoke FOLDER DEVICE [COMPUTE_TYPE]` loads a built model on DEVICE, decodes a
window (the first: on a card CTranslate2 has no machine code for, its kernels are JIT-compiled then), four, then
one again, and prints each one's time as a JSON line (`SMOKE_MARK`): the `ct2` step runs it as
a subprocess, so that a CTranslate2 that cannot load its CUDA libraries fails there, and twice, cold and from
CUDA's JIT cache.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

SEED = 0
#: openai/whisper-large-v3 (1,543,490,560 parameters; 128 mel bins, 100 languages)
LARGE_V3: dict[str, int] = {
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 32,
    "encoder_attention_heads": 20,
    "decoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "vocab_size": 51866,
}
#: a model small enough to build in a second, with large-v3's vocabulary and input (for the smoke test)
SMOKE = {**LARGE_V3, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2}
SMOKE.update(decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128)

#: `spec_fingerprint` of SMOKE converted by CTranslate2 4.8.5 under transformers 4.57 and 5.17 alike: the ct2 step
#: says whether the converter under the lent machine's transformers makes the same model
SMOKE_FINGERPRINT = "53208fda4af24e26"
FINGERPRINT = "kit_fingerprint.txt"

END_OF_TEXT, START_OF_TRANSCRIPT, FIRST_LANGUAGE = 50257, 50258, 50259
TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>
SPECIALS_AFTER_LANGUAGES = ("translate", "transcribe", "startoflm", "startofprev", "nospeech", "notimestamps")


def languages(vocab_size: int) -> int:
    """How many language tokens a Whisper vocabulary of `vocab_size` has (99 up to v2, 100 for v3)."""
    return vocab_size - FIRST_LANGUAGE - len(SPECIALS_AFTER_LANGUAGES) - TIMESTAMPS


def special_ids(vocab_size: int) -> dict[str, int]:
    first_after = FIRST_LANGUAGE + languages(vocab_size)
    ids = {"endoftext": END_OF_TEXT, "startoftranscript": START_OF_TRANSCRIPT, "en": FIRST_LANGUAGE}
    ids.update({name: first_after + offset for offset, name in enumerate(SPECIALS_AFTER_LANGUAGES)})
    return ids


def prompt(vocab_size: int) -> list[int]:
    """<|startoftranscript|><|en|><|transcribe|><|notimestamps|>, as faster-whisper starts a window."""
    ids = special_ids(vocab_size)
    return [ids["startoftranscript"], ids["en"], ids["transcribe"], ids["notimestamps"]]


def stand_in_tokenizer(vocab_size: int) -> Any:
    """What WhisperLoader reads from a tokenizer: the vocabulary up to the timestamps, and the language tokens."""
    names = {token_id: f"<|{name}|>" for name, token_id in special_ids(vocab_size).items()}
    language_tokens = ["<|en|>"] + [f"<|lang{i}|>" for i in range(1, languages(vocab_size))]
    names.update({FIRST_LANGUAGE + i: token for i, token in enumerate(language_tokens)})
    vocabulary = {names.get(i, f"t{i}"): i for i in range(vocab_size - TIMESTAMPS)}
    return types.SimpleNamespace(
        get_vocab=lambda: vocabulary,
        additional_special_tokens=language_tokens,
        convert_tokens_to_ids=vocabulary.__getitem__,
    )


def build(folder: Path, shape: dict[str, int], init_device: str = "cpu") -> int:
    """Write a seeded random Whisper of `shape` as a float16 CTranslate2 model into `folder`; its parameter count.

    `init_device` "cuda" initialises the weights on the GPU (seconds for large-v3, instead of a minute on CPUs)."""
    import torch
    from ctranslate2.converters.transformers import WhisperLoader
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ids = special_ids(shape["vocab_size"])
    config = WhisperConfig(
        **shape,
        decoder_start_token_id=START_OF_TRANSCRIPT,
        eos_token_id=END_OF_TEXT,
        suppress_tokens=[],
        begin_suppress_tokens=[220, END_OF_TEXT],
        bos_token_id=END_OF_TEXT,
        pad_token_id=END_OF_TEXT,
    )
    torch.manual_seed(SEED)
    with torch.device(init_device):
        model = WhisperForConditionalGeneration(config).eval()
    model = model.to("cpu", torch.float16)
    model.generation_config.no_timestamps_token_id = ids["notimestamps"]
    spec = WhisperLoader()(model, stand_in_tokenizer(shape["vocab_size"]))
    spec.validate()
    spec.optimize(quantization="float16")
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    config_json = json.loads((folder / "config.json").read_text())
    (folder / FINGERPRINT).write_text(spec_fingerprint(spec.variables(), config_json) + "\n")
    return sum(parameter.numel() for parameter in model.parameters())


def spec_fingerprint(variables: dict[str, Any], config_json: dict[str, Any]) -> str:
    """What the converter made, as a short hash: every variable's name, shape and type, and the model's config
    (special ids, alignment heads, languages). Weights' values are left out (their random draw is not the
    converter's)."""
    layout = sorted((name, _layout(value)) for name, value in variables.items())
    text = json.dumps([layout, config_json], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layout(value: Any) -> list[Any]:
    """A variable's shape and type ("float16" from numpy and torch alike), or the variable it aliases."""
    if isinstance(value, str):  # a weight shared with another variable (optimize() deduplicates)
        return ["alias", value]
    return [list(value.shape), str(value.dtype).rsplit(".", 1)[-1]]


def fingerprint(folder: Path) -> str | None:
    """The fingerprint `build` wrote into `folder` (None: not built by `build`)."""
    path = folder / FINGERPRINT
    return path.read_text().strip() if path.exists() else None


def features(batch: int, mel_bins: int) -> Any:
    """Random log-mel features of `batch` 30 s windows (batch, mel_bins, 3000), as CTranslate2 takes them."""
    import ctranslate2
    import numpy as np

    rng = np.random.default_rng(SEED)
    return ctranslate2.StorageView.from_array(rng.standard_normal((batch, mel_bins, 3000), dtype=np.float32))


def decode(model: Any, batch: int, shape: dict[str, int], tokens: int, beam_size: int = 5) -> int:
    """Decode `batch` windows, `tokens` tokens each at most (beam search); the tokens decoded in all."""
    results = model.generate(
        features(batch, shape["num_mel_bins"]),
        [prompt(shape["vocab_size"])] * batch,
        beam_size=beam_size,
        max_length=tokens,
        suppress_blank=False,
    )
    return sum(len(result.sequences_ids[0]) for result in results)


SMOKE_MARK = "gpu-kit-smoke: "
#: (figure, batch): the decodes the smoke run times, in order
SMOKE_DECODES = (("first_decode_s", 1), ("batch_4_decode_s", 4), ("warm_decode_s", 1))


def smoke(folder: str, device: str, compute_type: str = "default") -> dict[str, Any]:
    """Load the model at `folder` on `device` and decode (`SMOKE_DECODES`); the seconds each took."""
    import ctranslate2

    started = time.perf_counter()
    model = ctranslate2.models.Whisper(folder, device=device, compute_type=compute_type)
    figures: dict[str, Any] = {"device": device, "compute_type": model.compute_type}
    figures["load_s"] = round(time.perf_counter() - started, 3)
    for name, batch in SMOKE_DECODES:
        started = time.perf_counter()
        figures.setdefault("tokens", decode(model, batch, SMOKE, 8))
        figures[name] = round(time.perf_counter() - started, 3)
    return figures


def smoke_figures(output: str) -> dict[str, Any] | None:
    """The figures a smoke run printed, from its output; None when it printed none (it failed before the end)."""
    for line in reversed(output.splitlines()):
        if line.startswith(SMOKE_MARK):
            return json.loads(line[len(SMOKE_MARK) :])
    return None


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[1] != "smoke":
        sys.exit("usage: python -m bench.gpu_kit.whisper_ct2 smoke FOLDER DEVICE [COMPUTE_TYPE]")
    done = smoke(*sys.argv[2:])
    print(f"decoded {done['tokens']} tokens on {done['device']} (compute type {done['compute_type']})")
    print(SMOKE_MARK + json.dumps(done), flush=True)
