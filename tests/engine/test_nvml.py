"""NVML absent, and device mapping: which NVML device (whole GPU or MIG instance) is CUDA's device i.

Everything is the real code, with NVML's library faked absent where needed, so the suite needs no GPU.
"""

from __future__ import annotations

import logging
import sys

import pynvml
import pytest

from batch.engine.gpu.nvml import NvmlDevice, nvml_uuid_for_cuda_index, parse_visible_devices, probe_for_device
from batch.engine.gpu.sizing import BatchSizer

# --- NVML absent ---------------------------------------------------------------------------------------------


def gpu_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "batch.engine.gpu.nvml"]


def test_nvml_library_missing_means_the_configured_size_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    caplog.set_level(logging.INFO, logger="batch.engine.gpu.nvml")
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
    caplog.set_level(logging.INFO, logger="batch.engine.gpu.nvml")
    assert probe_for_device("cuda:1") is None
    assert "nvidia-ml-py is not installed" in gpu_log_lines(caplog)[0]


def test_cpu_needs_no_nvml(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def must_not_run() -> None:
        raise AssertionError("NVML was started for a cpu run")

    monkeypatch.setattr(pynvml, "nvmlInit", must_not_run)
    caplog.set_level(logging.INFO, logger="batch.engine.gpu.nvml")
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


def test_a_mig_instance_named_in_cuda_visible_devices_is_sized_as_itself_whatever_the_runtime_says() -> None:
    # The runtime's identity of a MIG instance is its GPU's (the PCI address; the UUID on some drivers): the
    # instance's own UUID in CUDA_VISIBLE_DEVICES decides, so the batch sizer reads its slice of memory.
    visible = "MIG-22222222-0000-0000-0000-000000000000"
    assert mapped(0, visible, cuda_uuid="dddd4444-0000-0000-0000-000000000000", cuda_pci=(0, 0x86, 0)) == M2.uuid


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
