"""Whether CTranslate2 can run its kernels on a card with a driver: the installed library's own fat binaries (read
once from the real file), and cards and drivers faked at NVML (tests/nvml_fakes.py)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batch.cli.doctor.cuda import device_checks
from batch.common.advice import advice_for, cublas_fix
from batch.common.errors import EnvironmentProblem
from batch.engine.gpu import device
from batch.engine.gpu.device import resolve_device_for_workers
from batch.engine.gpu.fatbin import GpuCode, LibraryCode, elf_sections, read_at, read_library_code
from batch.engine.gpu.kernels import ctranslate2_library, cublas_library, installed_code, route
from tests.nvml_fakes import FakeGpu, FakeNvml, uuid

H100 = FakeGpu(uuid("GPU", "aaaa0000"), "NVIDIA H100 80GB HBM3", capability=(9, 0))
H200 = FakeGpu(uuid("GPU", "bbbb0000"), "NVIDIA H200", 141 * 2**30, capability=(9, 0))
A10 = FakeGpu(uuid("GPU", "cccc0000"), "NVIDIA A10", 24 * 2**30, capability=(8, 6))
L4 = FakeGpu(uuid("GPU", "dddd0000"), "NVIDIA L4", 24 * 2**30, capability=(8, 9))
M60 = FakeGpu(uuid("GPU", "eeee0000"), "Tesla M60", 8 * 2**30, capability=(5, 2))
R535 = {"version": "535.183.01", "cuda": 12020}  # the last LTS branch before R570: CUDA 12.2
R570 = {"version": "570.124.06", "cuda": 12080}


@pytest.fixture(scope="module")
def ctranslate2_code() -> LibraryCode:
    code = installed_code()
    assert code is not None, "the installed CTranslate2's library was not found through its package metadata"
    return code


def test_the_installed_ctranslate2_carries_machine_code_up_to_sm_86_and_ptx_for_compute_86_only(
    ctranslate2_code: LibraryCode,
) -> None:
    # CTranslate2 4.8.5's wheel, as cuobjdump would list it: 34 fat binaries, each with the same eight entries.
    assert ctranslate2_code.path.parent.name == "ctranslate2.libs"
    assert ctranslate2_code.fatbins == 34
    assert ctranslate2_code.sass == [53, 60, 61, 70, 75, 80, 86]
    assert ctranslate2_code.ptx == [GpuCode("ptx", 86, (8, 7))]  # PTX ISA 8.7: written by CUDA 12.8
    assert ctranslate2_code.cublas == cublas_library() == "libcublas.so.12"  # compiled in: "libcublas.so." CUDA major


def test_which_code_each_card_runs(ctranslate2_code: LibraryCode) -> None:
    def code_for(capability: tuple[int, int]) -> tuple[str, tuple[int, int] | None] | None:
        found = route(ctranslate2_code, capability)
        return (str(found.code), found.jit_cuda) if found else None

    assert code_for((8, 6)) == ("sm_86", None)  # A10: its own machine code
    assert code_for((8, 9)) == ("sm_86", None)  # L4: sm_86 code runs on sm_89 (same major, lower minor)
    assert code_for((7, 5)) == ("sm_75", None)  # T4
    assert code_for((9, 0)) == ("compute_86 (PTX ISA 8.7)", (12, 8))  # H100, H200: JIT from the PTX
    assert code_for((12, 0)) == ("compute_86 (PTX ISA 8.7)", (12, 8))  # Blackwell workstation cards
    assert code_for((5, 2)) is None  # Maxwell: sm_53 code does not run on sm_52, PTX is for 8.6 and up


@pytest.mark.parametrize(
    ("gpu", "driver", "auto"),
    [(H100, R535, "cpu"), (H200, R535, "cpu"), (H100, R570, "cuda"), (A10, R535, "cuda"), (L4, R535, "cuda")],
    ids=["sm90-R535", "h200-R535", "sm90-R570", "sm86-R535", "sm89-R535"],
)
def test_a_run_in_workers_takes_the_gpu_only_where_ctranslate2s_kernels_run_with_this_driver(
    gpu: FakeGpu, driver: dict, auto: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert resolve_device_for_workers("auto", FakeNvml(gpu, **driver)) == auto
    if auto == "cuda":
        assert resolve_device_for_workers("cuda", FakeNvml(gpu, **driver)) == "cuda"
        assert not caplog.records
        return
    assert "so the CPU is used" in caplog.text and "R570 (570.26 or newer)" in caplog.text
    with pytest.raises(EnvironmentProblem) as stopped:
        resolve_device_for_workers("cuda", FakeNvml(gpu, **driver))
    said = str(stopped.value)
    assert f"on the {gpu.name}: CTranslate2 has no machine code for this card (sm_90)" in said
    assert "PTX for compute_86 (PTX ISA 8.7), written by CUDA 12.8, which a driver of CUDA 12.2 refuses" in said
    assert "Fix: update the NVIDIA driver to R570 (570.26 or newer), a driver of CUDA 12.8 or newer" in said


def test_a_card_ctranslate2_has_no_code_for_is_no_driver_matter() -> None:
    with pytest.raises(EnvironmentProblem, match=r"cuda: Tesla M60: CTranslate2 carries no code this card \(sm_52\)"):
        resolve_device_for_workers("cuda", FakeNvml(M60, **R570))


def doctor_driver_row(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu, driver: dict, requested: str) -> tuple:
    """The doctor's driver row from the real probe, with NVML faked: this machine's PyTorch and CTranslate2."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(gpu, **driver))
    facts = device.probe_gpu()
    assert facts.capabilities == (gpu.capability,)
    row = device_checks(facts, requested)[0]
    assert row.name == "nvidia driver"
    return row.status, row.detail, row.fix


def test_the_doctor_fails_an_h100_on_a_driver_too_old_for_ctranslate2s_ptx(monkeypatch: pytest.MonkeyPatch) -> None:
    status, detail, fix = doctor_driver_row(monkeypatch, H100, R535, "cuda")
    assert status == "fail"
    assert detail.startswith("535.183.01 (CUDA 12.2), 1 GPU: NVIDIA H100 80GB HBM3 (80 GiB); on the NVIDIA H100")
    assert "the provided PTX was compiled with an unsupported toolchain" in detail
    assert fix.startswith("update the NVIDIA driver to R570 (570.26 or newer)")
    # --device auto: the run uses the CPU, which the doctor warns of with the same fix.
    assert doctor_driver_row(monkeypatch, H100, R535, "auto")[::2] == ("warn", fix)


def test_the_doctor_passes_an_h100_on_r570_and_says_its_kernels_are_jit_compiled_and_where_they_are_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_CACHE_PATH", "/models/cuda-cache")
    status, detail, fix = doctor_driver_row(monkeypatch, H100, R570, "cuda")
    assert (status, fix) == ("ok", None)
    assert detail.endswith(
        "CTranslate2's kernels for sm_90 are JIT-compiled from its PTX (cached in /models/cuda-cache)"
    )


def test_an_older_minor_driver_is_no_problem_where_machine_code_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # An A10 on R535 (CUDA 12.2) runs PyTorch's and CTranslate2's CUDA 12.8 machine code: nothing to flag.
    assert doctor_driver_row(monkeypatch, A10, R535, "cuda") == (
        "ok",
        "535.183.01 (CUDA 12.2), 1 GPU: NVIDIA A10 (24 GiB)",
        None,
    )


def test_the_jit_refusal_ctranslate2_raises_gets_the_driver_advice(ctranslate2_code: LibraryCode) -> None:
    # The text CTranslate2 raises, read from its library: its CUDA check's prefix and the CUDA runtime's message
    # (linked statically) for cudaErrorUnsupportedPtxVersion.
    with Path(ctranslate2_code.path).open("rb") as file:
        rodata = read_at(file, *elf_sections(file)[".rodata"])
    prefix = re.search(rb"CUDA failed with error \0", rodata)
    message = re.search(rb"the provided PTX was compiled with an unsupported toolchain\.\0", rodata)
    assert prefix and message
    error = "RuntimeError: " + (prefix.group(0) + message.group(0)).replace(b"\0", b"").decode()
    advice = advice_for(error)
    assert advice is not None and "R570" in advice and "whisperx-batch doctor" in advice
    assert "BASE_IMAGE" not in (advice_for("CUDA driver version is insufficient for CUDA runtime version") or "")


def test_the_library_is_read_without_importing_ctranslate2() -> None:
    code = "import sys\nfrom batch.engine.gpu import kernels\nkernels.installed_code()\n"
    code += "print('ctranslate2' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert ctranslate2_library() is not None


def test_a_run_in_one_process_stops_on_cuda_naming_the_driver_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real device check (this machine's PyTorch and CTranslate2), an H100 on R535 faked at NVML.
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(H100, **R535))
    with pytest.raises(EnvironmentProblem, match="device cuda was asked for but CUDA cannot run here") as stopped:
        device.resolve_device("cuda")
    assert "nvidia driver: 535.183.01 (CUDA 12.2)" in str(stopped.value)
    assert "Fix: update the NVIDIA driver to R570 (570.26 or newer)" in str(stopped.value)


def test_ctranslate2_is_pinned_to_the_tested_range_the_installed_build_is_in() -> None:
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    [pin] = [Requirement(line) for line in project["dependencies"] if Requirement(line).name == "ctranslate2"]
    assert version("ctranslate2") in pin.specifier  # the build whose fat binaries the tests above read
    assert "4.9.0" not in pin.specifier and "5.0.0" not in pin.specifier  # a later build may change its CUDA


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a library")
def test_the_cublas_name_follows_the_build_a_cuda_13_build_names_libcublas_13(tmp_path: Path) -> None:
    # A library built as CTranslate2 builds its cuBLAS name: "libcublas.so." STR(CUBLAS_VER_MAJOR), here 13.
    source = 'const char *cublas_soname(void) { return "libcublas.so." "13"; }\n'
    library = tmp_path / "libctranslate2.so.4"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), "-x", "c", "-"], input=source, text=True, check=True)
    code = read_library_code(library)
    assert (code.cublas, code.fatbins, code.code) == ("libcublas.so.13", 0, frozenset())  # and no GPU code
    fix = cublas_fix("libcublas.so.13")  # this machine has PyTorch's cuBLAS 12 only: no folder to point to
    assert fix.startswith("CTranslate2 needs cuBLAS 13 (libcublas.so.13)") and "'nvidia-cublas==13.*'" in fix
