"""Several GPUs (`--gpus`) and CPU workers (`--workers`): the selection as written, the GPUs NVML shows, the ones
chosen, and the worker slots planned on them. NVML is faked (tests/nvml_fakes.py); everything else is real."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from batch.common.errors import EXIT_ENVIRONMENT, ConfigError, EnvironmentProblem
from batch.common.runtime import THREAD_POOL_ENV_VARS
from batch.engine.config import RuntimeOptions
from batch.engine.gpu.listing import GpusUnavailable, VisibleGpu, select_gpus, visible_gpus
from batch.run.pool.plan import cpu_workers, gpu_workers, plan_workers
from batch.settings.options import load_settings
from batch.settings.values import GpuSelection
from tests.nvml_fakes import FakeGpu, FakeNvml, machine, uuid

A = FakeGpu(uuid("GPU", "aaaa1111"), "NVIDIA A100-SXM4-40GB", 40 * 2**30, bus=0x1A, capability=(8, 0))
B = FakeGpu(uuid("GPU", "bbbb2222"), "NVIDIA A100-SXM4-40GB", 40 * 2**30, bus=0x3B, capability=(8, 0))
C = FakeGpu(uuid("GPU", "cccc3333"), "NVIDIA L4", 24 * 2**30, bus=0x5E, capability=(8, 9))
M1 = FakeGpu(uuid("MIG", "11111111"), "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 20 * 2**30)
M2 = FakeGpu(uuid("MIG", "22222222"), "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 20 * 2**30)
M = FakeGpu(uuid("GPU", "dddd4444"), "NVIDIA A100-SXM4-40GB", 40 * 2**30, bus=0x86, mig=(M1, M2))


def uuids(gpus: list[VisibleGpu]) -> list[str]:
    return [gpu.uuid for gpu in gpus]


def cuda(threads: int) -> RuntimeOptions:
    return RuntimeOptions("cuda", "float16", threads, 16)


# --- --gpus as written ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", GpuSelection(every=True)),
        (" ALL ", GpuSelection(every=True)),
        ("2", GpuSelection(count=2)),
        ("0,2,3", GpuSelection(devices=("0", "2", "3"))),
        ("0, 2", GpuSelection(devices=("0", "2"))),
        ("device=1", GpuSelection(devices=("1",))),
        ("GPU-abc,GPU-def", GpuSelection(devices=("GPU-abc", "GPU-def"))),
        ("device=MIG-11111111-0000-0000-0000-000000000000", GpuSelection(devices=(M1.uuid,))),
        ("GPU-abc", GpuSelection(devices=("GPU-abc",))),  # one UUID is a list of one, not a count
        ("MIG-GPU-abc/1/0", GpuSelection(devices=("MIG-GPU-abc/1/0",))),  # the older MIG form
    ],
)
def test_gpu_selection_accepts_all_a_count_or_a_list(text: str, expected: GpuSelection) -> None:
    selection = GpuSelection.parse(text)
    assert selection == expected
    assert GpuSelection.parse(str(selection)) == selection  # what the report and the logs say reads back the same


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "for GPU 0 alone, write device=0"),  # not a count
        ("", "expected all, a count"),
        ("two", "expected all, a count"),
        ("-1", "expected all, a count"),
        ("1.5", "expected all, a count"),
        ("device=", "no GPU listed"),
        ("0,first", "'first' is not a GPU index"),
        ("device=GPU-xyz", "'GPU-xyz' is not a GPU index"),
        ("0,2,0", "listed twice"),
        ("GPU-abc,GPU-abc", "listed twice"),
    ],
)
def test_gpu_selection_refuses_what_names_no_gpu(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        GpuSelection.parse(text)


# --- the GPUs NVML shows this process ------------------------------------------------------------------------


def test_without_cuda_visible_devices_every_gpu_in_nvidia_smi_order() -> None:
    nvml = FakeNvml(A, B, C)
    visible = visible_gpus(None, nvml)
    assert visible == [
        VisibleGpu(0, A.uuid, "NVIDIA A100-SXM4-40GB", 40 * 2**30),
        VisibleGpu(1, B.uuid, "NVIDIA A100-SXM4-40GB", 40 * 2**30),
        VisibleGpu(2, C.uuid, "NVIDIA L4", 24 * 2**30),
    ]
    assert visible[2].describe() == f"GPU 2 (NVIDIA L4, 24.0 GiB, {C.uuid})"
    assert nvml.sessions == 0  # NVML shut down again


def test_cuda_visible_devices_indices_number_the_gpus_by_their_place_in_it() -> None:
    visible = visible_gpus("2,0", FakeNvml(A, B, C))
    assert [(gpu.number, gpu.uuid) for gpu in visible] == [(0, C.uuid), (1, A.uuid)]


def test_cuda_visible_devices_uuids_and_unique_prefixes() -> None:
    visible = visible_gpus(f"GPU-cccc,{A.uuid}", FakeNvml(A, B, C))
    assert [(gpu.number, gpu.uuid) for gpu in visible] == [(0, C.uuid), (1, A.uuid)]


def test_cuda_visible_devices_ends_at_an_entry_that_names_no_device_as_cuda_reads_it() -> None:
    assert uuids(visible_gpus("0,7,2", FakeNvml(A, B, C))) == [A.uuid]
    assert uuids(visible_gpus("GPU-cccc,GPU-ffff,0", FakeNvml(A, B, C))) == [C.uuid]


def test_a_mig_enabled_gpu_named_by_uuid_stands_for_its_instances() -> None:
    assert uuids(visible_gpus(f"{M.uuid},{A.uuid}", FakeNvml(A, M))) == [M1.uuid, M2.uuid, A.uuid]


def test_cuda_visible_devices_empty_or_repeated_leaves_no_gpu() -> None:
    assert visible_gpus("", FakeNvml(A, B)) == []
    assert visible_gpus("1,1", FakeNvml(A, B)) == []  # as CUDA reads it


def test_a_gpu_split_by_mig_is_replaced_by_its_instances() -> None:
    nvml = FakeNvml(A, M, C)
    visible = visible_gpus(None, nvml)
    assert uuids(visible) == [A.uuid, M1.uuid, M2.uuid, C.uuid]  # a CUDA process uses one instance, not the GPU
    assert visible[1].name == "NVIDIA A100-SXM4-40GB MIG 3g.20gb" and visible[1].memory_total == 20 * 2**30
    # Listed by its index in CUDA_VISIBLE_DEVICES, the MIG-enabled GPU stands for its instances too.
    assert uuids(visible_gpus("1", nvml)) == [M1.uuid, M2.uuid]
    assert uuids(visible_gpus(M2.uuid, nvml)) == [M2.uuid]


def test_a_gpu_whose_name_cannot_be_read_is_still_listed_by_uuid() -> None:
    nvml = FakeNvml(A, B)
    nvml.broken.add("nvmlDeviceGetName")
    assert visible_gpus(None, nvml) == [VisibleGpu(0, A.uuid), VisibleGpu(1, B.uuid)]


def test_a_gpu_this_process_may_not_open_is_left_out_not_the_end_of_the_listing() -> None:
    nvml = FakeNvml(A, B, C)
    nvml.forbidden.add(1)  # a cgroup-restricted host: NVML shows it, opening it is refused
    assert [gpu.uuid for gpu in visible_gpus(None, nvml)] == [A.uuid, C.uuid]
    assert nvml.sessions == 0


def test_the_driver_reading_names_each_gpu_it_may_open() -> None:
    from batch.engine.gpu.nvml import DriverReading, read_driver

    nvml = FakeNvml(A, C)
    nvml.forbidden.add(0)
    reading = read_driver(nvml)
    assert reading == DriverReading("570.124.06", "12.8", ("NVIDIA L4 (24 GiB)",), ((8, 9),))
    assert nvml.sessions == 0


def test_no_driver_no_library_or_nvml_failing_says_why() -> None:
    with pytest.raises(GpusUnavailable, match=r"NVML cannot start \(no NVIDIA driver visible\?\): NVML Shared"):
        visible_gpus(None, FakeNvml(A, driver=False))
    failing = FakeNvml(A, B)
    failing.broken.add("nvmlDeviceGetPciInfo")
    with pytest.raises(GpusUnavailable, match="NVML cannot list the GPUs: Unknown Error"):
        visible_gpus(None, failing)
    assert failing.sessions == 0  # shut down all the same


def test_nvidia_ml_py_missing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    with pytest.raises(GpusUnavailable, match="nvidia-ml-py is not installed"):
        visible_gpus(None)


def test_pynvml_is_what_is_asked_when_no_nvml_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(C))
    assert uuids(visible_gpus(None)) == [C.uuid]


# --- the GPUs --gpus chooses ---------------------------------------------------------------------------------

THREE = visible_gpus(None, FakeNvml(A, B, C))


def chosen(text: str, visible: list[VisibleGpu] = THREE) -> list[str]:
    selection = GpuSelection.parse(text)
    return uuids(select_gpus(selection.every, selection.count, selection.devices, visible))


def test_select_all_a_count_or_a_list_in_the_order_given() -> None:
    assert chosen("all") == [A.uuid, B.uuid, C.uuid]
    assert chosen("2") == [A.uuid, B.uuid]
    assert chosen("2,0") == [C.uuid, A.uuid]
    assert chosen("device=1") == [B.uuid]
    assert chosen("GPU-cccc,0") == [C.uuid, A.uuid]


def test_a_missing_gpu_is_refused_naming_what_is_visible() -> None:
    with pytest.raises(GpusUnavailable) as missing:
        chosen("0,5")
    message = str(missing.value)
    assert message.startswith("GPU 5 is not visible to this process (3 visible: GPU 0 (NVIDIA A100-SXM4-40GB")
    assert C.uuid in message
    with pytest.raises(GpusUnavailable, match=r"GPU GPU-ffff is not visible .*3 visible"):
        chosen("device=GPU-ffff")


def test_more_gpus_than_visible_is_refused_naming_them() -> None:
    with pytest.raises(GpusUnavailable, match=r"^4 GPUs asked for, 3 visible: GPU 0 \(.*GPU 2 \(NVIDIA L4, 24.0 GiB"):
        chosen("4")


def test_the_start_of_several_uuids_is_refused_as_ambiguous() -> None:
    with pytest.raises(GpusUnavailable, match="GPU-aaaa is the start of 2 GPUs' UUIDs: give more of it"):
        select_gpus(False, None, ["GPU-aaaa"], [VisibleGpu(0, "GPU-aaaa1"), VisibleGpu(1, "GPU-aaaa2")])


def test_one_gpu_named_twice_is_refused() -> None:
    with pytest.raises(GpusUnavailable, match=r"GPU GPU-aaaa is listed twice \(it is GPU 0 "):
        chosen("0,GPU-aaaa")


def test_no_visible_gpu_is_refused_whatever_is_asked() -> None:
    for text in ("all", "1", "device=0"):
        with pytest.raises(GpusUnavailable, match="no GPU is visible to this process"):
            chosen(text, [])


# --- the worker slots planned --------------------------------------------------------------------------------


def test_one_worker_per_gpu_each_given_its_gpu_by_uuid_and_a_share_of_the_threads() -> None:
    nvml = machine(4)
    slots = gpu_workers(GpuSelection(every=True), cuda(16), {}, nvml)
    gpus = visible_gpus(None, nvml)
    assert [slot.name for slot in slots] == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert [slot.environ["CUDA_VISIBLE_DEVICES"] for slot in slots] == uuids(gpus)
    assert [slot.detail for slot in slots] == [gpu.describe() for gpu in gpus]
    for slot in slots:
        assert slot.device == "cuda" and slot.threads == 4
        assert {name: slot.environ[name] for name in THREAD_POOL_ENV_VARS} == dict.fromkeys(THREAD_POOL_ENV_VARS, "4")
        assert slot.runtime(cuda(16)) == RuntimeOptions("cuda", "float16", 4, 16)


def test_the_workers_follow_cuda_visible_devices_of_the_environment_given() -> None:
    slots = gpu_workers(GpuSelection(devices=("1",)), cuda(8), {"CUDA_VISIBLE_DEVICES": "2,0"}, FakeNvml(A, B, C))
    [slot] = slots
    assert slot.name == "gpu1" and slot.environ["CUDA_VISIBLE_DEVICES"] == A.uuid and slot.threads == 8


def test_fewer_threads_than_gpus_still_gives_each_worker_one() -> None:
    slots = gpu_workers(GpuSelection(every=True), cuda(2), {}, machine(4))
    assert [slot.threads for slot in slots] == [1, 1, 1, 1]


def test_gpus_on_a_run_that_resolved_to_the_cpu_is_an_environment_problem() -> None:
    with pytest.raises(EnvironmentProblem, match=r"--gpus all: no usable GPU here \(the device resolved to cpu\)") as e:
        gpu_workers(GpuSelection(every=True), RuntimeOptions("cpu", "int8", 8, 16), {}, machine(2))
    assert e.value.exit_code == EXIT_ENVIRONMENT


def test_gpus_naming_a_gpu_that_is_not_there_is_an_environment_problem() -> None:
    with pytest.raises(EnvironmentProblem, match=r"^--gpus device=7: GPU 7 is not visible .*2 visible"):
        gpu_workers(GpuSelection(devices=("7",)), cuda(8), {}, machine(2))
    with pytest.raises(EnvironmentProblem, match=r"^--gpus all: NVML cannot start"):
        gpu_workers(GpuSelection(every=True), cuda(8), {}, FakeNvml(driver=False))


def test_cpu_workers_share_the_threads() -> None:
    two = cpu_workers(2, 2)
    assert [(slot.name, slot.device, slot.threads, slot.detail) for slot in two] == [
        ("cpu0", "cpu", 1, "CPU, 1 thread"),
        ("cpu1", "cpu", 1, "CPU, 1 thread"),
    ]
    three = cpu_workers(3, 8)
    assert [slot.threads for slot in three] == [3, 3, 2] and three[2].detail == "CPU, 2 threads"  # none left idle
    assert [slot.environ for slot in three] == [dict.fromkeys(THREAD_POOL_ENV_VARS, n) for n in ("3", "3", "2")]
    assert all("CUDA_VISIBLE_DEVICES" not in slot.environ for slot in three)


def test_more_cpu_workers_than_threads_is_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="batch.run.pool.plan")
    assert [slot.threads for slot in cpu_workers(4, 2)] == [1, 1, 1, 1]
    assert "4 workers for 2 CPU threads: each gets 1 thread" in caplog.text


def test_the_plan_is_one_pipeline_in_process_unless_asked() -> None:
    cpu = RuntimeOptions("cpu", "int8", 8, 16)
    assert plan_workers(None, None, cpu, {}) == ()
    assert plan_workers(None, 1, cpu, {}) == ()
    assert [slot.name for slot in plan_workers(None, 3, cpu, {})] == ["cpu0", "cpu1", "cpu2"]
    assert [slot.name for slot in plan_workers("2", None, cuda(8), {}, machine(3))] == ["gpu0", "gpu1"]


# --- the settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"gpus": "all", "workers": 2}, "workers: --gpus starts one worker per GPU; --workers splits the CPU"),
        ({"gpus": "2", "device": "cpu"}, "gpus: --gpus runs a worker on each GPU, which needs device cuda or auto"),
        ({"workers": 2, "device": "cuda"}, "workers: --workers splits the CPU among processes; on GPUs use --gpus"),
    ],
)
def test_settings_refuse_gpus_and_workers_where_they_cannot_work(flags: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(flags, environ={})


def test_settings_take_gpus_and_workers_where_they_work(tmp_path: Path) -> None:
    assert load_settings({}, environ={"WHISPERX_BATCH_GPUS": "all"}).gpus == "all"
    assert load_settings({"gpus": " 0, 2 "}, environ={}).gpus == "0,2"
    assert load_settings({"gpus": "2", "device": "cuda"}, environ={}).gpus == "2"
    settings = load_settings({}, environ={"WHISPERX_BATCH_WORKERS": "3", "WHISPERX_BATCH_DEVICE": "cpu"})
    assert settings.workers == 3 and settings.gpus is None
    config = tmp_path / "job.toml"
    config.write_text("gpus = [1]\n")  # a TOML list of one GPU is that GPU, not a count of one
    assert load_settings({}, environ={}, config_path=config).gpus == "device=1"
    with pytest.raises(ConfigError, match=r"gpus: a GPU is listed twice .*WHISPERX_BATCH_GPUS"):
        load_settings({}, environ={"WHISPERX_BATCH_GPUS": "1,1"})


def test_a_run_in_workers_decides_its_device_from_nvml_alone() -> None:
    from batch.common.errors import EnvironmentProblem
    from batch.engine.gpu.device import resolve_device_for_workers

    assert resolve_device_for_workers("auto", FakeNvml(A, B)) == "cuda"
    assert resolve_device_for_workers("cuda", FakeNvml(A)) == "cuda"
    assert resolve_device_for_workers("cpu", FakeNvml(A)) == "cpu"
    assert resolve_device_for_workers("auto", FakeNvml(A, driver=False)) == "cpu"
    assert resolve_device_for_workers("auto", FakeNvml()) == "cpu"
    with pytest.raises(EnvironmentProblem, match=r"no GPU is visible \(NVML Shared Library Not Found\)"):
        resolve_device_for_workers("cuda", FakeNvml(A, driver=False))


def test_the_gpu_a_run_uses_is_named_for_its_report() -> None:
    """The run report (and its page) says which GPU a one-process run ran on: the device's index among those
    CUDA_VISIBLE_DEVICES shows; nothing on the CPU, or where NVML cannot tell."""
    from batch.engine.gpu.listing import gpu_in_use

    nvml = FakeNvml(A, B, C)
    assert gpu_in_use("cuda", None, nvml) == visible_gpus(None, FakeNvml(A, B, C))[0].describe()
    assert gpu_in_use("cuda:1", f"{C.uuid},{A.uuid}", nvml) == visible_gpus(f"{C.uuid},{A.uuid}", nvml)[1].describe()
    assert "GPU" in (gpu_in_use("cuda:1", None, nvml) or "") and B.uuid in (gpu_in_use("cuda:1", None, nvml) or "")
    assert gpu_in_use("cpu", None, nvml) is None
    assert gpu_in_use("cuda:7", None, nvml) is None
    assert gpu_in_use("cuda", None, FakeNvml(A, driver=False)) is None
