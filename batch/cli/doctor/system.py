"""The doctor's checks of this machine's software and CPUs: versions, usable CPUs, the decoder, ffmpeg."""

from __future__ import annotations

import platform
import shutil
import subprocess

from batch.common.advice import Check


def versions_check() -> Check:
    from batch.common.runtime import package_versions
    from batch.common.version import __version__

    versions = package_versions()
    parts = [
        f"{name} {versions[name]}"
        for name in ("whisperx", "faster-whisper", "ctranslate2", "torch")
        if name in versions
    ]
    return Check("whisperx-batch", "ok", f"{__version__} on Python {platform.python_version()}: " + ", ".join(parts))


def cpus_check() -> Check:
    from batch.common.runtime import available_cpus

    return Check("cpus", "ok", f"{available_cpus()} usable (affinity and container CPU limit)")


def decoder_check() -> Check:
    try:
        import av
    except Exception as exc:
        return Check("decoder", "fail", f"PyAV cannot be imported: {exc}", "reinstall whisperx-batch (pip install av)")
    codec = ".".join(str(part) for part in av.library_versions.get("libavcodec", ())[:2])
    return Check("decoder", "ok", f"PyAV {av.__version__} (FFmpeg libavcodec {codec}), in-process")


def ffmpeg_check() -> Check:
    command = shutil.which("ffmpeg")
    if command is None:
        return Check(
            "ffmpeg",
            "warn",
            "the ffmpeg command is not on PATH (runs decode in-process; the command helps to inspect files)",
            "install ffmpeg (apt-get install ffmpeg)",
        )
    try:
        first = subprocess.run([command, "-version"], capture_output=True, text=True, timeout=20).stdout
        version = first.splitlines()[0].split()[2] if first else "unknown version"
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "unknown version"
    return Check("ffmpeg", "ok", f"{version} at {command}")
