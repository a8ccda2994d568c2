"""Models for measuring: the real classes at their real sizes, with seeded random weights, built offline.

What a model costs to load and run (time, memory, file size) depends on its architecture and sizes, not on the
values of its weights; no PyPI package carries the real alignment or diarization weights, and benchmarks run where
the model hub is out of reach. So these builders write, into a folder, models that load through the same code
paths as the real ones and cost what they cost:

- `build_align_model(folder)`: transformers' Wav2Vec2ForCTC configured as facebook/wav2vec2-base-960h (whisperx's
  English default: group-norm feature encoder, 12 layers, hidden 768; 94,396,320 parameters, as the real one) with
  its 32-entry character vocabulary, and a Wav2Vec2Processor. `preset="wav2vec2-large-xlsr-53"` gives instead the
  layer-norm ("stable layer norm") layout of the XLSR-53 fine-tunes whisperx uses for most other languages
  (24 layers, hidden 1024, 315,471,520 parameters). Loads with
  `whisperx.load_align_model(language, device, model_name=folder)`.
- `build_diarization_pipeline(folder)`: a pyannote 4 SpeakerDiarization folder laid out like
  pyannote/speaker-diarization-community-1 (config.yaml with its parameters, segmentation/, embedding/, plda/):
  segmentation = PyanNet configured as pyannote/segmentation-3.0 (10 s windows, powerset of 3 speakers with at most
  2 at once), embedding = WeSpeakerResNet34 at full size, PLDA with community-1's shapes (256-dim embeddings,
  128-dim LDA). Loads with `pyannote.audio.Pipeline.from_pretrained(folder)` and whisperx's DiarizationPipeline.

Random weights are fine for cost except where they change the work done: a random segmentation model outputs one
constant class, so the pipeline would find no speech (nothing to embed or cluster) or all overlap. segmentation-3.0
has exactly the layers and sizes of the segmentation model whisperx bundles (whisperx/assets/pytorch_model.bin:
trained, 5 s windows, 3 independent speaker sigmoids); its weights are copied in, and its classifier rewritten for
the powerset exactly (see `powerset_classifier`), so speech regions and turns are real. The speaker embeddings are
random, so voices are not told apart (on pyannote's 30 s sample call one main speaker is found, a second only in
overlaps): clustering may do less work than with real embeddings, a small part of the cost. What dominates is the
embedding: every 10 s window (one a second) is embedded once per local speaker, ~30 s of audio through ResNet34 per
second of input, as with the real pipeline.

`python -m bench.models OUT_DIR` builds both under OUT_DIR (skipping a folder already built: a stamp file records
what was built) and prints their parameter counts and sizes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from pyannote.audio import Model
    from pyannote.audio.models.embedding import WeSpeakerResNet34
    from pyannote.audio.models.segmentation import PyanNet
    from transformers import Wav2Vec2Config

PathLike = str | os.PathLike[str]

SEED = 0
SAMPLE_RATE = 16_000
#: written last into a built folder: what was built (compared on the next build) and what it came to
STAMP = ".bench-models.json"
#: bumped whenever a builder changes what it writes, so that older builds are rebuilt
FORMAT = 1

ALIGN_BASE = "wav2vec2-base-960h"
ALIGN_LARGE = "wav2vec2-large-xlsr-53"
DIARIZATION = "speaker-diarization-community-1"

#: facebook/wav2vec2-base-960h's vocabulary: 4 specials, the word delimiter, then its characters by frequency
ALIGN_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]

#: Wav2Vec2Config settings of the real models (the rest are transformers' defaults, which are wav2vec2-base's:
#: 7 conv layers of 512 channels, strides 5,2,2,2,2,2,2 = 320 samples = 20 ms a frame, 128-wide positional conv)
ALIGN_PRESETS: dict[str, dict[str, Any]] = {
    ALIGN_BASE: {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "conv_bias": False,
    },
    ALIGN_LARGE: {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "conv_bias": True,
    },
}

#: pyannote/segmentation-3.0's PyanNet (the same as whisperx's bundled segmentation model's)
SEGMENTATION_HPARAMS: dict[str, dict[str, Any]] = {
    "sincnet": {"stride": 10},
    "lstm": {"hidden_size": 128, "num_layers": 4, "bidirectional": True, "monolithic": True, "dropout": 0.5},
    "linear": {"hidden_size": 128, "num_layers": 2},
}
SEGMENTATION_SECONDS = 10.0  # segmentation-3.0's window (whisperx's bundled model: 5 s)
SPEAKERS_PER_WINDOW = 3
MAX_SPEAKERS_AT_ONCE = 2

EMBEDDING_DIMENSION = 256  # WeSpeakerResNet34's
LDA_DIMENSION = 128  # pyannote.audio.core.plda.PLDA's default, community-1's

#: community-1's config.yaml: the pipeline's arguments ($model/... are its subfolders) and tuned parameters
#: (those of pyannote 4's SpeakerDiarization.default_parameters); segmentation_step is left at 0.1 of a window
COMMUNITY_1_PIPELINE: dict[str, Any] = {
    "clustering": "VBxClustering",
    "embedding": "$model/embedding",
    "embedding_batch_size": 32,
    "embedding_exclude_overlap": True,
    "plda": "$model/plda",
    "segmentation": "$model/segmentation",
    "segmentation_batch_size": 32,
}
COMMUNITY_1_PARAMS: dict[str, Any] = {
    "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
    "segmentation": {"min_duration_off": 0.0},
}


# --- alignment -----------------------------------------------------------------------------------------------------


def align_config(preset: str = ALIGN_BASE, vocab_size: int = len(ALIGN_VOCAB)) -> Wav2Vec2Config:
    """The Wav2Vec2Config of a real alignment model (`ALIGN_PRESETS`), with a CTC head of `vocab_size`."""
    from transformers import Wav2Vec2Config

    if preset not in ALIGN_PRESETS:
        raise ValueError(f"unknown alignment preset {preset!r}: one of {', '.join(ALIGN_PRESETS)}")
    return Wav2Vec2Config(
        **ALIGN_PRESETS[preset],
        vocab_size=vocab_size,
        pad_token_id=ALIGN_VOCAB.index("<pad>"),
        bos_token_id=ALIGN_VOCAB.index("<s>"),
        eos_token_id=ALIGN_VOCAB.index("</s>"),
        architectures=["Wav2Vec2ForCTC"],
    )


def write_align_processor(folder: Path, vocabulary: Sequence[str] = ALIGN_VOCAB) -> None:
    """Save a Wav2Vec2Processor like wav2vec2-base-960h's: a CTC tokenizer over `vocabulary` (blank = <pad>,
    word delimiter = |; upper case by default, and whisperx lower-cases it) and a normalising feature extractor."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocabulary)}, ensure_ascii=False))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        word_delimiter_token="|",
        do_lower_case=False,
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(folder))


def build_align_model(folder: PathLike, preset: str = ALIGN_BASE, seed: int = SEED) -> dict[str, int]:
    """Write a seeded random Wav2Vec2ForCTC of `preset`'s sizes (model.safetensors, fp32: as large as the real
    model's weights) and its processor into `folder`; return {"model": its parameter count}."""
    import torch
    from transformers import Wav2Vec2ForCTC

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(align_config(preset)).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    write_align_processor(out)
    return {"model": parameter_count(model)}


def align_parameter_count(preset: str = ALIGN_BASE) -> int:
    """Parameters of `preset`'s model, counted on the meta device (no memory, no initialisation)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    with torch.device("meta"):
        return parameter_count(Wav2Vec2ForCTC(align_config(preset)))


# --- diarization ---------------------------------------------------------------------------------------------------


def checkpoint_globals() -> list[Any]:
    """What pyannote checkpoints are made of, for torch's safe unpickler (torch.load(weights_only=True))."""
    from pyannote.audio.core.model import Introspection
    from pyannote.audio.core.task import Problem, Resolution, Specifications

    from batch.engine.vad.segmentation import container_globals

    return [Problem, Resolution, Specifications, Introspection, *container_globals()]


def whisperx_segmentation_weights() -> dict[str, torch.Tensor]:
    """The state dict of the trained segmentation model whisperx bundles (whisperx/assets/pytorch_model.bin),
    read with the safe unpickler."""
    import torch
    import whisperx

    path = Path(whisperx.__file__).parent / "assets" / "pytorch_model.bin"
    with torch.serialization.safe_globals(checkpoint_globals()):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def powerset_classifier(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A multi-label classifier (one sigmoid logit z_i per speaker) rewritten as segmentation-3.0's powerset one.

    The logit of a set S of speakers is the sum of its speakers' logits: softmax over the sets of at most
    `MAX_SPEAKERS_AT_ONCE` speakers of sum_{i in S} z_i is exactly the multi-label model's probability of S
    (prod_{i in S} p_i prod_{i not in S} (1 - p_i), whose common factor prod_i (1 - p_i) cancels), given that no
    more than that many speak at once. Linear in the weights, hence a Linear layer again.
    """
    from pyannote.audio.utils.powerset import Powerset

    mapping = Powerset(weight.shape[0], MAX_SPEAKERS_AT_ONCE).mapping.to(weight.dtype)  # (sets, speakers)
    return mapping @ weight, mapping @ bias


def segmentation_model() -> PyanNet:
    """PyanNet as pyannote/segmentation-3.0 (its layers, 10 s windows, 7 powerset classes), carrying the weights
    of whisperx's trained segmentation model (same layers; classifier by `powerset_classifier`)."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    model = PyanNet(**SEGMENTATION_HPARAMS, sample_rate=SAMPLE_RATE, num_channels=1)
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=SEGMENTATION_SECONDS,
        warm_up=(0.0, 0.0),
        classes=[f"speaker#{i}" for i in range(1, SPEAKERS_PER_WINDOW + 1)],
        powerset_max_classes=MAX_SPEAKERS_AT_ONCE,
        permutation_invariant=True,
    )
    model.build()  # classifier and activation (log-softmax), as setup() adds them when a checkpoint is loaded
    weights = dict(whisperx_segmentation_weights())
    weights["classifier.weight"], weights["classifier.bias"] = powerset_classifier(
        weights.pop("classifier.weight"), weights.pop("classifier.bias")
    )
    model.load_state_dict(weights, strict=True)
    return model.eval()


def embedding_model(seed: int = SEED) -> WeSpeakerResNet34:
    """WeSpeakerResNet34 at full size (community-1's embedding: 80 fbanks, 256-dim), seeded random weights, with
    the specifications pyannote's WeSpeaker converter gives it."""
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    torch.manual_seed(seed)
    model = WeSpeakerResNet34(sample_rate=SAMPLE_RATE, num_channels=1)
    model.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0)
    return model.eval()


def save_pyannote_checkpoint(model: Model, path: Path) -> Path:
    """Save a pyannote Model as a checkpoint `Model.from_pretrained` loads (no Trainer needed: what Lightning would
    write, less optimizer state) and that torch's safe unpickler reads with `checkpoint_globals`."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)  # "pyannote.audio": versions, architecture, specifications
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def write_plda(folder: Path, seed: int = SEED) -> Path:
    """Write the two files pyannote's PLDA.from_pretrained reads, with community-1's shapes and seeded values:
    xvec_transform.npz {mean1 (256,), mean2 (128,), lda (256, 128)} (float32) and plda.npz {mu (128,),
    tr (128, 128), psi (128,)} (float64). lda has orthonormal columns and tr is orthogonal, so the generalized
    eigenproblem of vbx_setup is well posed; psi decreases, as between-speaker variances do."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lda, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIMENSION, LDA_DIMENSION)))
    tr, _ = np.linalg.qr(rng.standard_normal((LDA_DIMENSION, LDA_DIMENSION)))
    np.savez(
        folder / "xvec_transform.npz",
        mean1=(0.01 * rng.standard_normal(EMBEDDING_DIMENSION)).astype(np.float32),
        mean2=np.zeros(LDA_DIMENSION, dtype=np.float32),
        lda=lda.astype(np.float32),
    )
    np.savez(folder / "plda.npz", mu=np.zeros(LDA_DIMENSION), tr=tr, psi=np.geomspace(30.0, 0.05, LDA_DIMENSION))
    return folder


def pipeline_config() -> dict[str, Any]:
    """community-1's config.yaml (see `COMMUNITY_1_PIPELINE`)."""
    return {
        "dependencies": {"pyannote.audio": "4.0.0"},
        "pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization", "params": dict(COMMUNITY_1_PIPELINE)},
        "params": copy.deepcopy(COMMUNITY_1_PARAMS),
    }


def build_diarization_pipeline(folder: PathLike, seed: int = SEED) -> dict[str, int]:
    """Write a community-1-shaped pipeline into `folder`; return the parameter counts of its two networks::

    config.yaml
    segmentation/pytorch_model.bin   PyanNet as segmentation-3.0 (whisperx's trained weights)
    embedding/pytorch_model.bin      WeSpeakerResNet34 (seeded random)
    plda/xvec_transform.npz, plda/plda.npz
    """
    import yaml

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    networks = {"segmentation": segmentation_model(), "embedding": embedding_model(seed)}
    for part, model in networks.items():
        save_pyannote_checkpoint(model, out / part / "pytorch_model.bin")
    write_plda(out / "plda", seed)
    (out / "config.yaml").write_text(yaml.safe_dump(pipeline_config(), sort_keys=False))
    return {part: parameter_count(model) for part, model in networks.items()}


# --- building ------------------------------------------------------------------------------------------------------


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def ensure_built(folder: Path, spec: dict[str, Any], build: Callable[[Path], dict[str, int]]) -> bool:
    """Build `spec` into `folder` with `build` (which returns parameter counts, kept in the stamp) unless the
    folder's stamp says it already holds it; True when it was built now.

    Built in a sibling temporary folder, stamped, then renamed into place: an interrupted build leaves no folder
    that looks built. A folder holding an older build (another stamp) is replaced; any other existing folder is
    left alone and refused.
    """
    stamp = read_stamp(folder)
    if stamp is not None and stamp.get("spec") == spec:
        return False
    if folder.exists() and stamp is None and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and was not built here (no {STAMP}): remove it or build elsewhere")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.{os.urandom(3).hex()}.partial"
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 would stay on the built folder
    try:
        started = time.perf_counter()
        parameters = build(staging)
        seconds = round(time.perf_counter() - started, 1)
        record = {"spec": spec, "parameters": parameters, "bytes": folder_size(staging), "build_seconds": seconds}
        (staging / STAMP).write_text(json.dumps(record, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def align_spec(preset: str, seed: int) -> dict[str, Any]:
    return {"kind": "align", "preset": preset, "seed": seed, "format": FORMAT}


def diarization_spec(seed: int) -> dict[str, Any]:
    return {"kind": "diarization", "layout": DIARIZATION, "seed": seed, "format": FORMAT}


def build_all(
    out_dir: PathLike, align_presets: Sequence[str] = (ALIGN_BASE,), seed: int = SEED
) -> dict[str, tuple[Path, bool]]:
    """Build the alignment model(s) and the diarization pipeline under `out_dir`, one folder each named after the
    model it stands for; returns {name: (folder, built now)}."""
    out = Path(out_dir)
    done: dict[str, tuple[Path, bool]] = {}
    for preset in align_presets:
        folder = out / preset
        built = ensure_built(folder, align_spec(preset, seed), lambda path, p=preset: build_align_model(path, p, seed))
        done[preset] = (folder, built)
    folder = out / DIARIZATION
    built = ensure_built(folder, diarization_spec(seed), lambda path: build_diarization_pipeline(path, seed))
    done[DIARIZATION] = (folder, built)
    return done


def describe(name: str, folder: Path, built: bool) -> str:
    """One line per model: its folder, parameters (from its stamp), size on disk, and whether it was built now."""
    stamp = read_stamp(folder) or {}
    counts = ", ".join(f"{part} {count:,}" for part, count in stamp.get("parameters", {}).items())
    how = f"built in {stamp.get('build_seconds', '?')} s" if built else "already built"
    return f"{name}: {folder} (parameters: {counts}; {folder_size(folder) / 1e6:.1f} MB; {how})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to build the models under")
    parser.add_argument(
        "--align",
        action="append",
        choices=sorted(ALIGN_PRESETS),
        help=f"alignment model(s) to build (default {ALIGN_BASE}; {ALIGN_LARGE} is 1.3 GB)",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")  # no telemetry from pyannote (read on its import)
    for name, (folder, built) in build_all(args.out_dir, args.align or [ALIGN_BASE], args.seed).items():
        print(describe(name, folder, built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
