"""The Kubernetes manifests in k8s/: valid against the real API schemas (strict, offline), and wired to the runner.

Strict schemas refuse unknown fields and wrong types, but not every meaning: podFailurePolicy actions are plain
strings there, and nothing in a schema knows whisperx-batch's exit codes, options or shard variables. Those are
checked here, by simulating how the Job controller applies the rules.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from batch.common.errors import EXIT_ENVIRONMENT, EXIT_FILES_FAILED, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE
from batch.common.units import parse_bytes
from batch.engine.config import RuntimeOptions
from batch.run.pool.plan import gpu_workers, plan_workers
from batch.settings.options import CONFIG_ENV_VAR, ENV_PREFIX, FIELD_NAMES, Settings, load_settings
from batch.settings.shard import SHARD_COUNT_ENV_VAR, Shard, shard_from_environment
from batch.settings.values import GpuSelection
from tests.conftest import sections
from tests.nvidia_toolkit import CUDA_BASE_ENV, NONE, VISIBLE, image_environment, pod_env, visible_devices
from tests.nvml_fakes import machine

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
GPU_MANIFESTS = ("job.yaml", "indexed-job.yaml", "cronjob.yaml", "multi-gpu-job.yaml", "keda-scaledjob.yaml")
CPU_MANIFESTS = ("cpu-job.yaml",)
MANIFESTS = GPU_MANIFESTS + CPU_MANIFESTS
GPU_RESOURCE = "nvidia.com/gpu"
KEDA = "keda-scaledjob.yaml"
# The oldest release the manifests are written for (podFailurePolicy GA) and the newest whose schemas the pinned
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31", "1.37")
CONTAINER = "whisperx-batch"
RUNNER_GRACE_SECONDS = Settings.model_fields["grace_seconds"].default  # the pod's grace period must outlast it
POLICY_ACTIONS = {"FailJob", "FailIndex", "Ignore", "Count"}


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def load(name: str) -> dict[str, Any]:
    """The file's one resource; for the KEDA ScaledJob (a CRD the Kubernetes schemas lack), the Job it starts: its
    jobTargetRef is a Job spec, checked as any other Job's."""
    if name == KEDA:
        scaled = next(doc for doc in documents(name) if doc["kind"] == "ScaledJob")
        metadata = {"name": scaled["metadata"]["name"], "labels": scaled["metadata"]["labels"]}
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": scaled["spec"]["jobTargetRef"]}
    (only,) = documents(name)  # one resource per file
    return only


def job_spec(resource: dict[str, Any]) -> dict[str, Any]:
    return resource["spec"]["jobTemplate"]["spec"] if resource["kind"] == "CronJob" else resource["spec"]


def pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    return job_spec(resource)["template"]["spec"]


def container(resource: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(resource)["containers"]
    assert only["name"] == CONTAINER
    return only


def plain_env(resource: dict[str, Any]) -> dict[str, str]:
    """The container's env entries that have a literal value."""
    return {entry["name"]: entry["value"] for entry in container(resource).get("env", []) if "value" in entry}


def gpus_requested(resource: dict[str, Any]) -> int:
    """The GPUs the device plugin gives the container: extended resources are asked for by their limit."""
    resources = container(resource).get("resources", {})
    assert GPU_RESOURCE not in resources.get("requests", {}) or GPU_RESOURCE in resources.get("limits", {})
    return int(resources.get("limits", {}).get(GPU_RESOURCE, 0))


def policy_action(resource: dict[str, Any], exit_code: int | None = None, disrupted: bool = False) -> str:
    """What the Job controller does with a failed pod: the first matching podFailurePolicy rule, else Count."""
    for rule in job_spec(resource)["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule and exit_code is not None:
            requirement = rule["onExitCodes"]
            if requirement.get("containerName", CONTAINER) != CONTAINER:
                continue
            listed = exit_code in requirement["values"]
            if listed == (requirement["operator"] == "In"):
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if disrupted and pattern["type"] == "DisruptionTarget" and pattern.get("status", "True") == "True":
                return rule["action"]
    return "Count"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection fails the test: the schemas must come from the installed package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly_against_the_kubernetes_schema(name: str, version: str, no_network: None) -> None:
    assert kubernetes_validate.validate(load(name), version, strict=True) == version


def test_strict_validation_catches_a_misspelt_field(no_network: None) -> None:
    resource = load("indexed-job.yaml")
    resource["spec"]["backofLimitPerIndex"] = resource["spec"].pop("backoffLimitPerIndex")
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimitPerIndex"):
        kubernetes_validate.validate(resource, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", MANIFESTS)
def test_pod_runs_the_image_with_a_model_cache(name: str) -> None:
    resource = load(name)
    main = container(resource)
    assert main["image"].startswith("ghcr.io/example/whisperx-batch:")
    assert main["args"][0] == "run"
    assert (gpus_requested(resource) >= 1) == (name in GPU_MANIFESTS)
    mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(resource)["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/models"]]  # HF_HOME in the image: kept across runs


@pytest.mark.parametrize("name", MANIFESTS)
def test_a_pod_sees_the_gpus_it_requests_and_no_other(name: str) -> None:
    """On a node whose default runtime is nvidia, the toolkit gives the container what NVIDIA_VISIBLE_DEVICES names
    in the env the runtime builds (tests/nvidia_toolkit.py): the image's, the device plugin's, the pod's own. A GPU
    pod sees exactly the GPUs the device plugin gave it; a CPU pod sees none (the CUDA base image says `all`)."""
    resource = load(name)
    image = image_environment(ROOT / "Dockerfile", CUDA_BASE_ENV)
    allocated = tuple(f"GPU-{index:08d}-0000-0000-0000-000000000000" for index in range(gpus_requested(resource)))
    assert visible_devices(pod_env(image, plain_env(resource), allocated)) == (allocated or NONE)
    if allocated:  # a pod's own value would come after the device plugin's, and replace the GPUs it was given
        assert VISIBLE not in {entry["name"] for entry in container(resource).get("env", [])}


@pytest.mark.parametrize("name", CPU_MANIFESTS)
def test_a_cpu_pod_hides_the_gpus_itself_and_runs_on_the_cpu(name: str) -> None:
    """Safe on a GPU node with an older image too: the pod says `void` itself, and `--device cpu` keeps the models
    off any GPU it could still see (`--device auto` would take GPU 0)."""
    resource = load(name)
    spec, main = pod_spec(resource), container(resource)
    assert plain_env(resource)[VISIBLE] == "void"
    assert visible_devices([f"{VISIBLE}=all", f"{VISIBLE}=void"]) == NONE  # whatever the image says
    assert not any(GPU_RESOURCE in main.get("resources", {}).get(kind, {}) for kind in ("requests", "limits"))
    assert not any(toleration.get("key") == GPU_RESOURCE for toleration in spec.get("tolerations", []))
    args = main["args"]
    flags = {key: option(args, f"--{key}") for key in ("device", "workers", "threads")}
    settings = load_settings({key: value for key, value in flags.items() if value}, environ=plain_env(resource))
    assert settings.device == "cpu" and settings.gpus is None
    # The run takes the CPUs its cgroup allows (the limit): each worker its share of them.
    cpus = int(main["resources"]["limits"]["cpu"])
    assert int(main["resources"]["requests"]["cpu"]) == cpus
    runtime = RuntimeOptions("cpu", "int8", settings.threads or cpus, settings.batch_size)
    slots = plan_workers(None, settings.workers, runtime, {})
    assert [slot.device for slot in slots] == ["cpu"] * (settings.workers or 1) and len(slots) >= 2
    assert sum(slot.threads for slot in slots) == cpus


@pytest.mark.parametrize("name", MANIFESTS)
def test_pod_gets_time_to_stop_cleanly(name: str) -> None:
    spec = pod_spec(load(name))
    assert spec["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert spec["terminationGracePeriodSeconds"] > RUNNER_GRACE_SECONDS


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_option_and_variable_is_one_the_runner_knows(name: str) -> None:
    """An unknown flag or WHISPERX_BATCH_* variable stops the run with exit 2: a typo here would fail every pod."""
    main = container(load(name))
    for arg in main["args"]:
        if arg.startswith("--"):
            key = arg.removeprefix("--").removeprefix("no-").replace("-", "_")
            assert key in FIELD_NAMES, f"{name}: unknown option {arg}"
    for entry in main.get("env", []):
        if entry["name"].startswith(ENV_PREFIX) and entry["name"] not in (CONFIG_ENV_VAR, SHARD_COUNT_ENV_VAR):
            assert entry["name"].removeprefix(ENV_PREFIX).lower() in FIELD_NAMES, f"{name}: {entry['name']}"
    assert "--shard" not in main["args"]  # it would override the engine's index: every pod the same shard


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_token_comes_from_a_secret(name: str) -> None:
    resource = load(name)
    main = container(resource)
    env = {entry["name"]: entry for entry in main.get("env", [])}
    assert not any(arg.startswith("hf_") for arg in main["args"])
    assert "value" not in env.get("HF_TOKEN", {})
    if "HF_TOKEN" in env:
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    if "WHISPERX_BATCH_HF_TOKEN_FILE" in env:
        token_file = Path(env["WHISPERX_BATCH_HF_TOKEN_FILE"]["value"])
        mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod_spec(resource)["volumes"]}
        secret = volumes[mounts[str(token_file.parent)]]["secret"]
        assert [item["path"] for item in secret.get("items", [])] in ([], [token_file.name])
    if "--diarize" in main["args"]:
        assert "HF_TOKEN" in env or "WHISPERX_BATCH_HF_TOKEN_FILE" in env


@pytest.mark.parametrize("name", MANIFESTS)
def test_pod_failure_policy_follows_the_exit_codes(name: str) -> None:
    resource = load(name)
    rules = job_spec(resource)["podFailurePolicy"]["rules"]
    assert {rule["action"] for rule in rules} <= POLICY_ACTIONS
    assert all(rule["onExitCodes"]["containerName"] == CONTAINER for rule in rules if "onExitCodes" in rule)
    assert policy_action(resource, EXIT_USAGE) == "FailJob"  # the same on every try
    assert policy_action(resource, EXIT_ENVIRONMENT) == "Count"  # retried up to the backoff limit
    assert policy_action(resource, EXIT_SIGTERM) == "Count"
    assert policy_action(resource, EXIT_SIGINT) == "Count"
    assert policy_action(resource, 137) == "Count"  # OOM-killed
    # Evicted or preempted: the pod is replaced, not counted; whatever exit code the stop gave.
    assert policy_action(resource, EXIT_SIGTERM, disrupted=True) == "Ignore"
    # Never Ignore on "some files failed": a file that always fails would replace the pod forever.
    assert policy_action(resource, EXIT_FILES_FAILED) in ("FailIndex", "FailJob")


def test_indexed_job_shards_the_source() -> None:
    resource = load("indexed-job.yaml")
    spec = resource["spec"]
    completions = spec["completions"]
    assert spec["completionMode"] == "Indexed"
    assert completions >= 2
    assert 1 <= spec["parallelism"] <= completions
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["podReplacementPolicy"] == "Failed"  # never two pods of one shard at once
    assert policy_action(resource, EXIT_FILES_FAILED) == "FailIndex"
    # The count Kubernetes does not give the pod is passed by the manifest, equal to completions, so each index
    # resolves to its own shard and together they cover every key.
    env = plain_env(resource)
    assert env[SHARD_COUNT_ENV_VAR] == str(completions)
    shards = [shard_from_environment(env | {"JOB_COMPLETION_INDEX": str(index)}) for index in range(completions)]
    assert shards == [Shard(index, completions) for index in range(completions)]


@pytest.mark.parametrize("name", ["job.yaml", "cronjob.yaml", "multi-gpu-job.yaml", "cpu-job.yaml"])
def test_single_pod_jobs_are_not_sharded(name: str) -> None:
    resource = load(name)
    spec = job_spec(resource)
    assert spec.get("completionMode", "NonIndexed") == "NonIndexed"
    assert spec.get("completions", 1) == spec.get("parallelism", 1) == 1
    # A shard count without an index is refused by the runner (exit 2).
    assert SHARD_COUNT_ENV_VAR not in plain_env(resource)
    assert shard_from_environment(plain_env(resource)) is None


def test_cronjob_never_overlaps_itself() -> None:
    resource = load("cronjob.yaml")
    assert resource["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(resource["spec"]["schedule"].split()) == 5
    # A run that reaches its deadline is stopped with SIGTERM (clean) and continued by the next one.
    assert job_spec(resource)["activeDeadlineSeconds"] < 24 * 3600


@pytest.mark.parametrize("name", ["cronjob.yaml", "indexed-job.yaml"])
def test_scheduled_jobs_push_their_metrics_to_a_pushgateway(name: str) -> None:
    """The CronJob with flags, the Indexed Job with variables: both are settings the runner reads as a URL."""
    resource = load(name)
    args = container(resource)["args"]
    flags = {
        arg.removeprefix("--").replace("-", "_"): args[index + 1]
        for index, arg in enumerate(args)
        if arg.startswith("--metrics-")
    }
    metrics_env = {key: value for key, value in plain_env(resource).items() if key.startswith(ENV_PREFIX + "METRICS_")}
    assert flags or metrics_env
    metrics = sections(load_settings(flags, environ=metrics_env), environ={}).metrics
    assert metrics.pushgateway is not None and metrics.pushgateway.url.startswith("http://pushgateway.")
    assert metrics.job == "whisperx_batch"  # what the example alert rules match


def option(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def memory(quantity: str) -> int:
    return parse_bytes(quantity + "B" if quantity.endswith("i") else quantity)  # Kubernetes writes 16Gi


def test_the_multi_gpu_job_starts_one_worker_per_gpu_each_sized_as_the_one_gpu_job() -> None:
    """`--gpus all` (a flag or its variable) on the pod's GPUs, NVML faked with as many as the limit asks for,
    planned as a run plans it."""
    resource = load("multi-gpu-job.yaml")
    one, many = container(load("job.yaml")), container(resource)
    gpus = int(many["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == 4
    flags = {key: option(many["args"], f"--{key}") for key in ("gpus", "threads")}
    settings = load_settings({key: value for key, value in flags.items() if value}, environ=plain_env(resource))
    assert settings.gpus == "all" and settings.workers is None and settings.device != "cpu"
    # Without a CPU limit the run takes the CPUs it may use; the request is what the pod is sure of.
    threads = settings.threads or int(many["resources"]["requests"]["cpu"])
    runtime = RuntimeOptions("cuda", "float16", threads, settings.batch_size)
    slots = gpu_workers(GpuSelection.parse(settings.gpus), runtime, {}, machine(gpus))
    assert [slot.name for slot in slots] == ["gpu0", "gpu1", "gpu2", "gpu3"]
    # Each worker gets at least what the one-GPU Job's pod gets: the CPUs its threads run on, and the memory.
    assert all(slot.threads >= int(one["resources"]["requests"]["cpu"]) for slot in slots)
    for kind in ("requests", "limits"):
        assert memory(many["resources"][kind]["memory"]) >= gpus * memory(one["resources"][kind]["memory"])


def test_the_keda_scaled_job_starts_a_pod_per_queue_backlog_that_exits_when_the_queue_is_empty() -> None:
    """KEDA's fields, checked by hand (no schema for its CRDs here): the aws-sqs-queue trigger of keda.sh's docs."""
    by_kind = {doc["kind"]: doc for doc in documents(KEDA)}
    assert set(by_kind) == {"ScaledJob", "TriggerAuthentication"}
    assert {doc["apiVersion"] for doc in by_kind.values()} == {"keda.sh/v1alpha1"}
    spec = by_kind["ScaledJob"]["spec"]
    assert set(spec) <= {
        "jobTargetRef", "pollingInterval", "successfulJobsHistoryLimit", "failedJobsHistoryLimit",
        "maxReplicaCount", "minReplicaCount", "scalingStrategy", "triggers", "rollout", "envSourceContainerName",
    }  # fmt: skip
    assert spec["scalingStrategy"]["strategy"] in ("default", "custom", "accurate", "eager")
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert set(trigger["metadata"]) <= {"queueURL", "queueLength", "awsRegion", "awsEndpoint", "scaleOnInFlight"}
    assert int(trigger["metadata"]["queueLength"]) >= 1
    assert trigger["metadata"]["scaleOnInFlight"] in ("true", "false")
    assert trigger["authenticationRef"]["name"] == by_kind["TriggerAuthentication"]["metadata"]["name"]
    assert by_kind["TriggerAuthentication"]["spec"]["podIdentity"]["provider"] == "aws"
    args = container(load(KEDA))["args"]
    queue_url = args[args.index("--queue") + 1]
    assert queue_url == trigger["metadata"]["queueURL"]  # the pods read the queue KEDA watches
    assert trigger["metadata"]["awsRegion"] in queue_url
    assert float(args[args.index("--queue-idle") + 1]) > 0  # a pod ends once the queue is empty
    settings = load_settings({}, environ={"WHISPERX_BATCH_QUEUE": queue_url, "WHISPERX_BATCH_OUT": "s3://b/out"})
    assert settings.queue == queue_url
