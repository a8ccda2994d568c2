"""A fake of nvidia-ml-py's `pynvml` module for the tests of the GPU listing (test_gpus, test_doctor): whole GPUs,
GPUs split by MIG, a machine without the NVIDIA driver, and cards of any compute capability with a driver of any
CUDA release (the pairs that decide whether CTranslate2's kernels run: an H100, sm_90, on an R535 driver, CUDA 12.2).

It answers the NVML calls batch.engine.gpu.nvml and batch.engine.gpu.listing make, as NVML answers them: handles are
opaque, a MIG instance is reached through its GPU, an empty MIG slot or an unknown UUID raises NVMLError.
Pass it as the `nvml` argument, or put it in sys.modules["pynvml"] for code that imports pynvml itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType, SimpleNamespace

from batch.common.units import GiB

MAX_MIG_SLOTS = 7  # an A100's or H100's


@dataclass(frozen=True)
class FakeGpu:
    """One GPU as NVML sees it; with `mig` instances, MIG is on and they are its devices."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory: int = 80 * GiB
    bus: int = 0
    mig: tuple[FakeGpu, ...] = ()
    capability: tuple[int, int] = (9, 0)  # CUDA compute capability: an H100's


class FakeNvml(ModuleType):
    """The pynvml functions the GPU listing calls, over the GPUs given (in NVML's order)."""

    NVML_DEVICE_MIG_ENABLE = 1
    NVML_DEVICE_MIG_DISABLE = 0

    class NVMLError(Exception):
        pass

    class NVMLError_NoPermission(NVMLError):  # noqa: N801 - pynvml's name
        pass

    def __init__(self, *gpus: FakeGpu, driver: bool = True, version: str = "570.124.06", cuda: int = 12080):
        super().__init__("pynvml")
        self.gpus = gpus
        self.driver = driver
        self.version = version  # the driver's version, as nvidia-smi shows it
        self.cuda = cuda  # the newest CUDA it supports, as NVML encodes it: 12080 for 12.8
        self.sessions = 0  # nvmlInit calls not yet shut down
        self.broken: set[str] = set()  # names of calls that raise NVMLError
        self.forbidden: set[int] = set()  # indices this process may not open (NoPermission, as in a cgroup)

    def _call(self, name: str) -> None:
        if self.sessions < 1:
            raise self.NVMLError("Uninitialized")
        if name in self.broken:
            raise self.NVMLError(f"Unknown Error ({name})")

    def nvmlInit(self) -> None:
        if not self.driver:
            raise self.NVMLError("NVML Shared Library Not Found")
        self.sessions += 1

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")
        self.sessions -= 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        self._call("nvmlSystemGetDriverVersion")
        return self.version.encode()

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._call("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise self.NVMLError("Invalid Argument")
        if index in self.forbidden:
            raise self.NVMLError_NoPermission("Insufficient Permissions")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._call("nvmlDeviceGetHandleByUUID")
        every = [device for gpu in self.gpus for device in (gpu, *gpu.mig)]
        found = next((device for device in every if device.uuid == uuid), None)
        if found is None:
            raise self.NVMLError("Not Found")
        return found

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        self._call("nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:
        self._call("nvmlDeviceGetName")
        return handle.name.encode()  # older nvidia-ml-py releases answer bytes

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:
        self._call("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=handle.memory, free=handle.memory - GiB, used=GiB)

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeGpu) -> tuple[int, int]:
        self._call("nvmlDeviceGetCudaComputeCapability")
        return handle.capability

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> SimpleNamespace:
        self._call("nvmlDeviceGetPciInfo")
        return SimpleNamespace(domain=0, bus=handle.bus, device=0)

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        self._call("nvmlDeviceGetMigMode")
        mode = self.NVML_DEVICE_MIG_ENABLE if handle.mig else self.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]  # current, pending

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:
        self._call("nvmlDeviceGetMaxMigDeviceCount")
        return MAX_MIG_SLOTS if handle.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, slot: int) -> FakeGpu:
        self._call("nvmlDeviceGetMigDeviceHandleByIndex")
        if slot >= len(handle.mig):
            raise self.NVMLError("Not Found")  # an empty slot
        return handle.mig[slot]


def uuid(prefix: str, tag: str) -> str:
    """A UUID in NVML's form whose first group is `tag` (hex digits): GPU-aaaa1111-0000-0000-0000-000000000000."""
    return f"{prefix}-{tag}-0000-0000-0000-000000000000"


def machine(count: int, name: str = "NVIDIA H100 80GB HBM3") -> FakeNvml:
    """`count` identical GPUs on buses 0x10, 0x20, ...; GPU i's UUID starts with GPU-i0000000."""
    return FakeNvml(*(FakeGpu(uuid("GPU", f"{index}0000000"), name, bus=16 * (index + 1)) for index in range(count)))
