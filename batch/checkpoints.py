"""Load pyannote checkpoints with torch's safe unpickler and an explicit allowlist.

pyannote.audio 4 calls torch.load(weights_only=False), which will run any code a checkpoint carries.
Here the file is unpickled with weights_only=True and only the classes that pyannote's own
checkpoints are made of; anything else is refused. No global patch of torch.load.
"""

from __future__ import annotations

import collections
import typing
from importlib import import_module
from pathlib import Path

import torch
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.listconfig import ListConfig
from omegaconf.nodes import AnyNode
from pyannote.audio import Model
from pyannote.audio.core.model import Introspection
from pyannote.audio.core.task import Problem, Resolution, Specifications
from torch.torch_version import TorchVersion

TRUSTED_PYANNOTE_GLOBALS: list[typing.Any] = [
    Problem,
    Resolution,
    Specifications,
    Introspection,
    TorchVersion,
    ListConfig,
    ContainerMetadata,
    Metadata,
    AnyNode,
    typing.Any,
    collections.defaultdict,
    dict,
    list,
    int,
]


def load_pyannote_model(path: str | Path) -> Model:
    """A pyannote Model from a local checkpoint, unpickled with the allowlist above (on the CPU)."""
    with torch.serialization.safe_globals(TRUSTED_PYANNOTE_GLOBALS):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        architecture = checkpoint["pyannote.audio"]["architecture"]
        model_class = getattr(import_module(architecture["module"]), architecture["class"])
        if not (isinstance(model_class, type) and issubclass(model_class, Model)):
            raise TypeError(f"{path}: {architecture} is not a pyannote.audio Model")
        model = model_class.load_from_checkpoint(path, map_location="cpu", strict=False, weights_only=True)
    return model.eval()
