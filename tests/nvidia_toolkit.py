"""Which GPUs a container is given, decided from its environment as the NVIDIA container stack decides it, for the
tests of the image (tests/test_container.py) and of the Kubernetes manifests (tests/test_k8s.py).

Where nvidia is the default container runtime, every container passes through the NVIDIA container toolkit, which
reads the container's environment (the OCI spec's process env) and nothing else to choose its GPUs:
- nvidia-container-toolkit, internal/config/image/builder.go `WithEnv`: the env list read into a map, a later entry
  replacing an earlier one of the same name; cuda_image.go `DevicesFromEnvvars`: NVIDIA_VISIBLE_DEVICES unset on
  a "legacy" image (CUDA_VERSION set, NVIDIA_REQUIRE_CUDA not) means every GPU; unset, empty, or naming `void`
  means none (the container runs as under runc); otherwise the devices it lists (`all`, indices, UUIDs).
- Docker, moby daemon/nvidia_linux.go `setNvidiaGPUs`: `--gpus` (and Compose's GPU reservation) appends
  NVIDIA_VISIBLE_DEVICES to the spec's env, after the image's values and `-e`: `all`, `device=1,2` -> `1,2`, a
  count N -> `0,...,N-1`.
- Kubernetes: the NVIDIA device plugin answers an allocation with NVIDIA_VISIBLE_DEVICES=<the GPUs' UUIDs>
  (k8s-device-plugin `getAllocateResponse`, the default `envvar` strategy); the kubelet puts the device plugin's
  variables first and the container's own `env` after them (`GenerateRunContainerOptions`); containerd's CRI
  puts the image's env before both ("so that envs from container config can override them").
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

VISIBLE = "NVIDIA_VISIBLE_DEVICES"
ALL = ("all",)
NONE: tuple[str, ...] = ()

# What NVIDIA's CUDA base images (nvidia/cuda:*-base-*) set that the toolkit reads.
CUDA_BASE_ENV = {
    "CUDA_VERSION": "12.8.1",
    "NVIDIA_REQUIRE_CUDA": "cuda>=12.8",
    VISIBLE: "all",
    "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
}


def visible_devices(env: Sequence[str]) -> tuple[str, ...]:
    """The GPUs the toolkit gives a container whose process env is `env` ("NAME=value", in spec order)."""
    values = dict(entry.split("=", 1) for entry in env)  # a later entry replaces an earlier one
    requested = [device.strip() for device in values.get(VISIBLE, "").split(",") if device.strip()]
    legacy = bool(values.get("CUDA_VERSION")) and not values.get("NVIDIA_REQUIRE_CUDA")
    if VISIBLE not in values and legacy:
        return ALL
    if not requested or "void" in requested:
        return NONE
    return tuple(requested)


def as_list(env: Mapping[str, str]) -> list[str]:
    return [f"{name}={value}" for name, value in env.items()]


def docker_gpus(option: str) -> list[str]:
    """What `docker run --gpus OPTION` appends to the container's env."""
    if option == "all":
        return [f"{VISIBLE}=all"]
    if option.startswith("device="):
        return [f"{VISIBLE}={option.removeprefix('device=')}"]
    return [f"{VISIBLE}={','.join(str(index) for index in range(int(option)))}"]


def pod_env(image: Mapping[str, str], container_env: Mapping[str, str], allocated: Iterable[str] = ()) -> list[str]:
    """A pod's container env as the runtime hands it to the toolkit: the image's, then the device plugin's (for the
    GPUs `allocated` to the container, if any), then the container's own `env`."""
    uuids = list(allocated)
    plugin = [f"{VISIBLE}={','.join(uuids)}"] if uuids else []
    return as_list(image) + plugin + as_list(container_env)


# --- the Dockerfile ------------------------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: lines continued with a backslash joined, comments left out (also those
    inside a continued instruction, as Docker's parser drops them)."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            keyword, _, rest = whole.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def image_environment(dockerfile: Path, base_env: Mapping[str, str]) -> dict[str, str]:
    """The last stage's environment: its base image's (`base_env` for an image from outside the Dockerfile, a
    stage's own for `FROM stage`), then every ENV of the stages it builds on, in order."""
    stages: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            words = rest.split()
            source = words[0]
            current = dict(stages.get(source, base_env))
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = current
        elif keyword == "ENV":
            current.update(env_instruction(rest))
    return current


def env_instruction(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:  # the old form: ENV NAME value with spaces
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)
