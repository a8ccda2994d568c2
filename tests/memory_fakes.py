"""The fakes of the GPU memory tests (test_batching, test_oom, test_budget): a device's memory, a clock, a sizer."""

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
