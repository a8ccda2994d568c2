"""Whether CTranslate2 (the ASR) can run its CUDA kernels on a card, with the driver there: decided from the code
its installed library carries (`batch.engine.gpu.fatbin`), the card's compute capability and the CUDA release
the driver supports (both from NVML).

A card runs machine code built for its own major and an equal or lower minor (sm_86 code runs on sm_86 and
sm_89); otherwise the driver JIT-compiles PTX built for an equal or lower arch, and only a driver at least as
new as the CUDA release that wrote the PTX takes it ("the provided PTX was compiled with an unsupported
toolchain"). CUDA's minor version compatibility lets a CUDA 12 build run on any CUDA 12 driver, but only through
machine code. CTranslate2 4.8.5 carries machine code for sm_53 to sm_86 and PTX for compute_86 (PTX ISA 8.7,
CUDA 12.8): an H100 or H200 (sm_90) and Blackwell cards JIT that PTX, and need a driver of CUDA 12.8 (R570).

The driver is judged by the CUDA release its user-mode library reports (NVML's
`nvmlSystemGetCudaDriverVersion_v2`, what `cuDriverGetVersion` returns), which counts CUDA's forward
compatibility package where one is installed; the driver branch named in the advice is NVIDIA's published
minimum for that release (Linux x86_64).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from batch.engine.gpu.fatbin import GpuCode, LibraryCode, UnreadableLibrary, read_library_code

log = logging.getLogger(__name__)

# The CUDA release that introduced each PTX ISA version (NVIDIA's PTX ISA release history): a driver JIT-compiles
# PTX of an ISA no newer than its own CUDA release's.
PTX_ISA_CUDA: dict[tuple[int, int], tuple[int, int]] = {
    **{(7, minor): (11, minor) for minor in range(9)},
    **{(8, minor): (12, minor) for minor in range(6)},
    (8, 6): (12, 7),
    (8, 7): (12, 8),
    (8, 8): (12, 9),
    (9, 0): (13, 0),
    (9, 1): (13, 1),
}
# NVIDIA's minimum Linux x86_64 driver for each CUDA toolkit release (its release notes' table, GA releases).
DRIVER_FLOORS: dict[tuple[int, int], str] = {
    (11, 8): "520.61.05",
    (12, 0): "525.60.13",
    (12, 1): "530.30.02",
    (12, 2): "535.54.03",
    (12, 3): "545.23.06",
    (12, 4): "550.54.14",
    (12, 5): "555.42.02",
    (12, 6): "560.28.03",
    (12, 8): "570.26",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}
# The name CTranslate2's tested builds (4.8, CUDA 12) load cuBLAS by, for when its library cannot be read.
TESTED_CUBLAS = "libcublas.so.12"


@dataclass(frozen=True)
class Route:
    """How CTranslate2's kernels reach a card: machine code for an arch it runs, or PTX its driver must JIT."""

    code: GpuCode
    jit_cuda: tuple[int, int] | None  # the CUDA release whose driver takes that PTX; None for machine code


def route(library: LibraryCode, capability: tuple[int, int]) -> Route | None:
    """The code a card of `capability` (major, minor) runs from `library`: machine code first, as the CUDA driver
    prefers it, else the newest PTX of an arch no higher than the card's; None when there is none."""
    major, minor = capability
    card = major * 10 + minor
    same_major = {(major, lower) for lower in range(minor + 1)}
    machine = [code for code in library.code if code.kind == "sass" and divmod(code.arch, 10) in same_major]
    if machine:
        return Route(max(machine), None)
    ptx = [code for code in library.code if code.kind == "ptx" and code.arch <= card]
    if not ptx:
        return None
    chosen = max(ptx, key=lambda code: (code.arch, code.ptx_isa))
    return Route(chosen, ptx_cuda(chosen.ptx_isa or (0, 0)))


def ptx_cuda(isa: tuple[int, int]) -> tuple[int, int]:
    """The CUDA release that wrote PTX of ISA `isa`; one outside the table is taken as its nearest end's."""
    if isa in PTX_ISA_CUDA:
        return PTX_ISA_CUDA[isa]
    return PTX_ISA_CUDA[max(PTX_ISA_CUDA)] if isa > max(PTX_ISA_CUDA) else PTX_ISA_CUDA[min(PTX_ISA_CUDA)]


def driver_floor(cuda: tuple[int, int]) -> str:
    """What driver to install for CUDA `cuda`: "R570 (570.26 or newer)"."""
    floor = next((version for release, version in sorted(DRIVER_FLOORS.items()) if release >= cuda), None)
    if floor is None:
        return f"a driver of CUDA {cuda[0]}.{cuda[1]} or newer"
    return f"R{floor.split('.')[0]} ({floor} or newer)"


def cannot_run(library: LibraryCode, capability: tuple[int, int], driver_cuda: tuple[int, ...]) -> str | None:
    """Why CTranslate2 cannot run its kernels on a card of `capability` with a driver of CUDA `driver_cuda`;
    None when it can (or when the driver's CUDA is unknown)."""
    card = f"sm_{capability[0]}{capability[1]}"
    found = route(library, capability)
    if found is None:
        carried = ", ".join(str(code) for code in sorted(library.code))
        return f"CTranslate2 carries no code this card ({card}) can run (it has {carried})"
    if found.jit_cuda is None or not driver_cuda or tuple(driver_cuda[:2]) >= found.jit_cuda:
        return None
    needed = f"{found.jit_cuda[0]}.{found.jit_cuda[1]}"
    return (
        f"CTranslate2 has no machine code for this card ({card}): its kernels are JIT-compiled from its PTX "
        f"for {found.code}, written by CUDA {needed}, which a driver of CUDA {driver_cuda[0]}.{driver_cuda[1]} "
        f'refuses at the first kernel ("the provided PTX was compiled with an unsupported toolchain")'
    )


def kernels_fix(library: LibraryCode, capability: tuple[int, int]) -> str | None:
    """The driver to install so that a card of `capability` can JIT CTranslate2's PTX; None when no driver helps."""
    found = route(library, capability)
    if found is None or found.jit_cuda is None:
        return None
    cuda = f"{found.jit_cuda[0]}.{found.jit_cuda[1]}"
    return (
        f"update the NVIDIA driver to {driver_floor(found.jit_cuda)}, a driver of CUDA {cuda} or newer (on a "
        f"data-center GPU, CUDA {cuda}'s forward compatibility package also works); the JIT-compiled kernels are "
        "cached under CUDA_CACHE_PATH (the image keeps them in /models)"
    )


# ---------------------------------------------------------------------------------------------------------
# The installed CTranslate2


def ctranslate2_library() -> Path | None:
    """The installed CTranslate2's shared library (the wheel's ctranslate2.libs/libctranslate2-*.so.*), found
    through its package metadata without importing it; None when there is none to read."""
    try:
        files = metadata.files("ctranslate2") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libctranslate2") and ".so" in file.name:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


@functools.cache
def installed_code() -> LibraryCode | None:
    """The GPU code of the installed CTranslate2, read once; None when its library cannot be found or read."""
    path = ctranslate2_library()
    if path is None:
        return None
    try:
        return read_library_code(path)
    except (OSError, UnreadableLibrary, ValueError) as exc:
        log.debug("cannot read CTranslate2's GPU code from %s: %s", path, exc)
        return None


def cublas_library() -> str:
    """The cuBLAS soname the installed CTranslate2 loads (its CUDA major's: libcublas.so.12 for CUDA 12 builds)."""
    code = installed_code()
    return code.cublas if code is not None and code.cublas else TESTED_CUBLAS
