# whisperx-batch in a container: `docker run --gpus all ... whisperx-batch-image run /in --out /out`.
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10).
#
#   docker build -t whisperx-batch .
#   docker build -t whisperx-batch:large-v3 --build-arg PRELOAD_MODELS=large-v3 .      # models baked in
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim .                           # any Debian/Ubuntu base
#
# The default base is NVIDIA's CUDA 12.8 `base` image (Ubuntu 24.04): the NVIDIA container settings and little
# else. No stage uses a CUDA library of the base's own: PyTorch's wheels bring cuBLAS, cuDNN and the CUDA runtime
# (and find them themselves), CTranslate2 loads that same cuBLAS 12 by name (LD_LIBRARY_PATH below). A `runtime`
# or `cudnn-runtime` base would add a second cuBLAS and cuDNN (2-3 GB) that nothing loads; `devel` even more.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${BASE_IMAGE} AS system

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# python3 with venv (3.12 on Ubuntu 24.04, 3.11 on Debian 12), ffmpeg, and CA certificates for model downloads.
# libpython3.X lets torchcodec (imported by pyannote) load against this ffmpeg instead of warning on every run;
# Ubuntu 24.04 names it libpython3.12t64. Not pinned: the versions are the base release's own, and BASE_IMAGE
# may name another release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates ffmpeg python3 python3-venv \
    && python_version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    && { apt-get install -y --no-install-recommends "libpython${python_version}t64" 2>/dev/null \
         || apt-get install -y --no-install-recommends "libpython${python_version}"; } \
    && rm -rf /var/lib/apt/lists/*

# The runtime dependencies, read from pyproject.toml in a stage of their own: the big layer below is rebuilt
# when they change, not when anything else in pyproject.toml does.
FROM system AS requirements
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > /requirements.txt

FROM system
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Dependencies first, in their own layer, so that a change to the code does not reinstall them. pip's downloads
# stay in a BuildKit cache mount: they speed up the next build without landing in the image.
RUN --mount=type=bind,from=requirements,source=/requirements.txt,target=/tmp/requirements.txt \
    --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt \
    && ln -s "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" /opt/venv/site-packages

# The project itself: a small layer on top, built from the context mounted for this step (nothing is copied).
RUN --mount=type=bind,source=.,target=/tmp/src,rw \
    --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps /tmp/src \
    && whisperx_batch_version="$(/opt/venv/bin/whisperx-batch --version)" \
    && echo "installed ${whisperx_batch_version}"

# A non-root user for the default case. Runs with `--user "$(id -u):$(id -g)"` (so outputs belong to the
# caller) have no home and no entry in /etc/passwd: every cache lives under /models or /tmp, which any user
# may write (sticky, like /tmp).
RUN useradd --system --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin whisperx \
    && mkdir -p /models/cuda-cache /in /out \
    && chmod 1777 /models /models/cuda-cache \
    && chown whisperx:0 /out

ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    HF_HOME=/models \
    TORCH_HOME=/models/torch \
    CUDA_CACHE_PATH=/models/cuda-cache \
    CUDA_CACHE_MAXSIZE=1073741824 \
    LD_LIBRARY_PATH=/opt/venv/site-packages/nvidia/cublas/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    NVIDIA_VISIBLE_DEVICES=void \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=12.0"
# CUDA_CACHE_PATH, CUDA_CACHE_MAXSIZE: where the driver keeps the kernels it JIT-compiles from PTX, in the models
# volume so that they outlive the container (under HOME=/tmp every container and process compiled them again).
# CTranslate2 4.8 has machine code up to sm_86 only: on an H100, H200 or Blackwell card its kernels are compiled
# from its PTX at first use (about 10 MiB of code; 1 GiB leaves room for several cards and driver versions).
# LD_LIBRARY_PATH: CTranslate2 loads libcublas.so.12 by name, and pip keeps PyTorch's copy off the loader's path
# (the runner also loads it from there itself; this keeps any other CTranslate2 program in the image working).
# CUDA_DEVICE_ORDER: CUDA numbers GPUs as NVML and nvidia-smi do (by PCI bus), so CUDA_VISIBLE_DEVICES=1 is the
# doctor's gpu1. NVIDIA_REQUIRE_CUDA: the base asks for a driver of CUDA 12.8 or newer; the driver each card
# needs (docs/container.md):
#   - V100, T4, A100, A10, A40, L4, L40S (sm_70 to sm_89): any CUDA 12 driver, R525 and newer. PyTorch's and
#     CTranslate2's machine code runs on an older CUDA 12 driver through CUDA's minor version compatibility;
#   - H100, H200, B200, RTX 50 (sm_90 and newer): R570 and newer (CUDA 12.8). CTranslate2's kernels are
#     JIT-compiled there from PTX that CUDA 12.8 wrote, which an older driver refuses; `whisperx-batch doctor`
#     and the device check say so.
# It is lowered to cuda>=12.0 for the first kind; the device check judges each card with its driver.
# NVIDIA_VISIBLE_DEVICES=void: no GPU unless one is asked for (the CUDA base sets `all`). Where nvidia is the
# default container runtime (Kubernetes GPU nodes set up by NVIDIA's GPU Operator, Docker hosts with
# `default-runtime: nvidia`), the NVIDIA container toolkit gives every container the GPUs this variable names,
# whatever it requested: with `all`, a CPU-only pod would see every GPU and `--device auto` would take GPU 0 from
# the pods that were given it. `docker run --gpus ...` (and Compose's GPU reservation) and Kubernetes' device
# plugin (for a pod that requests nvidia.com/gpu) set it to the GPUs they give, after the image's value: the later
# value wins, so GPU containers and pods still get their GPUs.

# Air-gapped images: bake models into /models at build time with `whisperx-batch models pull`, e.g.
#   --build-arg PRELOAD_MODELS=large-v3,medium --build-arg PRELOAD_OPTIONS="--align-languages en,de --diarize"
# (PRELOAD_OPTIONS: any options of `models pull`). The token for gated models (diarization) comes as a BuildKit
# secret, `--secret id=hf_token,env=HF_TOKEN`, never as a build argument: it stays out of the image and its
# history. The default build (no PRELOAD_MODELS) needs no model hub.
ARG PRELOAD_MODELS=""
ARG PRELOAD_OPTIONS=""
# The option variables are lists of words: split on purpose.
# hadolint ignore=SC2086
RUN --mount=type=secret,id=hf_token \
    if [ -n "${PRELOAD_MODELS}" ]; then \
        token_option=""; \
        if [ -s /run/secrets/hf_token ]; then token_option="--hf-token-file /run/secrets/hf_token"; fi; \
        for model in $(echo "${PRELOAD_MODELS}" | tr "," " "); do \
            whisperx-batch models pull --model "${model}" ${token_option} ${PRELOAD_OPTIONS} || exit 1; \
        done; \
        chmod -R a+rwX /models && find /models -type d -exec chmod +t {} +; \
    fi

# Declared after the preload step: a named volume starts as a copy of the baked models, then keeps downloads
# across runs. (A bind mount hides the baked models: with a baked image, use a named volume or none.)
VOLUME ["/models"]

# Last: build arguments that change with every commit must not invalidate the layers above.
ARG BASE_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="whisperx-batch" \
      org.opencontainers.image.description="Batch transcription runner: a folder of recordings to transcripts and manifests with one WhisperX pipeline" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER 10001
# The runner finishes the file in hand, writes its manifest and run report, and exits on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["whisperx-batch"]
CMD ["--help"]
