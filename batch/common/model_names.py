"""faster-whisper's table of Whisper model names (`tiny.en` -> `Systran/faster-whisper-tiny.en`), read from its
source rather than imported: importing faster_whisper loads CTranslate2 and PyAV (hundreds of MB mapped), and the
processes that only check settings or hand files to workers must not pay for that."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

# What faster_whisper.utils.download_model fetches of a model's repository (its allow_patterns).
MODEL_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")


@functools.cache
def whisper_models() -> dict[str, str]:
    """Name -> Hugging Face repository, as faster_whisper.utils._MODELS holds them."""
    spec = importlib.util.find_spec("faster_whisper")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return {}
    source = Path(next(iter(spec.submodule_search_locations))) / "utils.py"
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "_MODELS" for target in node.targets):
            return dict(ast.literal_eval(node.value))
    raise RuntimeError(f"faster-whisper's model table (_MODELS) not found in {source}")


def whisper_model_names() -> list[str]:
    """What faster_whisper.utils.available_models() returns."""
    return list(whisper_models())


def hub_repository(model: str) -> str | None:
    """The Hub repository faster-whisper takes `model` from, by download_model's rule: an id with a `/` is one
    itself, else a name of its table; None for a name it would refuse."""
    return model if "/" in model else whisper_models().get(model)
