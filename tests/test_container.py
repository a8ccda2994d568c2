"""The image's environment, read from the Dockerfile, against what the NVIDIA container toolkit does with it: a
container gets a GPU only when it asks for one (`docker run --gpus`, a Kubernetes GPU request), even where nvidia
is the default runtime. .ci/docker-smoke checks the same variable in the image it really builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nvidia_toolkit import (
    ALL,
    CUDA_BASE_ENV,
    NONE,
    VISIBLE,
    as_list,
    docker_gpus,
    image_environment,
    visible_devices,
)

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
# The default base (NVIDIA's CUDA image, which sets NVIDIA_VISIBLE_DEVICES=all) and a plain Debian (BASE_IMAGE=...).
BASES = {"cuda base": CUDA_BASE_ENV, "plain base": {}}


@pytest.fixture(params=list(BASES), ids=list(BASES))
def image(request: pytest.FixtureRequest) -> dict[str, str]:
    return image_environment(DOCKERFILE, BASES[request.param])


def test_the_environment_is_read_as_docker_builds_it() -> None:
    """The last stage builds on `system`: its variables are there, with the last stage's own."""
    env = image_environment(DOCKERFILE, CUDA_BASE_ENV)
    assert env["DEBIAN_FRONTEND"] == "noninteractive"  # from the `system` stage
    assert env["HF_HOME"] == "/models" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.0"  # the image's own, over the base's


def test_a_container_that_asks_for_no_gpu_gets_none(image: dict[str, str]) -> None:
    """`docker run` without --gpus, Compose without a GPU reservation, a pod without nvidia.com/gpu: where nvidia
    is the default runtime, the toolkit still reads the image's NVIDIA_VISIBLE_DEVICES."""
    assert image[VISIBLE] == "void"
    assert visible_devices(as_list(image)) == NONE


@pytest.mark.parametrize(
    ("option", "devices"), [("all", ALL), ("device=1,3", ("1", "3")), ("2", ("0", "1"))], ids=["all", "ids", "count"]
)
def test_docker_run_gpus_still_gives_the_gpus_asked_for(image: dict[str, str], option: str, devices: tuple) -> None:
    assert visible_devices(as_list(image) + docker_gpus(option)) == devices


def test_an_nvidia_runtime_without_gpus_takes_the_variable_from_the_command_line(image: dict[str, str]) -> None:
    """`docker run --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=all`, the way before `--gpus` (docs/container.md)."""
    assert visible_devices(as_list(image) + [f"{VISIBLE}=all"]) == ALL


def test_a_gpu_container_gets_the_driver_libraries_the_runner_needs(image: dict[str, str]) -> None:
    """compute: libcuda (CUDA, CTranslate2, PyTorch); utility: libnvidia-ml and nvidia-smi (the doctor, --gpus)."""
    assert set(image["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}


def test_the_simulation_follows_the_toolkits_rules() -> None:
    """cuda_image.go's DevicesFromEnvvars and builder.go's WithEnv, case by case (tests/nvidia_toolkit.py)."""
    assert visible_devices(["CUDA_VERSION=9.0"]) == ALL  # a legacy image: unset means all
    assert visible_devices(["CUDA_VERSION=9.0", "NVIDIA_REQUIRE_CUDA=cuda>=9.0"]) == NONE
    assert visible_devices([f"{VISIBLE}="]) == NONE
    assert visible_devices([f"{VISIBLE}=void"]) == NONE
    assert visible_devices([f"{VISIBLE}=all", f"{VISIBLE}=void"]) == NONE  # the later value wins
    assert visible_devices([f"{VISIBLE}=void", f"{VISIBLE}=GPU-1,GPU-2"]) == ("GPU-1", "GPU-2")
