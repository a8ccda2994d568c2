"""Facts about the machine the run is on and how the process uses it: usable CPUs, thread pools, malloc, versions,
libraries' telemetry."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEY_PACKAGES = (
    "whisperx-batch",
    "whisperx",
    "faster-whisper",
    "ctranslate2",
    "torch",
    "pyannote.audio",
    "transformers",
    "av",
)


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup (container) CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` or cgroup v1 `cpu.cfs_quota_us`; None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def pyannote_telemetry_off_unless_asked() -> None:
    """pyannote.audio 4 sends usage telemetry on every model load and run unless told not to; an unattended job
    over people's recordings should not phone home. A user can still opt in: PYANNOTE_METRICS_ENABLED=1 wins.
    Before pyannote.audio is imported (it reads the variable then): by the command line before every command,
    and by the diarizer before each path that imports it, so that the Python API is covered too."""
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


def cuda_counts_by_pci_bus(environ: MutableMapping[str, str] = os.environ) -> None:
    """CUDA numbers GPUs fastest first, NVML and nvidia-smi by PCI bus: with CUDA_DEVICE_ORDER=PCI_BUS_ID (unless
    the user set another), CUDA_VISIBLE_DEVICES=1 and `doctor`'s gpu1 mean the same GPU. Before CUDA starts."""
    environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


THREAD_POOL_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_thread_pools(cpus: int) -> None:
    """No library thread pool larger than the CPUs this process may use.

    A pool sized to the host's cores (64 on a node where the container may use 2) makes its threads spin and
    wait for each other: on 2 shared cores the VAD took 4-20 s per 0.5 s file that way (0.05 s when idle).
    The variables reach pools made after this; threadpoolctl resizes the BLAS and OpenMP pools already loaded.
    """
    for name in THREAD_POOL_ENV_VARS:
        os.environ.setdefault(name, str(cpus))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=cpus)


# glibc mallopt parameters (malloc.h) and the environment variables a user would tune the same knobs with.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
MALLOC_ENV_VARS = (
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
# One arena, no separate mappings, trimming only past the largest threshold a C int holds (2 GiB), and the heap
# grown 64 MiB at a time.
REUSE_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))


def reuse_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    CTranslate2 allocates its CPU buffers afresh for every layer, from its worker thread; the encoder's attention
    scores alone are 432 MB per layer for tiny.en at batch 8. glibc maps blocks that large on their own and
    unmaps them when freed, so every page of every buffer faults and is zeroed by the kernel, again and again:
    on 2 cores a batch's encoding took 4.7 s that way and 2.7 s with the memory reused (docs/how-it-runs.md).
    With one arena (so that later threads allocate from the main heap), no separate mappings and trimming only
    past 2 GiB free, freed buffers are reused. The cost: the heap stays near its peak size until the process exits.

    Process-wide, and only effective before any other thread has allocated (a thread's arena outlives it): the
    command line's entry point calls it first thing. Left alone (False) when other threads are running, off
    glibc, or when the user tunes malloc through the environment.
    """
    if any(name in environ for name in MALLOC_ENV_VARS) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    if _other_threads_running():
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return False
    accepted = [mallopt(parameter, value) == 1 for parameter, value in REUSE_SETTINGS]
    global _mallopt
    _mallopt = mallopt if all(accepted) else None
    return _mallopt is not None


# glibc's mallopt once reuse_freed_memory has applied its settings (None: malloc is as glibc or the user set it).
_mallopt: Any = None
GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX


def freed_memory_reused() -> bool:
    """Whether `reuse_freed_memory` has set this process's malloc up (a process it starts can do the same)."""
    return _mallopt is not None


@contextlib.contextmanager
def large_blocks_mapped() -> Iterator[None]:
    """Within: blocks of 128 KiB and more get mappings of their own again, handed back to the kernel when freed.

    For PyTorch's stages (wav2vec2, pyannote), which allocate activations of hundreds of MB once per segment
    or window rather than the same buffers layer after layer as CTranslate2 does: kept in the heap under
    `reuse_freed_memory`'s settings, they raised the run's peak resident memory by about 0.8 GiB (alignment of the
    MIXED corpus at 0.3: 3.6-3.95 GiB, 2.96-3.0 GiB with this, 2.4-2.5 GiB with glibc's defaults throughout),
    for no measurable speed. The ASR's freed buffers stay in the heap meanwhile: handing them back too
    (malloc_trim) took the peak to 2.3 GiB but made alignment 20 % slower. A no-op when the settings were not
    applied. Process-wide: only for stages that run while nothing else allocates (the CPU runs them in turn)."""
    if _mallopt is None:
        yield
        return
    _mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    try:
        yield
    finally:
        _mallopt(M_MMAP_MAX, 0)


def exit_at_once(code: int) -> None:
    """End the process now with `code`, its log and output flushed, without waiting for any other thread (a
    library's, or a model download's, would hold an ordinary exit until it finished)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said there anyway
            stream.flush()
    os._exit(code)


def _other_threads_running() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        import threading

        return threading.active_count() > 1


def package_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
