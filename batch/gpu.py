"""GPU memory: batch sizes fitted to the memory really free (read through NVML), and out-of-memory back-off.

One `BatchSizer` lives for the whole run. Before each batched stage it picks the largest batch size, at most
the configured one (the ceiling), whose estimated need fits in the free memory minus a reserve. The need per
batch item starts from a table (per model size and compute type) and is corrected by what this card shows:
NVML's used memory sampled around each batch, since CTranslate2 allocates outside PyTorch's allocator.

`run_with_oom_backoff` runs one stage of one file: on out-of-memory it frees caches, halves the batch size and
runs the stage again, down to 1; only then does the file fail (`GpuOutOfMemory`). The lowered size is kept
for the next files and grows back when memory allows.

With no GPU or no NVML, the configured batch size is used (said once, when the probe is sought), and the
out-of-memory back-off still works.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

from batch.errors import FileFailure

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024**2
GiB = 1024**3

DEFAULT_RESERVE_BYTES = 1 * GiB

# The stages whose batch size the sizer chooses. One item is: a speech chunk of up to 30 s (asr), one
# segment of up to 30 s (align), one 10 s window of the diarization model (diarize).
STAGES = ("asr", "align", "diarize")

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

# A measured need is trusted within this factor of the seed: a reading far off the formula is more likely
# noise (another process on a shared card, one-off workspaces) than the model's real need.
MEASUREMENT_TRUST_FACTOR = 4.0
# Weight of a new measurement in the running estimate.
MEASUREMENT_WEIGHT = 0.5

_HALF_WIDTH_COMPUTE_TYPES = frozenset({"float16", "bfloat16", "int8_float16", "int8_bfloat16"})

# Substrings (lower case) of the messages of out-of-memory errors that arrive as plain RuntimeErrors:
# CTranslate2 ("CUDA failed with error out of memory"), torch without its own class, the driver API, cuBLAS.
_OOM_MARKERS = ("out of memory", "cuda_error_out_of_memory", "cublas_status_alloc_failed")


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
    return {"asr": asr * MiB, "align": ALIGN_ITEM_MIB * MiB, "diarize": DIARIZE_ITEM_MIB * MiB}


# --- Reading the device's memory ----------------------------------------------------------------------------


class MemoryProbe(Protocol):
    """Reads the memory of the one device the pipeline uses. Every reading may be None (device unreadable)."""

    def free_and_total(self) -> tuple[int, int] | None:
        """Free and total bytes of the device, counting every process on it."""
        ...

    def used(self) -> int | None:
        """Used bytes of the device, counting every process on it."""
        ...


class NvmlUnavailable(Exception):
    """NVML cannot tell the memory of the device: no library, no driver, no GPU, or the device not found."""


@dataclass(frozen=True)
class NvmlDevice:
    """What NVML says about one device: a whole GPU (with its NVML index) or a MIG instance (index None)."""

    uuid: str  # "GPU-..." or "MIG-..."
    index: int | None
    pci: tuple[int, int, int] | None  # (domain, bus, device); a MIG instance has its GPU's


class NvmlProbe:
    """Free, total and used memory of one device through NVML (a MIG instance reads as its own slice)."""

    def __init__(self, nvml: ModuleType, handle: Any, uuid: str):
        self._nvml = nvml
        self._handle = handle
        self.uuid = uuid

    @classmethod
    def open(cls, cuda_index: int = 0, nvml: ModuleType | None = None) -> NvmlProbe:
        """The probe for CUDA device `cuda_index` of this process. Raises NvmlUnavailable, saying why."""
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
        try:
            nvml.nvmlInit()
            devices = list_nvml_devices(nvml)
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML cannot start: {exc}") from exc
        cuda_uuid, cuda_pci = cuda_device_identity(cuda_index)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        uuid = nvml_uuid_for_cuda_index(cuda_index, devices, visible, cuda_uuid, cuda_pci)
        if uuid is None:
            raise NvmlUnavailable(
                f"CUDA device {cuda_index} not found among NVML's {len(devices)} devices "
                f"(CUDA_VISIBLE_DEVICES={visible!r})"
            )
        try:
            probe = cls(nvml, nvml.nvmlDeviceGetHandleByUUID(uuid), uuid)
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML cannot open device {uuid}: {exc}") from exc
        if probe.free_and_total() is None:
            raise NvmlUnavailable(f"NVML cannot read the memory of device {uuid}")
        return probe

    def free_and_total(self) -> tuple[int, int] | None:
        memory = self._memory()
        return None if memory is None else (int(memory.free), int(memory.total))

    def used(self) -> int | None:
        memory = self._memory()
        return None if memory is None else int(memory.used)

    def _memory(self) -> Any:
        try:
            return self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError:
            return None  # a device that stops answering reads as "unknown": the configured size is used


def list_nvml_devices(nvml: ModuleType) -> list[NvmlDevice]:
    """Every GPU NVML sees, in NVML's order, each followed by its MIG instances when MIG is on."""
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        pci_info = nvml.nvmlDeviceGetPciInfo(handle)
        pci = (int(pci_info.domain), int(pci_info.bus), int(pci_info.device))
        devices.append(NvmlDevice(_text(nvml.nvmlDeviceGetUUID(handle)), index, pci))
        devices += [NvmlDevice(uuid, None, pci) for uuid in _mig_uuids(nvml, handle)]
    return devices


def _mig_uuids(nvml: ModuleType, handle: Any) -> list[str]:
    try:
        if nvml.nvmlDeviceGetMigMode(handle)[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except nvml.NVMLError:  # NOT_SUPPORTED on GPUs without MIG
        return []
    uuids = []
    for slot in range(slots):
        try:
            uuids.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))))
        except nvml.NVMLError:  # an empty slot
            continue
    return uuids


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def cuda_device_identity(cuda_index: int) -> tuple[str | None, tuple[int, int, int] | None]:
    """The UUID and PCI (domain, bus, device) that the CUDA runtime gives device `cuda_index`, through torch.

    (None, None) when torch has no CUDA. This initialises CUDA in the process, which a run on cuda does anyway.
    """
    try:
        import torch

        if not torch.cuda.is_available():
            return None, None
        properties = torch.cuda.get_device_properties(cuda_index)
    except Exception:  # a broken CUDA install: the CUDA_VISIBLE_DEVICES mapping is the fallback
        return None, None
    uuid = str(getattr(properties, "uuid", "") or "") or None
    try:
        pci = (int(properties.pci_domain_id), int(properties.pci_bus_id), int(properties.pci_device_id))
    except AttributeError:
        pci = None
    return uuid, pci


def parse_visible_devices(value: str | None) -> list[int] | list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset (every device), else the listed devices in order.

    Follows CUDA (and torch's copy of its rules): entries are indices, or `GPU-`/`MIG-` UUIDs (or unique
    prefixes of them), all of the first entry's kind; an entry that is not one ends the list there; an index
    read like strtoul (`1gpu` is 1); a device listed twice makes the list empty. "" means no device.
    """
    if value is None:
        return None
    value = value.strip()
    for prefix in ("GPU-", "MIG-"):
        if value.startswith(prefix):
            uuids: list[str] = []
            for entry in (item.strip() for item in value.split(",")):
                if not entry.startswith(prefix):
                    break
                if entry in uuids:
                    return []
                uuids.append(entry)
            return uuids
    indices: list[int] = []
    for entry in value.split(","):
        digits = re.match(r"\s*\+?(\d+)", entry)
        if digits is None:
            break
        index = int(digits.group(1))
        if index in indices:
            return []
        indices.append(index)
    return indices


def nvml_uuid_for_cuda_index(
    cuda_index: int,
    devices: Sequence[NvmlDevice],
    visible: str | None,
    cuda_uuid: str | None = None,
    cuda_pci: tuple[int, int, int] | None = None,
) -> str | None:
    """The NVML UUID of the device this process calls CUDA device `cuda_index`; None when there is none.

    The CUDA runtime's own UUID of the device decides when known, then its PCI address (ambiguous on a GPU
    split by MIG), then CUDA_VISIBLE_DEVICES. That last rule maps indices as NVML orders devices (by PCI bus),
    which is CUDA's order only under CUDA_DEVICE_ORDER=PCI_BUS_ID or on identical GPUs: the reason the first
    two come first.
    """
    if cuda_uuid:
        wanted = _bare_uuid(cuda_uuid)
        matches = [device.uuid for device in devices if _bare_uuid(device.uuid) == wanted]
        if len(matches) == 1:
            return matches[0]
    if cuda_pci is not None:
        matches = [device for device in devices if device.pci == cuda_pci]
        if len(matches) == 1:  # a GPU split by MIG shares its address with its instances
            return matches[0].uuid
    listed = parse_visible_devices(visible)
    if listed is None:
        listed = [device.index for device in devices if device.index is not None]
    if not 0 <= cuda_index < len(listed):
        return None
    entry = listed[cuda_index]
    if isinstance(entry, int):
        return next((device.uuid for device in devices if device.index == entry), None)
    candidates = [device.uuid for device in devices if device.uuid.lower().startswith(entry.lower())]
    return candidates[0] if len(candidates) == 1 else None


def _bare_uuid(uuid: str) -> str:
    """A UUID without its GPU-/MIG- prefix, lower case: torch prints CUDA's UUIDs without the prefix."""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def probe_for_device(device: str, cuda_index: int | None = None, nvml: ModuleType | None = None) -> NvmlProbe | None:
    """The memory probe for the run's device (`cuda`, `cuda:1`), or None, said in the log: call it once per run.

    None on `cpu`, without nvidia-ml-py or the NVML library, and when the device cannot be found through NVML;
    the batch size is then the configured one.
    """
    kind, _, number = device.partition(":")
    if kind != "cuda":
        log.info("batch size: the configured one (device %s, no GPU memory to fit)", device)
        return None
    index = cuda_index if cuda_index is not None else int(number or 0)
    try:
        probe = NvmlProbe.open(index, nvml)
    except NvmlUnavailable as exc:
        log.warning("batch size: the configured one, not fitted to free GPU memory: %s", exc)
        return None
    reading = probe.free_and_total()
    if reading is not None:
        log.info("GPU memory (NVML, %s): %s free of %s", probe.uuid, format_bytes(reading[0]), format_bytes(reading[1]))
    return probe


def format_bytes(count: int | float | None) -> str:
    """`1.2 GiB`, `512 MiB`; `unknown` for None."""
    if count is None:
        return "unknown"
    return f"{count / GiB:.1f} GiB" if count >= GiB else f"{count / MiB:.0f} MiB"


def parse_bytes(text: str) -> int:
    """A size like `1.5GiB`, `512 MiB`, `2G`, `300MB` or `1073741824` in bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"not a memory size: {text!r} (examples: 1GiB, 512MiB, 1.5G)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit or "_"))


# --- The controller -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """A stage's batch size and the memory reading it was chosen on (None without a probe)."""

    size: int
    free_bytes: int | None
    total_bytes: int | None


@dataclass
class _StageState:
    seed_bytes: int
    item_bytes: float
    ceiling: int
    limit: int | None = None  # the size an out-of-memory lowered the stage to; None: the ceiling
    changed_at: float = 0.0  # when the limit last moved
    successes_since_change: int = 0
    grown_back: bool = False  # the limit last moved up, so an out-of-memory now means growing back was early
    regrow_wait: float = 0.0


class BatchSizer:
    """Chooses each stage's batch size from free GPU memory; remembers out-of-memory lowerings across files.

    `ceiling` (the configured batch size) caps every stage but those given their own in `ceilings`; a stage
    that cannot batch (whisperx aligns one segment at a time) gets 1, so its guard fails at once, clearly.

    A lowered size grows back (doubles, up to the ceiling) once the stage has run `regrow_after_successes`
    times and `regrow_after_seconds` have passed since the last change, and only when the doubled size's
    estimated need fits. An out-of-memory right after growing back doubles that wait (up to an hour), so a
    card that is really short of memory does not see a retry every minute.
    """

    MAX_REGROW_WAIT = 3600.0

    def __init__(
        self,
        ceiling: int,
        item_bytes: Mapping[str, int],
        probe: MemoryProbe | None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        regrow_after_seconds: float = 60.0,
        regrow_after_successes: int = 2,
        ceilings: Mapping[str, int] | None = None,
    ):
        ceilings = dict(ceilings or {})
        for stage in item_bytes:
            ceilings.setdefault(stage, ceiling)
            if ceilings[stage] < 1:
                raise ValueError(f"batch size ceiling of {stage} must be at least 1, not {ceilings[stage]}")
        self.probe = probe
        self.reserve_bytes = reserve_bytes
        self.clock = clock
        self.regrow_after_successes = regrow_after_successes
        self._stages = {
            stage: _StageState(seed, float(seed), ceilings[stage], regrow_wait=regrow_after_seconds)
            for stage, seed in item_bytes.items()
        }

    @classmethod
    def for_model(
        cls,
        ceiling: int,
        model: str,
        compute_type: str,
        probe: MemoryProbe | None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> BatchSizer:
        """A sizer seeded from the table for this Whisper model and compute type; alignment capped at 1."""
        return cls(ceiling, seed_item_bytes(model, compute_type), probe, reserve_bytes, clock, ceilings={"align": 1})

    def plan(self, stage: str) -> BatchPlan:
        """The batch size for `stage` now: the largest, up to the ceiling and any lowering, that fits; at least 1."""
        state = self._state(stage)
        reading = self.probe.free_and_total() if self.probe is not None else None
        free, total = reading if reading is not None else (None, None)
        self._maybe_regrow(state, free)
        cap = state.limit or state.ceiling
        if free is None:
            return BatchPlan(cap, None, None)
        fitting = math.floor(max(free - self.reserve_bytes, 0) / state.item_bytes)
        return BatchPlan(max(1, min(cap, fitting)), free, total)

    def size_for(self, stage: str) -> int:
        """The batch size for `stage` now (see `plan`)."""
        return self.plan(stage).size

    def observe(self, stage: str, items: int, used_before: int | None, used_peak: int | None) -> None:
        """Correct the stage's need per item from a batch of `items` that ran: NVML's used memory before and at peak.

        A growth of zero or less says nothing (the peak fell between samples, or cached memory was reused).
        """
        if used_before is None or used_peak is None or items < 1 or used_peak <= used_before:
            return
        state = self._state(stage)
        measured = (used_peak - used_before) / items
        trusted = min(
            max(measured, state.seed_bytes / MEASUREMENT_TRUST_FACTOR), state.seed_bytes * MEASUREMENT_TRUST_FACTOR
        )
        state.item_bytes = MEASUREMENT_WEIGHT * trusted + (1 - MEASUREMENT_WEIGHT) * state.item_bytes

    def on_success(self, stage: str) -> None:
        """Count a clean run of the stage toward growing a lowered size back."""
        self._state(stage).successes_since_change += 1

    def on_oom(self, stage: str, failed_size: int) -> int | None:
        """Remember that `failed_size` ran out of memory: the halved size to retry with, or None at size 1."""
        if failed_size <= 1:
            return None
        state = self._state(stage)
        if state.grown_back:
            state.regrow_wait = min(state.regrow_wait * 2, self.MAX_REGROW_WAIT)
        state.limit = failed_size // 2
        state.changed_at = self.clock()
        state.successes_since_change = 0
        state.grown_back = False
        return state.limit

    def item_bytes(self, stage: str) -> int:
        """The current estimate of the stage's need per batch item, in bytes."""
        return round(self._state(stage).item_bytes)

    def ceiling(self, stage: str) -> int:
        """The most the stage may batch: the configured batch size, or the stage's own cap."""
        return self._state(stage).ceiling

    def limit(self, stage: str) -> int | None:
        """The lowered size the stage is held to after an out-of-memory; None when it may use the ceiling."""
        return self._state(stage).limit

    def _maybe_regrow(self, state: _StageState, free: int | None) -> None:
        if state.limit is None:
            return
        if state.successes_since_change < self.regrow_after_successes:
            return
        if self.clock() - state.changed_at < state.regrow_wait:
            return
        doubled = min(state.limit * 2, state.ceiling)
        if free is not None and doubled * state.item_bytes > free - self.reserve_bytes:
            return
        state.limit = None if doubled >= state.ceiling else doubled
        state.changed_at = self.clock()
        state.successes_since_change = 0
        state.grown_back = True

    def _state(self, stage: str) -> _StageState:
        try:
            return self._stages[stage]
        except KeyError:
            raise KeyError(f"no memory estimate for stage {stage!r} (known: {', '.join(self._stages)})") from None


# --- Running a stage under out-of-memory back-off ------------------------------------------------------------


class GpuOutOfMemory(FileFailure):
    """A stage ran out of GPU memory even at batch size 1: this file fails, the run goes on.

    `record` is the stage's memory record (failed, with its retries), for the failed file's manifest.
    """

    def __init__(self, message: str, record: StageMemoryRecord):
        super().__init__(message)
        self.record = record


@dataclass
class StageMemoryRecord:
    """What one stage of one file asked for, got and went through; `to_dict` is its manifest entry."""

    stage: str
    batch_size_requested: int  # the configured size (the ceiling)
    batch_size_planned: int  # what free memory allowed before the first try
    batch_size_used: int  # what finally ran
    oom_retries: int = 0
    free_bytes: int | None = None  # free memory before the first try (NVML), None without a probe
    total_bytes: int | None = None
    peak_growth_bytes: int | None = None  # NVML used memory at peak minus before, on the try that ran
    failed: bool = False  # out of memory even at batch size 1

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["stage"]  # the manifest keys records by stage
        return record


@dataclass
class StageTotals:
    """One stage's records summed over a run, for the run report."""

    runs: int = 0
    oom_retries: int = 0
    batch_size_used_min: int | None = None
    batch_size_used_max: int | None = None
    free_bytes_min: int | None = None
    failed: int = 0

    def add(self, record: StageMemoryRecord) -> None:
        self.runs += 1
        self.oom_retries += record.oom_retries
        self.batch_size_used_min = _least(self.batch_size_used_min, record.batch_size_used)
        self.batch_size_used_max = max(self.batch_size_used_max or 0, record.batch_size_used)
        self.free_bytes_min = _least(self.free_bytes_min, record.free_bytes)
        self.failed += record.failed


def _least(current: int | None, new: int | None) -> int | None:
    if new is None:
        return current
    return new if current is None else min(current, new)


def sum_records(records: Iterable[StageMemoryRecord]) -> dict[str, dict[str, Any]]:
    """Per stage: runs, out-of-memory retries, smallest and largest batch size used, least free memory seen,
    and how many runs failed for want of memory."""
    totals: dict[str, StageTotals] = {}
    for record in records:
        totals.setdefault(record.stage, StageTotals()).add(record)
    return {stage: asdict(total) for stage, total in totals.items()}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a GPU out-of-memory (torch's or CTranslate2's)."""
    torch = sys.modules.get("torch")  # a torch error can only exist if torch was imported
    out_of_memory_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if out_of_memory_type is not None and isinstance(current, out_of_memory_type):
            return True
        message = str(current).lower()
        if any(marker in message for marker in _OOM_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def free_gpu_caches() -> None:
    """Drop unreachable tensors and hand PyTorch's cached GPU blocks back to the driver; a no-op without CUDA."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class _PeakSampler:
    """Samples the probe's used memory from a thread while a batch runs: NVML keeps no peak of its own."""

    def __init__(self, probe: MemoryProbe | None, interval: float):
        self.probe = probe
        self.interval = interval
        self.before: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakSampler:
        if self.probe is None:
            return self
        self.before = self.peak = self.probe.used()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="gpu-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        used = self.probe.used() if self.probe is not None else None
        if used is not None:
            self.peak = used if self.peak is None else max(self.peak, used)


def run_with_oom_backoff(
    stage: str,
    sizer: BatchSizer,
    call: Callable[[int], T],
    free_caches: Callable[[], None] = free_gpu_caches,
    items: int | None = None,
    sample_interval: float = 0.01,
) -> tuple[T, StageMemoryRecord]:
    """Run `call(batch_size)` for one stage of one file, halving the batch size on out-of-memory down to 1.

    `call` must do the whole stage and return its result, consuming any lazy generator itself (wrap the
    pipeline in `list(...)`): an out-of-memory raised later, while a caller iterates, would escape this
    guard. It must also build its inputs afresh on every call, since a retry runs it again from the start.
    `items` is how many items the stage has (speech chunks, segments), which makes the measured need per
    item exact when the file has fewer than a batch. Raises GpuOutOfMemory when even size 1 does not fit;
    any other error propagates unchanged.
    """
    if sizer.probe is not None:
        free_caches()  # so that the free memory read next, and the growth measured, are not skewed by caches
    plan = sizer.plan(stage)
    record = StageMemoryRecord(stage, sizer.ceiling(stage), plan.size, plan.size, 0, plan.free_bytes, plan.total_bytes)
    size = plan.size
    while True:
        try:
            with _PeakSampler(sizer.probe, sample_interval) as sampler:
                result = call(size)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            smaller = sizer.on_oom(stage, size)
            if smaller is None:
                record.batch_size_used, record.failed = size, True
                raise GpuOutOfMemory(
                    f"out of GPU memory at batch size 1 in stage {stage} "
                    f"(free {format_bytes(plan.free_bytes)} of {format_bytes(plan.total_bytes)} before the stage)",
                    record,
                ) from exc
            log.warning("out of GPU memory in stage %s at batch size %d: retrying at %d", stage, size, smaller)
        else:
            record.batch_size_used = size
            if sampler.before is not None and sampler.peak is not None:
                record.peak_growth_bytes = sampler.peak - sampler.before
            sizer.observe(stage, min(size, items) if items else size, sampler.before, sampler.peak)
            sizer.on_success(stage)
            return result, record
        # Freed here, outside the except block: until it ends, the traceback keeps the failed batch's
        # tensors alive, and emptying the cache then would release nothing.
        free_caches()
        record.oom_retries += 1
        size = smaller
