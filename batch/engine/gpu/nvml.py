"""Which physical GPU a CUDA device index is, and how much memory it has, read through NVML.

The one module that reads NVML: the driver and its GPUs (`read_driver`, for the device check and the doctor),
every device with its identity (`list_nvml_devices`, for `--gpus`), and one device's memory.

The batch sizer (`batch.engine.gpu.sizing`) reads the device's free and used memory through a `MemoryProbe`;
`probe_for_device` gives the run's probe: an `NvmlProbe` on the NVML device (a whole GPU or a MIG instance)
that this process calls CUDA device i, matched by the CUDA runtime's UUID, then its PCI address, then
CUDA_VISIBLE_DEVICES.

With no GPU or no NVML, there is no probe: the configured batch size is used (said once, when the probe is
sought), and the out-of-memory back-off still works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from batch.common.units import format_bytes

log = logging.getLogger(__name__)


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
        nvml = nvml or import_pynvml()
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


def import_pynvml() -> ModuleType:
    """nvidia-ml-py's module; NvmlUnavailable, saying so, where it is not installed."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
    return pynvml


def list_nvml_devices(nvml: ModuleType) -> list[NvmlDevice]:
    """Every GPU NVML sees, in NVML's order, each followed by its MIG instances when MIG is on.

    A GPU this process may not open (NVML's NoPermission, on a host whose cgroup hides it from the container) is
    left out, as CUDA leaves it out, rather than ending the listing; any other NVML error ends it."""
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            pci_info = nvml.nvmlDeviceGetPciInfo(handle)
            uuid = nvml_text(nvml.nvmlDeviceGetUUID(handle))
        except getattr(nvml, "NVMLError_NoPermission", ()) as exc:
            log.info("NVML device %d left out: %s", index, exc)
            continue
        pci = (int(pci_info.domain), int(pci_info.bus), int(pci_info.device))
        devices.append(NvmlDevice(uuid, index, pci))
        devices += [NvmlDevice(uuid, None, pci) for uuid in _mig_uuids(nvml, handle)]
    return devices


def name_and_memory(nvml: ModuleType, uuid: str) -> tuple[str, int | None]:
    """A device's name and total memory ("", None where NVML cannot tell)."""
    try:
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        return nvml_text(nvml.nvmlDeviceGetName(handle)), int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    except nvml.NVMLError:
        return "", None


@dataclass(frozen=True)
class DriverReading:
    """What NVML says of the driver and the GPUs it shows this process."""

    version: str
    cuda: str  # the newest CUDA the driver supports: "12.8"
    gpus: tuple[str, ...]  # "NVIDIA H100 80GB HBM3 (80 GiB)"
    capabilities: tuple[tuple[int, int] | None, ...] = ()  # each GPU's compute capability, (9, 0); None: unknown


def read_driver(nvml: ModuleType | None = None) -> DriverReading:
    """The driver's version, its CUDA and its GPUs (with their compute capability). Raises NvmlUnavailable."""
    nvml = nvml or import_pynvml()
    try:
        nvml.nvmlInit()
    except Exception as exc:
        raise NvmlUnavailable(str(exc) or type(exc).__name__) from exc
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus, capabilities = [], []
        for device in (device for device in list_nvml_devices(nvml) if device.index is not None):
            name, memory = name_and_memory(nvml, device.uuid)
            size = f" ({memory / 2**30:.0f} GiB)" if memory else ""
            gpus.append(f"{name or device.uuid}{size}")
            capabilities.append(compute_capability(nvml, device.uuid))
        version = nvml_text(nvml.nvmlSystemGetDriverVersion())
        return DriverReading(version, f"{cuda // 1000}.{cuda % 1000 // 10}", tuple(gpus), tuple(capabilities))
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(str(exc) or type(exc).__name__) from exc
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def compute_capability(nvml: ModuleType, uuid: str) -> tuple[int, int] | None:
    """A GPU's CUDA compute capability, (9, 0) for an H100; None where NVML cannot tell."""
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(nvml.nvmlDeviceGetHandleByUUID(uuid))
        return int(major), int(minor)
    except nvml.NVMLError:
        return None


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
            uuids.append(nvml_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))))
        except nvml.NVMLError:  # an empty slot
            continue
    return uuids


def nvml_text(value: str | bytes) -> str:
    """NVML's strings: bytes from older nvidia-ml-py releases, str from newer ones."""
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
    listed = parse_visible_devices(visible)
    if listed and isinstance(listed[0], str) and listed[0].upper().startswith("MIG-"):
        # A MIG instance, named by its own UUID: sized from its slice of memory. The runtime's UUID and PCI address
        # cannot tell it from its GPU (the address is shared; some drivers give the GPU's UUID).
        return _by_visible_entry(cuda_index, devices, listed)
    if cuda_uuid:
        wanted = _bare_uuid(cuda_uuid)
        matches = [device.uuid for device in devices if _bare_uuid(device.uuid) == wanted]
        if len(matches) == 1:
            return matches[0]
    if cuda_pci is not None:
        matches = [device for device in devices if device.pci == cuda_pci]
        if len(matches) == 1:  # a GPU split by MIG shares its address with its instances
            return matches[0].uuid
    return _by_visible_entry(cuda_index, devices, listed)


def _by_visible_entry(
    cuda_index: int, devices: Sequence[NvmlDevice], listed: list[int] | list[str] | None
) -> str | None:
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
