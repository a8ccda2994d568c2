"""The row every doctor check returns (Check), and known failure modes turned into what to do.

Known failure modes (cuBLAS or cuDNN not found, out of GPU memory, no CUDA device, torch.load weights_only
refusals, gated models, an offline cache without the model) are turned into one line that says
what to do, by `advice_for`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batch.common.errors import redact

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Known failure modes -> what to do


def cublas_fix(library: str) -> str:
    """What to do when CTranslate2 cannot load cuBLAS by its soname `library` ("libcublas.so.12")."""
    major = library.rpartition(".so.")[2] if re.fullmatch(r"libcublas\.so\.\d+", library) else "of its CUDA major"
    wheel = "the nvidia-cublas wheel of its CUDA major"
    if major.isdigit():  # NVIDIA's wheels are named per CUDA major up to 12 (nvidia-cublas-cu12), plainly from 13
        wheel = f"'nvidia-cublas{'-cu' + major if int(major) <= 12 else ''}=={major}.*'"
    folders = [str(path) for path in pip_nvidia_lib_dirs("cublas") if (path / library).exists()]
    where = (
        f"export LD_LIBRARY_PATH={':'.join(folders)}:$LD_LIBRARY_PATH"
        if folders
        else f"pip install {wheel} (PyTorch's CUDA builds of that major bring it)"
    )
    return (
        f"CTranslate2 needs cuBLAS {major} ({library}): use the image built from this project's Dockerfile, or {where}"
    )


def _cublas_fix_for(error: str) -> str:
    named = re.search(r"libcublas\.so\.\d+", error)
    return cublas_fix(named.group(0) if named else "libcublas")


def cudnn_fix() -> str:
    """What to do when PyTorch cannot load its cuDNN 9."""
    folders = [str(path) for path in pip_nvidia_lib_dirs("cudnn")]
    where = (
        f"export LD_LIBRARY_PATH={':'.join(folders)}:$LD_LIBRARY_PATH" if folders else "reinstall PyTorch's CUDA build"
    )
    return f"cuDNN 9 could not be loaded: use the image built from this project's Dockerfile, or {where}"


NO_DRIVER_FIX = (
    "no NVIDIA driver is visible: on the host, check `nvidia-smi`; in Docker, install the NVIDIA Container "
    "Toolkit and run with `--gpus all`; in Kubernetes, request `nvidia.com/gpu`; or run with --device cpu"
)
OUT_OF_MEMORY_FIX = "the GPU ran out of memory: lower --batch-size, use --compute-type int8_float16, or a smaller model"
# Fixes that name this machine's folders are made when asked for.
LIBRARY_FIXES: dict[str, Callable[[str], str]] = {"cublas": _cublas_fix_for, "cudnn": lambda _error: cudnn_fix()}
KNOWN_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"CUDA out of memory|OutOfMemoryError|CUDA failed with error out of memory"
            r"|CUBLAS_STATUS_(ALLOC_FAILED|NOT_INITIALIZED)|CUDNN_STATUS_(ALLOC_FAILED|NOT_INITIALIZED|INTERNAL_ERROR)",
            re.I,
        ),
        OUT_OF_MEMORY_FIX,
    ),
    (re.compile(r"libcublas|cublas.*(not found|cannot open|unable to load)", re.I), "cublas"),
    (re.compile(r"libcudnn|cudnn.*(not found|cannot open|unable to load)", re.I), "cudnn"),
    (
        re.compile(r"NVML Shared Library Not Found|libnvidia-ml|Found no NVIDIA driver|NVIDIA driver on your", re.I),
        NO_DRIVER_FIX,
    ),
    (
        re.compile(r"unsupported toolchain|UNSUPPORTED_PTX_VERSION|UnsupportedPtxVersion", re.I),
        "the NVIDIA driver is older than the CUDA release that compiled the PTX this card must JIT-compile (on "
        "sm_90 and newer, such as an H100 or H200, CTranslate2 has no machine code): update the driver to the "
        "branch `whisperx-batch doctor` names (R570 or newer for CTranslate2 4.8's CUDA 12.8 PTX)",
    ),
    (
        re.compile(r"driver version is insufficient|CUDA driver version|driver.*too old", re.I),
        "the NVIDIA driver is older than the CUDA major PyTorch and CTranslate2 were built for: update it to a "
        "driver of that CUDA major (R525 or newer for CUDA 12; R570 or newer on an H100, H200 or Blackwell card, "
        "see `whisperx-batch doctor`)",
    ),
    (
        re.compile(r"no CUDA-capable device|cudaErrorNoDevice|CUDA_VISIBLE_DEVICES|no usable CUDA device", re.I),
        "no CUDA device is visible to this process: check CUDA_VISIBLE_DEVICES and `nvidia-smi`; in Docker run "
        "with `--gpus all`; or run with --device cpu",
    ),
    (
        re.compile(r"weights_only|Weights only load failed|WeightsUnpickler|Unsupported global", re.I),
        "torch.load refused a checkpoint (PyTorch 2.6+ loads weights only by default): use the versions this "
        "project pins (reinstall whisperx-batch, or use its image), which load the bundled VAD through an "
        "allowlist; do not set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 unless you trust every checkpoint",
    ),
    (
        re.compile(r"GatedRepoError|gated repo|is restricted|awaiting a review|must have access", re.I),
        "the model is gated on Hugging Face: sign in with the account that owns your token, open the model's "
        "page on huggingface.co and accept its conditions; give the token as HF_TOKEN or in a file named by "
        "--hf-token-file (WHISPERX_BATCH_HF_TOKEN_FILE)",
    ),
    (
        re.compile(r"\b401\b|Invalid (user )?token|Unauthorized|RepositoryNotFoundError", re.I),
        "the Hub refused the request: check the model name, and that the token (HF_TOKEN or --hf-token-file) is "
        "a valid read token (huggingface.co/settings/tokens)",
    ),
    (
        re.compile(r"LocalEntryNotFoundError|outgoing traffic has been disabled|appropriate cached snapshot", re.I),
        "the model is not in the cache and downloads are off (HF_HUB_OFFLINE=1): run `whisperx-batch models "
        "pull` where the Hub is reachable and mount that cache at HF_HOME (/models in the image), or give a "
        "local model folder with --model",
    ),
    (
        re.compile(r"Failed to resolve|Name or service not known|Max retries exceeded|ConnectionError|timed out", re.I),
        "the Hugging Face Hub cannot be reached from here: pull the models where it can be (`whisperx-batch "
        "models pull`), mount that cache at HF_HOME, and set HF_HUB_OFFLINE=1",
    ),
)


def advice_for(error: str) -> str | None:
    """One line that says what to do about a known failure, from its error text; None when unknown."""
    for pattern, fix in KNOWN_FAILURES:
        if pattern.search(error):
            return LIBRARY_FIXES[fix](error) if fix in LIBRARY_FIXES else fix
    return None


def pip_nvidia_lib_dirs(*names: str) -> list[Path]:
    """The lib folders of NVIDIA's wheels that PyTorch brought (`cublas`, `cudnn`: nvidia-cublas-cu12, ...), in
    every folder packages are imported from: first the one PyTorch is installed in (whose copy its libraries link
    to), then the others on `sys.path` (a `pip install --user`, PYTHONPATH) and the interpreter's own."""
    folders: list[Path] = []
    for root in _package_folders():
        for name in names:
            folder = root / "nvidia" / name / "lib"
            if folder not in folders and folder.is_dir():
                folders.append(folder)
    return folders


def torch_nvidia_lib_dir(name: str) -> Path | None:
    """The lib folder of NVIDIA's `name` wheel beside PyTorch, where PyTorch's libraries look first (their RPATH
    is `$ORIGIN/../../nvidia/NAME/lib`); None when there is none."""
    site = _torch_site()
    folder = site / "nvidia" / name / "lib" if site is not None else None
    return folder if folder is not None and folder.is_dir() else None


def _torch_site() -> Path | None:
    """The folder PyTorch is installed in, found without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec("torch")
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent.parent if spec is not None and spec.origin else None


def _package_folders() -> list[Path]:
    import sys
    import sysconfig

    site = _torch_site()
    roots = [site] if site is not None else []
    roots += [Path(entry) for entry in sys.path if entry]
    roots += [Path(sysconfig.get_path(key)) for key in ("purelib", "platlib")]
    return roots


def short_error(exc: BaseException) -> str:
    """`Type: first line`, secrets removed; a connection failure in a few words, not urllib3's whole chain."""
    text = str(exc)
    if re.search(r"Max retries exceeded|Failed to resolve|Name or service not known|Connection refused", text):
        host = re.search(r"host=\\?'([^'\\]+)", text)
        return f"{type(exc).__name__}: cannot connect to {host.group(1) if host else 'the Hub'}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return redact(f"{type(exc).__name__}: {first[:300]}")
