"""How the kit measures: memory a batch takes (torch's peak and NVML's, sampled), memory per batch item (the
slope over batch sizes after a warm-up batch, against the batch sizer's constant), throughput at several batch
sizes, and a ballast that leaves a set amount of GPU memory free.

The memory readings and the clock's synchronisation are seams (`Meter`, `sync`), so that the arithmetic runs in
the tests on the CPU.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

MiB = 2**20


class Meter(Protocol):
    """Memory readings around one batch: `start()` before, `stop()` after -> growth in bytes by source."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, int | None]: ...


class CudaMeter:
    """torch's peak allocated memory above what was allocated before (its own tensors only), and NVML's device-wide
    used memory at peak (sampled every `interval` s) above its level before: what CTranslate2, cuBLAS workspaces
    and the caching allocator's new blocks take too."""

    def __init__(self, interval: float = 0.005, nvml_index: int = 0):
        self.interval = interval
        self.nvml_index = nvml_index
        self._nvml: Any = None
        self._handle: Any = None
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before_torch = 0
        self._before_nvml: int | None = None
        self._peak_nvml: int | None = None

    def _used(self) -> int | None:
        if self._nvml is None:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def start(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self._before_torch = torch.cuda.memory_allocated()
        self._before_nvml = self._peak_nvml = self._used()
        if self._before_nvml is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            used = self._used()
            if used is not None and self._peak_nvml is not None:
                self._peak_nvml = max(self._peak_nvml, used)

    def stop(self) -> dict[str, int | None]:
        import torch

        torch.cuda.synchronize()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        used = self._used()
        if used is not None and self._peak_nvml is not None:
            self._peak_nvml = max(self._peak_nvml, used)
        nvml = None if self._before_nvml is None or self._peak_nvml is None else self._peak_nvml - self._before_nvml
        return {"torch": torch.cuda.max_memory_allocated() - self._before_torch, "nvml": nvml}


def cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def release_torch_cache() -> None:
    """Hand torch's cached blocks back to the driver, so that NVML sees the next batch's whole need."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def fit(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares line through (batch size, bytes): (slope, intercept), the memory one more item takes and the
    part that does not grow with the batch. None with fewer than 2 sizes."""
    if len({size for size, _ in points}) < 2:
        return None
    mean_x = sum(size for size, _ in points) / len(points)
    mean_y = sum(value for _, value in points) / len(points)
    covariance = sum((size - mean_x) * (value - mean_y) for size, value in points)
    variance = sum((size - mean_x) ** 2 for size, _ in points)
    return covariance / variance, mean_y - covariance / variance * mean_x


def slope(points: Sequence[tuple[int, float]]) -> float | None:
    """`fit`'s slope: the memory one more item takes. None with fewer than 2 sizes."""
    fitted = fit(points)
    return None if fitted is None else fitted[0]


SOURCES = ("torch", "nvml")


def memory_per_item(
    run: Callable[[int], Any],
    sizes: Sequence[int],
    meter: Meter,
    seconds_left: Callable[[], float],
    constant_bytes: int | None,
    release: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The memory one more batch item takes, per source, in MiB, and its ratio to the sizer's `constant_bytes`
    (None: the sizer has none).

    A warm-up batch of the first size runs first, metered but left out of the fit: a process's first batch also
    pays what is paid once (cuBLAS and cuDNN handles and workspaces, kernels loaded lazily, the allocators' first
    blocks), which would tilt the line. Then `run(size)` once per size (ascending), each measured with `meter`;
    `release()` before each (torch's caching allocator: without it a batch reuses the blocks the one before left,
    and NVML sees only the difference). The line is fitted on the points after the warm-up; `warm_up_extra_mib`
    is what the warm-up took beyond the same size run after it."""
    rows: list[dict[str, Any]] = []
    for size, warm_up in [(sizes[0], True), *((size, False) for size in sizes)]:
        if seconds_left() < 3:
            break
        if release is not None:
            release()
        meter.start()
        run(size)
        growth = meter.stop()
        row: dict[str, Any] = {"batch": size, **{f"{source}_mib": _mib(value) for source, value in growth.items()}}
        rows.append({**row, "warm_up": True} if warm_up else row)
    result: dict[str, Any] = {"rows": rows}
    measured = [row for row in rows if not row.get("warm_up")]
    for source in SOURCES:
        points = [(row["batch"], row[f"{source}_mib"]) for row in measured if row.get(f"{source}_mib") is not None]
        fitted = fit(points)
        result[f"{source}_mib_per_item"] = None if fitted is None else round(fitted[0], 1)
        result[f"{source}_fixed_mib"] = None if fitted is None else round(fitted[1], 1)
    result["warm_up_extra_mib"] = _warm_up_extra(rows)
    result["sizer_mib_per_item"] = None if constant_bytes is None else round(constant_bytes / MiB, 1)
    measured_per_item = result["nvml_mib_per_item"] or result["torch_mib_per_item"]
    if constant_bytes and measured_per_item:
        result["measured_over_sizer"] = round(measured_per_item * MiB / constant_bytes, 2)
    return result


def _warm_up_extra(rows: Sequence[dict[str, Any]]) -> dict[str, float | None] | None:
    warm = next((row for row in rows if row.get("warm_up")), None)
    again = next((row for row in rows if not row.get("warm_up") and warm and row["batch"] == warm["batch"]), None)
    if warm is None or again is None:
        return None
    extra = {}
    for source in SOURCES:
        first, later = warm.get(f"{source}_mib"), again.get(f"{source}_mib")
        extra[source] = None if first is None or later is None else round(first - later, 1)
    return extra


def throughput(
    run: Callable[[int], Any],
    sizes: Sequence[int],
    item_seconds: float,
    sync: Callable[[], None],
    seconds_left: Callable[[], float],
    clock: Callable[[], float] = time.perf_counter,
    min_seconds: float = 0.5,
    max_repeats: int = 20,
) -> list[dict[str, Any]]:
    """Items per second and audio seconds per second at each batch size: one warm-up batch, then batches until
    `min_seconds` have passed (at most `max_repeats`), each timed to its end (`sync`)."""
    rows = []
    for size in sizes:
        if seconds_left() < 3:
            break
        run(size)
        sync()
        repeats, started = 0, clock()
        while repeats < max_repeats and (repeats == 0 or clock() - started < min_seconds):
            run(size)
            sync()
            repeats += 1
        elapsed = clock() - started
        per_second = size * repeats / elapsed if elapsed > 0 else None
        rows.append(
            {
                "batch": size,
                "repeats": repeats,
                "ms_per_batch": round(1000 * elapsed / repeats, 2),
                "items_per_s": None if per_second is None else round(per_second, 1),
                "audio_x_realtime": None if per_second is None else round(per_second * item_seconds, 1),
            }
        )
    return rows


@contextlib.contextmanager
def ballast(leave_free_bytes: int) -> Iterator[int]:
    """Hold GPU memory (torch tensors) until only about `leave_free_bytes` are free on the device, as another
    process on a shared card would; yields the bytes held. empty_cache() cannot release it while held."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    held = max(0, free - leave_free_bytes)
    blocks = []
    chunk = 1024 * MiB
    with contextlib.suppress(torch.cuda.OutOfMemoryError):
        while sum(block.numel() for block in blocks) + chunk <= held:
            blocks.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
        rest = held - sum(block.numel() for block in blocks)
        if rest > 0:
            blocks.append(torch.empty(rest, dtype=torch.uint8, device="cuda"))
    try:
        yield sum(block.numel() for block in blocks)
    finally:
        del blocks
        torch.cuda.empty_cache()


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MiB, 1)
