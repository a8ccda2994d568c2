"""`pack DIR`: the kit's folder, at most `LIMIT_BYTES`: the project's sources (src/batch, src/bench: pure
Python), the wheels of `WHEELS` for the lent machine (cp312, manylinux x86_64, downloaded here with pip and kept
in a cache between packs), a recording made with espeak-ng (speech.wav, when espeak-ng is here), kit.json (what
was packed) and run.sh (rendered from run.sh.in with the steps' time limits).

For the `whisperx` step (the project's own pipeline): faster-whisper (PyAV, which it imports, stays behind: a
stand-in takes its place, `pipeline_parts`), whisperx without its 17 MB VAD checkpoint (`TRIMMED`: the step writes a
random one where the project's loader looks), omegaconf with its antlr4 runtime (the project's VAD loader
allows omegaconf's classes in a checkpoint), and nltk (whisperx's alignment and the project's sentence splitting
import it): about 3.2 MiB in all.

Not carried: PyAV (32 MB unpacked: nothing on the kit's path decodes a file), whisperx's VAD weights, nltk's punkt
data (the project's `ensure_punkt` writes an untrained Punkt without it), pyannote.core and pyannote's other
dependencies (Lightning and the rest: the kit imports only pyannote's ResNet module; diarization in the `whisperx`
step would need them, so it is off there), CUDA 12's cuBLAS (about 600 MB: the `ct2` step says what CTranslate2
does without it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import wave
import zipfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from bench.gpu_kit.steps import INSTALL_SECONDS, STEPS, TOTAL_SECONDS

MiB = 2**20
LIMIT_BYTES = 60 * MiB
REPO = Path(__file__).resolve().parents[2]
SOURCES = ("batch", "bench")
DEFAULT_CACHE = Path.home() / ".cache" / "whisperx-batch" / "gpu-kit-wheels"
#: (distribution, the version used when it is not installed here); the installed version wins, so the kit runs
#: what the project was tested with
WHEELS: tuple[tuple[str, str], ...] = (
    ("ctranslate2", "4.8.5"),
    ("asteroid-filterbanks", "0.4.0"),
    ("einops", "0.8.2"),
    ("pyannote.audio", "4.0.7"),
    ("faster-whisper", "1.2.1"),
    ("whisperx", "3.8.6"),
    ("omegaconf", "2.4.0"),
    ("antlr4-python3-runtime", "4.13.2"),
    ("nltk", "3.10.4"),
)
#: wheel name prefix -> members left out of the carried copy (what the steps make on the machine instead)
TRIMMED: dict[str, tuple[str, ...]] = {"whisperx-": ("whisperx/assets/pytorch_model.bin",)}
#: the lent machine: Python 3.12 on Linux x86_64 (CTranslate2 4.7+ is built for manylinux_2_28)
PLATFORM_ARGS = (
    "--python-version",
    "3.12",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux2014_x86_64",
)
SPEECH = (
    "The quarterly report was sent to every office on Monday morning. "
    "Please call the service desk before noon if the printer on the third floor is still broken. "
    "We will meet again next week to decide which of the two proposals goes ahead. "
    "Thank you all for coming, and do not forget to return your badges at the front desk. "
)
SPEECH_REPEATS = 3
SAMPLE_RATE = 16_000
RUN_STEPS_AFTER_INSTALL = ("ct2", "device", "memory", "oom", "vad", "align", "align_large", "embed", "alloc")
CT2_STEPS = ("asr", "pipeline", "whisperx")
FINAL_STEPS = ("sticky",)  # last: it loses a CUDA context on purpose


class PackTooLarge(Exception):
    """The kit would pass the size a lent machine takes in."""


def wanted_wheels() -> list[str]:
    """`WHEELS` as pip requirements, each pinned to the version installed here, else to its default."""
    requirements = []
    for name, default in WHEELS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = default
        requirements.append(f"{name}=={version}")
    return requirements


def _cached(cache: Path, requirement: str) -> Path | None:
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"
    for path in sorted(cache.glob("*.whl")):
        if path.name.lower().replace(".", "_").startswith(stem.replace(".", "_")):
            return path
    return None


def download_wheels(
    cache: Path, requirements: Sequence[str], run: Callable[..., object] = subprocess.run
) -> list[Path]:
    """The wheels of `requirements` for the lent machine, from `cache` or downloaded into it (no dependencies)."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [requirement for requirement in requirements if _cached(cache, requirement) is None]
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps"]
        command += [*PLATFORM_ARGS, "--platform", "any", "--dest", str(cache), *missing]
        run(command, check=True)
    wheels = []
    for requirement in requirements:
        path = _cached(cache, requirement)
        if path is None:
            raise FileNotFoundError(f"pip did not download {requirement} into {cache}")
        wheels.append(path)
    return wheels


def copy_wheel(wheel: Path, folder: Path) -> Path:
    """`wheel` copied into `folder`, less the members `TRIMMED` names for it; the copy."""
    target = folder / wheel.name
    left_out = next((members for prefix, members in TRIMMED.items() if wheel.name.startswith(prefix)), ())
    if not left_out:
        shutil.copy2(wheel, target)
        return target
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for member in source.infolist():
            if member.filename not in left_out:
                copy.writestr(member, source.read(member))
    return target


def copy_sources(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in SOURCES:
        shutil.copytree(REPO / package, target / package, ignore=ignore)


def write_speech(path: Path) -> bool:
    """SPEECH spoken by espeak-ng, 16 kHz mono 16-bit; False (no file) without espeak-ng."""
    import numpy as np

    if shutil.which("espeak-ng") is None:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        spoken = Path(scratch) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(spoken), SPEECH * SPEECH_REPEATS], check=True
        )
        with wave.open(str(spoken)) as recording:
            rate = recording.getframerate()
            samples = np.frombuffer(recording.readframes(recording.getnframes()), dtype=np.int16)
    times = np.arange(round(samples.size * SAMPLE_RATE / rate)) / SAMPLE_RATE
    resampled = np.interp(times, np.arange(samples.size) / rate, samples.astype(np.float32)).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(resampled.tobytes())
    return True


def render_run_script() -> str:
    template = (Path(__file__).parent / "run.sh.in").read_text()
    line = "run_step {name} {timeout}"
    after_install = "\n".join(line.format(name=name, timeout=STEPS[name].timeout) for name in RUN_STEPS_AFTER_INSTALL)
    ct2 = "; ".join(line.format(name=name, timeout=STEPS[name].timeout) for name in CT2_STEPS)
    final = "\n".join(line.format(name=name, timeout=STEPS[name].timeout) for name in FINAL_STEPS)
    script = template.replace("@STEPS@", after_install).replace("@CT2_STEPS@", ct2).replace("@FINAL_STEPS@", final)
    script = script.replace("@TIMEOUT_cuda@", str(STEPS["cuda"].timeout))
    script = script.replace("@INSTALL@", str(INSTALL_SECONDS))
    return script.replace("@TOTAL@", str(TOTAL_SECONDS))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def steps_budget() -> int:
    """Seconds the steps' limits add up to, with the install's: at most TOTAL_SECONDS."""
    return INSTALL_SECONDS + sum(step.timeout for step in STEPS.values())


def pack_kit(folder: Path, wheel_cache: Path | None = None, limit_bytes: int = LIMIT_BYTES) -> str:
    """Write the kit into `folder` (replacing a kit packed there before); a line saying what it holds."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not (folder / "kit.json").exists():
            raise FileExistsError(f"{folder} is not empty and holds no kit: give an empty or new folder")
        shutil.rmtree(folder)
    downloaded = download_wheels(wheel_cache or DEFAULT_CACHE, wanted_wheels())
    (folder / "wheels").mkdir(parents=True)
    wheels = [copy_wheel(path, folder / "wheels") for path in downloaded]
    wheel_bytes = sum(path.stat().st_size for path in wheels)
    if wheel_bytes > limit_bytes:
        shutil.rmtree(folder)
        raise PackTooLarge(
            f"the wheels alone are {wheel_bytes / MiB:.1f} MiB, over the kit's {limit_bytes / MiB:.0f} MiB"
        )
    copy_sources(folder / "src")
    speech = write_speech(folder / "speech.wav")
    run_script = folder / "run.sh"
    run_script.write_text(render_run_script())
    run_script.chmod(0o755)
    info = {
        "packed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "wheels": {path.name: path.stat().st_size for path in wheels},
        "speech": speech,
        "steps": {name: step.timeout for name, step in STEPS.items()},
    }
    (folder / "kit.json").write_text(json.dumps(info, indent=2) + "\n")
    total = folder_bytes(folder)
    if total > limit_bytes:
        raise PackTooLarge(f"{folder} holds {total / MiB:.1f} MiB, over the kit's {limit_bytes / MiB:.0f} MiB")
    return f"{folder}: {total / MiB:.1f} MiB ({wheel_bytes / MiB:.1f} MiB of wheels); run: bash {folder}/run.sh OUTDIR"
