"""The estimated GPU memory each stage needs per batch item, before anything is measured on the card.

`batch.engine.gpu.sizing.BatchSizer` starts from these figures and corrects them with what NVML measures around
each batch that runs alone; which allocator each stage draws on decides what memory the budget counts for it.
"""

from __future__ import annotations

import re

from batch.common.units import GiB, MiB

DEFAULT_RESERVE_BYTES = 1 * GiB

# The stages whose batch size the sizer chooses. One item is: a speech chunk of up to 30 s (asr), one
# segment of up to 30 s (align), one 10 s window of the diarization model (diarize), one window of the VAD's
# segmentation model (vad), a file's 30 s language window (language: one at a time, under the same budget).
STAGES = ("asr", "align", "diarize", "vad", "language")
# Stages with a batch size of their own, whatever --batch-size says: pyannote's VAD batch (as its Inference),
# and language detection (one window per file).
OWN_CEILINGS = {"vad": 32, "language": 1}

# --- Estimated need per batch item --------------------------------------------------------------------------
#
# ASR (CTranslate2 Whisper, beam search, 30 s windows = 1500 encoder frames). The memory that grows with the
# batch is the larger of
#   encoder attention:  2 x heads x 1500^2 x activation bytes            (scores and softmax of one layer)
#   decoder cache:      decoder layers x 2 (K, V) x 1500 x d_model x activation bytes   (cross-attention)
# times 1.25 for what the formula leaves out, rounded up to 8 MiB. Check against a measurement: faster-whisper's
# published benchmark (large-v2, fp16, beam 5) used 4525 MB unbatched and 6090 MB at batch_size=8, i.e.
# ~224 MiB per added item; the formula's decoder cache alone gives 234 MiB, so the 296 MiB below errs on the
# safe side by about a third. The first batches measured on the card replace the seed (see BatchSizer.observe).
# Families: d_model / heads / decoder layers = tiny 384/6/4, base 512/8/6, small 768/12/12, medium 1024/16/24,
# large 1280/20/32, turbo (large-v3-turbo, distil-large-*: large's encoder, 2-4 decoder layers) 1280/20/4.
ASR_ITEM_MIB: dict[tuple[str, int], int] = {
    ("tiny", 2): 72,
    ("base", 2): 88,
    ("small", 2): 136,
    ("medium", 2): 176,
    ("large", 2): 296,
    ("turbo", 2): 216,
    ("tiny", 4): 136,
    ("base", 4): 176,
    ("small", 4): 264,
    ("medium", 4): 352,
    ("large", 4): 592,
    ("turbo", 4): 432,
}
# Alignment (wav2vec2 in float32, whatever the Whisper model): its convolutional front end alone holds
# 512 channels x 96,000 frames x 4 bytes = 196 MB per 30 s segment, and a couple of such tensors are alive
# at once. Diarization (pyannote, float32, 10 s windows): the WeSpeaker ResNet's first feature maps are
# 32 x 80 x 998 x 4 bytes = 10 MB each, a dozen alive, which outweighs the segmentation model's SincNet.
# Neither has been measured on a card yet; both are corrected at run time like the ASR figures.
ALIGN_ITEM_MIB = 512
DIARIZE_ITEM_MIB = 128
# The VAD (pyannote's segmentation PyanNet, float32, one window): SincNet's 80 filters over the window's
# 160,000 samples, pooled, then the LSTM: about 16 MB alive per window at most; 32 MiB to be safe until measured.
VAD_ITEM_MIB = 32

# A measured need is trusted within this factor of the seed: a reading far off the formula is more likely
# noise (another process on a shared card, one-off workspaces) than the model's real need.
MEASUREMENT_TRUST_FACTOR = 4.0
# Weight of a new measurement in the running estimate.
MEASUREMENT_WEIGHT = 0.5

_HALF_WIDTH_COMPUTE_TYPES = frozenset({"float16", "bfloat16", "int8_float16", "int8_bfloat16"})


def activation_bytes(compute_type: str) -> int:
    """Bytes per activation value for a CTranslate2 compute type; unknown and `auto` count as float32."""
    return 2 if compute_type in _HALF_WIDTH_COMPUTE_TYPES else 4


def model_family(model: str) -> str:
    """The Whisper size family of a model name, repo id or folder; `large` (the safe guess) when unknown."""
    name = model.lower().rstrip("/")
    for text in (name.rsplit("/", 1)[-1], name):
        if re.search(r"turbo|distil-large|distil-whisper-large", text):
            return "turbo"
        match = re.search(r"(?<![a-z])(large|medium|small|base|tiny)(?![a-z])", text)
        if match:
            return match.group(1)
    return "large"


def seed_item_bytes(model: str, compute_type: str) -> dict[str, int]:
    """The table's estimated need per batch item of each stage, in bytes, before anything is measured."""
    asr = ASR_ITEM_MIB[(model_family(model), activation_bytes(compute_type))]
    return {
        "asr": asr * MiB,
        "align": ALIGN_ITEM_MIB * MiB,
        "diarize": DIARIZE_ITEM_MIB * MiB,
        "vad": VAD_ITEM_MIB * MiB,
        "language": asr * MiB,  # one ASR encoder pass
    }


# Stages whose memory comes from CTranslate2's own CUDA allocator (its `cub_caching` allocator, or cudaMallocAsync:
# `CT2_CUDA_ALLOCATOR`), not PyTorch's: the blocks PyTorch holds cached are not free to them. Every other stage
# (wav2vec2, pyannote, the VAD) allocates through PyTorch and reuses those blocks first.
CTRANSLATE2_STAGES = frozenset({"asr", "language"})
