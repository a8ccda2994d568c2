"""The GPUs a run may spread over (`--gpus`): what NVML shows this process, in the order a user numbers them.

Read through NVML only, never CUDA, so that the process that starts one worker per GPU holds no CUDA context
of its own. Each GPU is handed to its worker by UUID (`CUDA_VISIBLE_DEVICES=GPU-...`), which names the same
device whatever order CUDA would count them in; a GPU split by MIG contributes its instances, one worker each
(a CUDA process uses one MIG instance).

Numbering: the devices' positions in that list, as `doctor` shows them. With CUDA_VISIBLE_DEVICES unset, that is
NVML's order (nvidia-smi's, by PCI bus), so `--gpus 0,2` are nvidia-smi's GPUs 0 and 2 on a host without MIG (a
GPU split by MIG counts once per instance); with it set (a container given some GPUs), its order. Its indices are
read in NVML's order, which is CUDA's under CUDA_DEVICE_ORDER=PCI_BUS_ID or on identical GPUs (the usual
multi-GPU host); UUIDs name one device whatever the order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from batch.common.units import format_bytes
from batch.engine.gpu.nvml import (
    NvmlDevice,
    NvmlUnavailable,
    import_pynvml,
    list_nvml_devices,
    name_and_memory,
    parse_visible_devices,
)


class GpusUnavailable(Exception):
    """The GPUs cannot be listed or the selection names one that is not there; the message says which."""


@dataclass(frozen=True)
class VisibleGpu:
    """One device a worker can be given."""

    number: int  # the user's number for it: nvidia-smi's index, or its position in CUDA_VISIBLE_DEVICES
    uuid: str  # GPU-... or MIG-...: what the worker's CUDA_VISIBLE_DEVICES says
    name: str = ""
    memory_total: int | None = None

    def summary(self) -> str:
        """Its name, memory and UUID: `NVIDIA L4, 22.0 GiB, GPU-...`."""
        memory = f", {format_bytes(self.memory_total)}" if self.memory_total else ""
        return f"{self.name or 'unnamed'}{memory}, {self.uuid}"

    def describe(self) -> str:
        return f"GPU {self.number} ({self.summary()})"


def visible_gpus(visible: str | None, nvml: ModuleType | None = None) -> list[VisibleGpu]:
    """The devices this process may use, numbered as the user numbers them. Raises GpusUnavailable."""
    try:
        nvml = nvml or import_pynvml()
    except NvmlUnavailable as exc:
        raise GpusUnavailable(str(exc)) from exc
    try:
        nvml.nvmlInit()
    except Exception as exc:
        raise GpusUnavailable(f"NVML cannot start (no NVIDIA driver visible?): {exc}") from exc
    try:
        devices = list_nvml_devices(nvml)
        usable = _usable(devices, parse_visible_devices(visible))
        return [_described(nvml, number, device) for number, device in enumerate(usable)]
    except nvml.NVMLError as exc:
        raise GpusUnavailable(f"NVML cannot list the GPUs: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def gpu_in_use(device: str, visible: str | None, nvml: ModuleType | None = None) -> str | None:
    """The GPU a process on `device` ("cuda", "cuda:1") runs on, `GPU 1 (NVIDIA L4, 22.0 GiB, GPU-...)`, for the
    record; None on the CPU or where NVML cannot tell (the run goes on whatever it says)."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    try:
        return visible_gpus(visible, nvml)[int(index or 0)].describe()
    except (GpusUnavailable, IndexError, ValueError):
        return None


def _usable(devices: Sequence[NvmlDevice], listed: list[int] | list[str] | None) -> list[NvmlDevice]:
    """Whole GPUs without MIG, and the MIG instances of those with it; only those CUDA_VISIBLE_DEVICES lists."""
    with_mig = {device.pci for device in devices if device.index is None}
    workable = [device for device in devices if device.index is None or device.pci not in with_mig]
    if listed is None:
        return workable
    chosen: list[NvmlDevice] = []
    for entry in listed:
        if isinstance(entry, int):
            matches = [device for device in devices if device.index == entry]
        else:
            matches = [device for device in devices if device.uuid.lower().startswith(entry.lower())]
        if len(matches) != 1:
            break  # as CUDA: an entry that names no device (or several) ends the list there
        gpu = matches[0]
        if gpu.index is not None and gpu.pci in with_mig:  # a MIG-enabled GPU: its instances
            chosen += [device for device in workable if device.pci == gpu.pci]
        else:
            chosen.append(gpu)
    return chosen


def _described(nvml: ModuleType, number: int, device: NvmlDevice) -> VisibleGpu:
    name, memory = name_and_memory(nvml, device.uuid)
    return VisibleGpu(number, device.uuid, name, memory)


def select_gpus(
    every: bool, count: int | None, devices: Sequence[str], visible: Sequence[VisibleGpu]
) -> list[VisibleGpu]:
    """The GPUs `--gpus` names among those visible. Raises GpusUnavailable, saying what is there."""
    there = f"{len(visible)} visible" + (": " + ", ".join(gpu.describe() for gpu in visible) if visible else "")
    if not visible:
        raise GpusUnavailable("no GPU is visible to this process")
    if every:
        return list(visible)
    if count is not None:
        if count > len(visible):
            raise GpusUnavailable(f"{count} GPUs asked for, {there}")
        return list(visible[:count])
    chosen = []
    for entry in devices:
        if entry.isdigit():
            gpu = next((gpu for gpu in visible if gpu.number == int(entry)), None)
        else:
            matches = [gpu for gpu in visible if gpu.uuid.lower().startswith(entry.lower())]
            if len(matches) > 1:
                raise GpusUnavailable(f"{entry} is the start of {len(matches)} GPUs' UUIDs: give more of it")
            gpu = matches[0] if matches else None
        if gpu is None:
            raise GpusUnavailable(f"GPU {entry} is not visible to this process ({there})")
        if gpu in chosen:
            raise GpusUnavailable(f"GPU {entry} is listed twice (it is {gpu.describe()})")
        chosen.append(gpu)
    return chosen
