"""Small models of the real classes whisperx loads, built on disk for tests (random weights).

No PyPI package carries wav2vec2 alignment or pyannote diarization weights, so the tests build tiny ones
and drive them through the same loading code users hit:
- build_tiny_align_model(dir): a transformers Wav2Vec2ForCTC + Wav2Vec2Processor with a character vocabulary,
  for whisperx.alignment.load_align_model(model_name=dir);
- build_tiny_diarization_pipeline(dir): a pyannote 4 SpeakerDiarization folder (config.yaml, segmentation,
  embedding, plda) laid out like pyannote/speaker-diarization-community-1, where the segmentation can be
  whisperx's bundled, trained checkpoint and the embedding a tiny XVectorMFCC or (embedding="wespeaker")
  community-1's WeSpeakerResNet34 class, full size or with a narrower trunk (NarrowWeSpeakerResNet34).
Timings and speaker labels from random weights are structurally valid, not meaningful.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# pyannote.audio is imported by tests/conftest.py anyway; the class below must be importable by name from here for
# Model.from_pretrained to rebuild it from a checkpoint.
from pyannote.audio.models.embedding import WeSpeakerResNet34
from pyannote.audio.models.embedding.wespeaker.resnet import BasicBlock, ResNet

PathLike = str | os.PathLike

#: WeSpeakerResNet34's embedding dimension and the LDA dimension of community-1's PLDA
WESPEAKER_DIMENSION = 256
WESPEAKER_LDA_DIMENSION = 128
#: channels of the first ResNet34 stage of community-1's WeSpeakerResNet34
WESPEAKER_TRUNK_WIDTH = 32


#: same layout as facebook/wav2vec2-base-960h (ids 0..4 special), lowercase
DEFAULT_ALIGN_CHARS = list("etaonihsrdlumwcfgypbvk'xjqz")


def build_tiny_align_model(
    out_dir: PathLike,
    chars: Iterable[str] = DEFAULT_ALIGN_CHARS,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    conv_dim: tuple = (16, 16, 16),
    conv_kernel: tuple = (10, 8, 4),
    conv_stride: tuple = (5, 8, 8),
    seed: int = 0,
    feat_extract_norm: str = "group",
) -> Path:
    """Write a random-init ``Wav2Vec2ForCTC`` + ``Wav2Vec2Processor`` folder.

    ``feat_extract_norm``: "group" as wav2vec2-base (the first conv layer normalises each channel over the whole
    input), or "layer" as the XLSR models (every conv layer normalises each frame; stable layer norm).

    Vocab: ``<pad>``=0 (CTC blank; whisperx picks the id of '<pad>'/'[pad]'
    as blank), ``<s>``, ``</s>``, ``<unk>``, ``|`` (word delimiter), then
    ``chars``.  conv strides multiply to 320 samples = 20 ms frames, like the
    real base models.  Files: config.json, model.safetensors, vocab.json,
    tokenizer_config.json, special_tokens_map.json, preprocessor_config.json
    (~100 kB total).  Returns ``out_dir``.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from bench.models import write_align_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for c in chars:
        if c not in vocab:
            vocab[c] = len(vocab)
    write_align_processor(out, list(vocab))

    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        conv_dim=tuple(conv_dim),
        conv_kernel=tuple(conv_kernel),
        conv_stride=tuple(conv_stride),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=min(16, hidden_size),
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=feat_extract_norm == "layer",
        apply_spec_augment=False,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        ctc_loss_reduction="mean",
    )
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def whisperx_segmentation_checkpoint() -> Path:
    """The real pyannote segmentation checkpoint shipped inside whisperx
    (whisperx/assets/pytorch_model.bin, 17.7 MB, PyanNet, 5 s chunks,
    3-speaker multi-label, non-powerset: whisperx uses it as its VAD)."""
    import whisperx

    return Path(whisperx.__file__).parent / "assets" / "pytorch_model.bin"


def _strided_random(shape, fan_in: int, generator):  # noqa: ANN201
    """Random-looking tensor of `shape` that is an ``as_strided`` view of a
    small buffer (overlapping rows, Toeplitz-like), scaled ~ 1/sqrt(fan_in).
    torch.save stores only the small buffer, so big layers cost ~KB on disk.
    """
    import torch

    dims = len(shape)
    strides = [1] * dims
    if dims >= 2:
        strides[0] = 7
    if dims >= 3:
        strides[1] = 3
    span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1
    base = torch.randn(span, generator=generator) / max(1.0, fan_in) ** 0.5
    return torch.as_strided(base, tuple(shape), tuple(strides))


def _shrink_state_dict(model, seed: int) -> dict:
    """Replace every floating >=2-D tensor of model.state_dict() by a small
    strided random view, load it into the model (dense copies), and return the
    view-based dict for saving."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.dim() >= 2:
            state[k] = _strided_random(v.shape, v[0].numel(), g)
        else:
            state[k] = v.clone()
    model.load_state_dict(state)
    return state


def _save_pyannote_checkpoint(model, path: Path, state_dict: dict | None = None) -> Path:
    """Save a pyannote ``Model`` the way a Lightning checkpoint looks to
    ``Model.from_pretrained`` -> ``LightningModule.load_from_checkpoint``
    (no Trainer needed): keys "pyannote.audio" {versions, architecture,
    specifications} (filled by model.on_save_checkpoint), "state_dict",
    "hyper_parameters", "pytorch-lightning_version"."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": state_dict if state_dict is not None else model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def build_tiny_embedding_checkpoint(
    path: PathLike,
    dimension: int = 16,
    n_mfcc: int = 20,
    hop_length: int = 800,
    seed: int = 0,
    small_file: bool = True,
) -> Path:
    """Random ``pyannote.audio.models.embedding.XVectorMFCC`` checkpoint.

    XVectorMFCC is a real pyannote speaker-embedding class whose TDNN widths
    (512,512,512,512,1500) are hard-coded: ~2.7 M parameters, i.e. 11 MB as a
    plain fp32 file.  We shrink what we can (dimension, n_mfcc, MFCC hop =
    50 ms so a 5 s chunk is ~100 frames -> fast on CPU) and, with
    ``small_file=True``, store the weights as strided views of small random
    buffers -> ~0.2 MB file.  (WeSpeakerResNet34, community-1's class, has
    fixed 32..256-channel ResNet34 blocks: ~6.6 M params and much slower.)
    """
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorMFCC

    torch.manual_seed(seed)
    model = XVectorMFCC(
        sample_rate=16000,
        num_channels=1,
        mfcc={"n_mfcc": n_mfcc, "melkwargs": {"n_fft": 1024, "hop_length": hop_length, "n_mels": max(n_mfcc, 32)}},
        dimension=dimension,
    )
    # what pyannote's SupervisedRepresentationLearning task sets
    model.specifications = Specifications(
        problem=Problem.REPRESENTATION,
        resolution=Resolution.CHUNK,
        duration=5.0,
        classes=None,
    )
    model.eval()
    state = _shrink_state_dict(model, seed) if small_file else None
    return _save_pyannote_checkpoint(model, Path(path), state)


class NarrowWeSpeakerResNet34(WeSpeakerResNet34):
    """WeSpeakerResNet34 (community-1's embedding class) with `m_channels` channels in its first ResNet stage
    instead of 32 (the class has no width argument): the same fbank, blocks, statistics pooling and final layer,
    the same forward code, (m_channels / 32)^2 of the trunk's FLOPs. m_channels is a hyper-parameter, so its
    checkpoint loads back with Model.from_pretrained (which imports this class from tests.tiny_models)."""

    def __init__(
        self,
        m_channels: int = 8,
        sample_rate: int = 16000,
        num_channels: int = 1,
        num_mel_bins: int = 80,
        frame_length: int = 25,
        frame_shift: int = 10,
        dither: float = 0.0,
        window_type: str = "hamming",
        use_energy: bool = False,
        task=None,  # noqa: ANN001
    ) -> None:
        super().__init__(
            sample_rate=sample_rate,
            num_channels=num_channels,
            num_mel_bins=num_mel_bins,
            frame_length=frame_length,
            frame_shift=frame_shift,
            dither=dither,
            window_type=window_type,
            use_energy=use_energy,
            task=task,
        )
        self.save_hyperparameters("m_channels")
        self.resnet = ResNet(
            BasicBlock,
            [3, 4, 6, 3],
            m_channels=m_channels,
            feat_dim=num_mel_bins,
            embed_dim=WESPEAKER_DIMENSION,
            pooling_func="TSTP",
            two_emb_layer=False,
        )


def build_wespeaker_checkpoint(path: PathLike, trunk_width: int = 8, seed: int = 0) -> Path:
    """Random-init WeSpeakerResNet34 checkpoint (256-dim embeddings, 80 fbanks): the real class at full size when
    trunk_width is 32 (~6.6 M parameters, 26 MB), else NarrowWeSpeakerResNet34(m_channels=trunk_width) (8: 16x
    fewer trunk FLOPs, ~1.7 MB). Weights as torch initialises them: embeddings differ between voices, windows."""
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications

    torch.manual_seed(seed)
    if trunk_width == WESPEAKER_TRUNK_WIDTH:
        model = WeSpeakerResNet34()
    else:
        model = NarrowWeSpeakerResNet34(m_channels=trunk_width)
    # what pyannote's WeSpeaker converter and SupervisedRepresentationLearning task set
    model.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0, classes=None
    )
    model.eval()
    return _save_pyannote_checkpoint(model, Path(path))


def build_tiny_segmentation_checkpoint(
    path: PathLike,
    lstm_hidden: int = 16,
    lstm_layers: int = 1,
    linear_hidden: int = 16,
    duration: float = 5.0,
    powerset: bool = True,
    seed: int = 0,
) -> Path:
    """Random ``pyannote.audio.models.segmentation.PyanNet`` checkpoint.

    powerset=True mimics pyannote/segmentation-3.0 (3 speakers, at most 2
    simultaneous -> 7 powerset classes; pipeline then needs only
    segmentation.min_duration_off).  powerset=False mimics segmentation 2.x /
    whisperx's asset (3-label sigmoid; pipeline also needs
    segmentation.threshold).  SincNet front-end is fixed-size; LSTM/linear
    are tiny.  ~0.1 MB.
    """
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(seed)
    model = PyanNet(
        sincnet={"stride": 10},
        lstm={
            "hidden_size": lstm_hidden,
            "num_layers": lstm_layers,
            "bidirectional": True,
            "monolithic": True,
            "dropout": 0.0,
        },
        linear={"hidden_size": linear_hidden, "num_layers": 1},
        sample_rate=16000,
        num_channels=1,
    )
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION if powerset else Problem.MULTI_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=duration,
        min_duration=duration,
        warm_up=(0.0, 0.0),
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2 if powerset else None,
        permutation_invariant=True,
    )
    model.build()  # classifier + activation (what setup() adds)
    # Random weights alone give one constant class (always "overlap"), which
    # leaves no single-speaker frames for clustering.  Amplify the classifier
    # and bias it toward silence/single-speaker classes so outputs vary with
    # the audio (seed 0 on pyannote's sample.wav: ~30% silence, 2-3 speakers).
    with torch.no_grad():
        model.classifier.weight.mul_(10.0)
        if powerset:  # classes: {}, {1}, {2}, {3}, {1,2}, {1,3}, {2,3}
            model.classifier.bias.copy_(torch.tensor([-0.5, 0, 0, 0, -3, -3, -3]))
        else:  # sigmoid per speaker, pipeline threshold 0.5
            model.classifier.bias.copy_(torch.tensor([0.0, 0.0, -3.0]))
    model.eval()
    return _save_pyannote_checkpoint(model, Path(path))


def copy_whisperx_segmentation(path: PathLike) -> Path:
    """Copy whisperx's bundled (trained) segmentation checkpoint to `path`
    without its optimizer/lr-scheduler/callback state: 17.7 MB -> ~5.9 MB.
    Loads with Model.from_pretrained like the original."""
    import torch

    # The allowlisted safe unpickler; map_location: its tensors were saved on CUDA.
    with torch.serialization.safe_globals(pyannote_checkpoint_globals()):
        ck = torch.load(whisperx_segmentation_checkpoint(), map_location="cpu", weights_only=True)
    import lightning

    keep = {
        k: ck[k]
        for k in ("state_dict", "hyper_parameters", "hparams_name", "pyannote.audio", "epoch", "global_step")
        if k in ck
    }
    # 1.5.4 in the original: Lightning would print an "automatically upgraded
    # your loaded checkpoint" notice on every load.  Nothing left to migrate.
    keep["pytorch-lightning_version"] = lightning.__version__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(keep, path)
    return path


def build_tiny_plda(out_dir: PathLike, dimension: int = 16, lda_dimension: int | None = None, seed: int = 0) -> Path:
    """Write xvec_transform.npz {mean1 (D,), mean2 (L,), lda (D, L)} and
    plda.npz {mu (L,), tr (L, L), psi (L,)} -- the files
    pyannote.audio.core.plda.PLDA.from_pretrained(<dir>) reads (vbx_setup).
    SpeakerDiarization loads a PLDA even when clustering is not VBx."""
    import numpy as np

    rng = np.random.default_rng(seed)
    L = lda_dimension or dimension
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    q, _ = np.linalg.qr(rng.standard_normal((dimension, dimension)))
    np.savez(out / "xvec_transform.npz", mean1=np.zeros(dimension), mean2=np.zeros(L), lda=q[:, :L])
    np.savez(out / "plda.npz", mu=np.zeros(L), tr=np.eye(L), psi=np.sort(rng.uniform(0.5, 5.0, L))[::-1].copy())
    return out


def build_tiny_diarization_pipeline(
    out_dir: PathLike,
    segmentation: str = "tiny",
    clustering: str = "AgglomerativeClustering",
    embedding_dimension: int = 16,
    segmentation_step: float = 0.1,
    min_duration_off: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    embedding: str = "xvector",
    trunk_width: int = 8,
) -> Path:
    """Write a pyannote 4 pipeline folder, laid out like
    pyannote/speaker-diarization-community-1::

        out_dir/config.yaml
        out_dir/segmentation/pytorch_model.bin
        out_dir/embedding/pytorch_model.bin   (tiny XVectorMFCC, or WeSpeakerResNet34)
        out_dir/plda/{xvec_transform,plda}.npz

    segmentation: "tiny" (random powerset PyanNet, ~0.1 MB), "tiny-multilabel"
    (random non-powerset PyanNet) or "whisperx" (trained checkpoint copied
    from whisperx/assets, ~5.9 MB: gives real speech regions).
    clustering: "AgglomerativeClustering" or "VBxClustering" (both need the
    plda/ folder: SpeakerDiarization.__init__ always loads a PLDA).
    segmentation_step: window step as a fraction of the 5 s window (0.1 ->
    51 windows for 30 s).  min_duration_off: gaps shorter than this are
    filled (0.0 like community-1; ~0.5 gives fewer, longer turns).
    embedding: "xvector" (XVectorMFCC of `embedding_dimension`) or "wespeaker" (WeSpeakerResNet34 of
    `trunk_width`, see build_wespeaker_checkpoint; 256-dim, PLDA 256 -> 128 like community-1's, whatever
    `embedding_dimension` says). segmentation="whisperx", clustering="VBxClustering", embedding="wespeaker"
    and min_duration_off=0 give community-1's pipeline but for the segmentation (5 s multi-label windows,
    binarized at 0.5, instead of segmentation-3.0's 10 s powerset ones).
    Load with DiarizationPipeline(model_name=str(out_dir)) or
    pyannote.audio.Pipeline.from_pretrained(out_dir) (dir or its config.yaml).
    """
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seg_file = out / "segmentation" / "pytorch_model.bin"
    if segmentation == "tiny":
        build_tiny_segmentation_checkpoint(seg_file, powerset=True, seed=seed)
        powerset = True
    elif segmentation == "tiny-multilabel":
        build_tiny_segmentation_checkpoint(seg_file, powerset=False, seed=seed)
        powerset = False
    elif segmentation == "whisperx":
        copy_whisperx_segmentation(seg_file)
        powerset = False
    else:
        raise ValueError(f"unknown segmentation {segmentation!r}")
    embedding_file = out / "embedding" / "pytorch_model.bin"
    if embedding == "xvector":
        build_tiny_embedding_checkpoint(embedding_file, dimension=embedding_dimension, seed=seed)
        build_tiny_plda(out / "plda", dimension=embedding_dimension, seed=seed)
    elif embedding == "wespeaker":
        build_wespeaker_checkpoint(embedding_file, trunk_width=trunk_width, seed=seed)
        build_tiny_plda(out / "plda", dimension=WESPEAKER_DIMENSION, lda_dimension=WESPEAKER_LDA_DIMENSION, seed=seed)
    else:
        raise ValueError(f"unknown embedding {embedding!r}")

    seg_params = {"min_duration_off": float(min_duration_off)}
    if not powerset:
        seg_params["threshold"] = 0.5
    if clustering == "VBxClustering":
        clu_params = {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8}
    elif clustering == "AgglomerativeClustering":
        clu_params = {"method": "centroid", "min_cluster_size": 1, "threshold": 0.7}
    else:
        raise ValueError(f"unsupported clustering {clustering!r}")

    import pyannote.audio

    config = {
        "dependencies": {"pyannote.audio": pyannote.audio.__version__},
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                # "$model/<sub>" is expanded by Pipeline.from_pretrained into
                # {"checkpoint": <this folder>, "subfolder": <sub>, ...}
                "segmentation": "$model/segmentation",
                "embedding": "$model/embedding",
                "plda": "$model/plda",
                "clustering": clustering,
                "segmentation_step": segmentation_step,
                "segmentation_batch_size": batch_size,
                "embedding_batch_size": batch_size,
                "embedding_exclude_overlap": True,
            },
        },
        "params": {"segmentation": seg_params, "clustering": clu_params},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def pyannote_checkpoint_globals() -> list:
    """The classes pyannote checkpoints are made of (pyannote's real ones), for torch.load(weights_only=True)."""
    from pyannote.audio.core.model import Introspection
    from pyannote.audio.core.task import Problem, Resolution, Specifications

    from batch.engine.vad.segmentation import container_globals

    return [Problem, Resolution, Specifications, Introspection, *container_globals()]


def load_pyannote_model(path: PathLike):  # noqa: ANN201
    """A pyannote.audio Model from a checkpoint, as pyannote.audio itself builds it (the reference for
    batch.engine.vad.segmentation), unpickled safely."""
    import torch
    from pyannote.audio.models.segmentation import PyanNet

    with torch.serialization.safe_globals(pyannote_checkpoint_globals()):
        model = PyanNet.load_from_checkpoint(path, map_location="cpu", strict=False, weights_only=True)
    return model.eval()
