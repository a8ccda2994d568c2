"""What the `whisperx` step needs to run the project's own `WhisperxPipeline` on the lent machine, and what it
makes there in place of what is not carried:

- `missing_pieces`: the packages the pipeline's path imports (faster-whisper, whisperx, omegaconf and tokenizers
  beside CTranslate2 and asteroid-filterbanks); the step is skipped, naming them, when one is missing.
- `install_av_stand_in`: the machine has no PyAV. The project's decode module (batch.engine.audio) and
  faster-whisper's import it, and only their decoders use it; the step hands the pipeline decoded float32 arrays
  (the pipeline's core takes arrays), so a stand-in named `av` that fails on any use is the decode seam.
- `write_faster_whisper_files`: faster-whisper loads a CTranslate2 folder with a `tokenizer.json` (else it
  downloads one) and a `preprocessor_config.json` (large-v3's 128 mel bins). The tokenizer is a word-level one
  over the random model's stand-in vocabulary (`whisper_ct2.stand_in_tokenizer`), its special tokens at their
  real ids and every other token a distinct word of letters (`letters`): what it decodes is not text, but
  faster-whisper's prompt, the recogniser's decoding and the alignment of its words run as on a real model.
- `write_vad_checkpoint`: whisperx's wheel is carried without its 17 MB VAD checkpoint (`pack.TRIMMED`); the
  project's loader (`batch.engine.vad.segmentation.load_segmentation`) reads, in its place, a PyanNet of
  whisperx's shape with seeded random weights in pyannote's checkpoint format, its classifier biased to hear
  speech throughout, so that every second of audio reaches the ASR (a random VAD would otherwise find speech at
  random).
"""

from __future__ import annotations

import enum
import importlib.util
import json
import pickle
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: (module, the wheel that brings it) the pipeline's path imports, beside torch, numpy and transformers
PIECES = (
    ("ctranslate2", "ctranslate2"),
    ("faster_whisper", "faster-whisper"),
    ("whisperx", "whisperx"),
    ("omegaconf", "omegaconf"),
    ("antlr4", "antlr4-python3-runtime"),
    ("tokenizers", "tokenizers"),
    ("asteroid_filterbanks", "asteroid-filterbanks"),
)
#: what alignment adds (whisperx.alignment and the project's sentence splitting import nltk): without it the step
#: runs with alignment off, saying so
ALIGN_PIECES = (("nltk", "nltk"),)
SPEECH_BIAS = 4.0  # the random VAD's classifier bias: sigmoid(4) = 0.98, speech everywhere


def missing_pieces(
    find: Callable[[str], Any] = importlib.util.find_spec, pieces: tuple[tuple[str, str], ...] = PIECES
) -> list[str]:
    """The wheels of `pieces` whose modules cannot be found here."""
    missing = []
    for module, wheel in pieces:
        try:
            found = find(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            missing.append(wheel)
    return missing


class NoPyAV(ImportError):
    """Raised by the `av` stand-in: nothing on the kit's path decodes a file."""


def install_av_stand_in() -> bool:
    """Put a stand-in `av` in sys.modules when PyAV is not installed; True when it did."""
    if "av" in sys.modules or importlib.util.find_spec("av") is not None:
        return False
    stand_in = types.ModuleType("av")

    def fail(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NoPyAV(f"av.{name}: PyAV is not on the lent machine; the kit hands the pipeline decoded arrays")

    stand_in.__getattr__ = fail  # type: ignore[method-assign]
    sys.modules["av"] = stand_in
    return True


def write_faster_whisper_files(folder: Path, vocab_size: int, mel_bins: int) -> None:
    """tokenizer.json and preprocessor_config.json beside a `whisper_ct2.build` model, as faster-whisper reads."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from bench.gpu_kit.whisper_ct2 import TIMESTAMPS, stand_in_tokenizer

    vocabulary = {
        name if name.startswith("<|") else letters(index): index
        for name, index in stand_in_tokenizer(vocab_size).get_vocab().items()
    }
    first_timestamp = vocab_size - TIMESTAMPS
    vocabulary.update({f"<|{i * 0.02:.2f}|>": first_timestamp + i for i in range(TIMESTAMPS)})
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([name for name in vocabulary if name.startswith("<|")])
    tokenizer.save(str(folder / "tokenizer.json"))
    preprocessor = {"feature_size": mel_bins, "hop_length": 160, "chunk_length": 30, "n_fft": 400}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor) + "\n")


def letters(index: int) -> str:
    """`index` in bijective base 26 over a-z (0 -> a, 26 -> aa): a distinct word of letters per token, so that
    what the random Whisper reads is words an alignment model's dictionary holds (1 to 4 letters)."""
    word = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        word = chr(ord("a") + remainder) + word
    return word


def write_align_model(folder: Path, sizes: dict[str, Any] | None = None) -> None:
    """A seeded random Wav2Vec2ForCTC at wav2vec2-base-960h's shape (`bench.models`), `sizes` changing its config,
    with its processor: a folder whisperx's `load_align_model` loads offline."""
    import torch
    from transformers import Wav2Vec2ForCTC

    from bench.models import ALIGN_BASE, SEED, align_config, write_align_processor

    config = align_config(ALIGN_BASE)
    config.update(sizes or {})
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    Wav2Vec2ForCTC(config).eval().save_pretrained(str(folder), safe_serialization=True)
    write_align_processor(folder)


# --- the VAD checkpoint ---------------------------------------------------------------------------------------

TASK_MODULE = "pyannote.audio.core.task"  # where pyannote's checkpoint names its classes


class _Problem(enum.Enum):  # pyannote.audio.core.task.Problem, the member the loader takes
    MULTI_LABEL_CLASSIFICATION = 2


class _Specifications:  # pyannote.audio.core.task.Specifications: the fields the loader reads
    def __init__(self, **fields: Any):
        self.__dict__.update(fields)


class _PyannotePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes the two classes above under pyannote's names (the names the project's loader allows)."""

    NAMES = {_Problem: "Problem", _Specifications: "Specifications"}

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj in self.NAMES:
            self.write(pickle.GLOBAL + f"{TASK_MODULE}\n{self.NAMES[obj]}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_vad_checkpoint(path: Path) -> None:
    """A PyanNet of whisperx's shape (`kit_models.VAD_HPARAMS`), seeded random weights, in pyannote's checkpoint
    format; its classifier's bias `SPEECH_BIAS` (speech throughout)."""
    import torch

    from bench.gpu_kit.kit_models import VAD_HPARAMS, build_vad

    model = build_vad("cpu")
    with torch.no_grad():
        model.classifier.bias.fill_(SPEECH_BIAS)
    specifications = _Specifications(
        problem=_Problem.MULTI_LABEL_CLASSIFICATION,
        classes=[f"speaker#{i + 1}" for i in range(VAD_HPARAMS["num_classes"])],
        duration=5.0,
        warm_up=(0.0, 0.0),
        powerset_max_classes=None,
    )
    checkpoint = {
        "pyannote.audio": {"architecture": {"class": "PyanNet"}, "specifications": specifications},
        "hyper_parameters": {key: dict(value) for key, value in VAD_HPARAMS.items() if isinstance(value, dict)},
        "state_dict": model.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = types.ModuleType("pyannote_names_pickle")
    writer.Pickler = _PyannotePickler  # type: ignore[attr-defined]
    torch.save(checkpoint, path, pickle_module=writer)
