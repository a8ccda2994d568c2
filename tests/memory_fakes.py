"""The fakes of the GPU memory tests (test_batching, test_oom, test_budget, test_model_loads): a device's memory,
a clock, a sizer, a CUDA device that is the CPU."""

from __future__ import annotations

from batch.common.units import GiB, MiB
from batch.engine.gpu.sizing import BatchSizer


class FakeProbe:
    """A device whose free and used memory the test sets."""

    def __init__(self, free: int, total: int = 80 * GiB, used: int = 2 * GiB):
        self.free, self.total, self.used_bytes = free, total, used

    def free_and_total(self) -> tuple[int, int]:
        return self.free, self.total

    def used(self) -> int:
        return self.used_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sizer(probe: FakeProbe | None, ceiling: int = 16, item: int = 100 * MiB, **kwargs: object) -> BatchSizer:
    return BatchSizer(ceiling, {"asr": item}, probe, reserve_bytes=1 * GiB, **kwargs)  # type: ignore[arg-type]


class FakeCudaMemory:
    """A CUDA device that is the CPU, with the memory of a FakeProbe: moving a torch module to "cuda" takes its
    parameters' and buffers' bytes from the probe's free memory, or raises PyTorch's own out-of-memory error
    (`torch.OutOfMemoryError`, its text) when they do not fit; moving it back to the CPU gives them back. Tensors
    moved to "cuda" stay where they are, so a model "on the GPU" runs on the CPU. `install` puts it in place of
    torch's `Module.to` and `Tensor.to` (the seam where a real load allocates), for one test (monkeypatch)."""

    def __init__(self, probe: FakeProbe):
        self.probe = probe
        self.placed: dict[int, int] = {}  # id of each module on the device -> its bytes
        self.moves: list[tuple[int, bool]] = []  # (bytes asked for, whether they fitted), in order
        self.on_move: list[object] = []  # callables run before each move to the device (a test's event)

    def install(self, monkeypatch: object) -> None:
        import torch

        module_to, tensor_to = torch.nn.Module.to, torch.Tensor.to
        fake = self

        def to_module(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None and device.type == "cuda":
                return fake._place(module)
            if device is not None and device.type == "cpu":
                fake._release(module)
            return module_to(module, *args, **kwargs)

        def to_tensor(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            return tensor if device is not None and device.type == "cuda" else tensor_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, "to", to_module)  # type: ignore[attr-defined]
        monkeypatch.setattr(torch.Tensor, "to", to_tensor)  # type: ignore[attr-defined]

    def _place(self, module: object) -> object:
        import torch

        for event in self.on_move:
            event()  # type: ignore[operator]
        if id(module) in self.placed:
            return module
        tensors = [*module.parameters(), *module.buffers()]  # type: ignore[attr-defined]
        size = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
        fits = size <= self.probe.free
        self.moves.append((size, fits))
        if not fits:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {size / MiB:.2f} MiB. GPU 0 has a total capacity of "
                f"{self.probe.total / GiB:.2f} GiB of which {self.probe.free / MiB:.2f} MiB is free."
            )
        self.placed[id(module)] = size
        self.probe.free -= size
        self.probe.used_bytes += size
        return module

    def _release(self, module: object) -> None:
        size = self.placed.pop(id(module), 0)
        self.probe.free += size
        self.probe.used_bytes -= size
