"""`whisperx-batch doctor`: real checks on this machine (no GPU), a GPU machine faked only at the probe seam."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import batch.cli.doctor.models as doctor_models
import batch.engine.gpu.device as device
from batch.cli.doctor.cuda import device_checks
from batch.common.advice import advice_for
from batch.engine.gpu.device import GpuFacts
from batch.engine.gpu.kernels import cublas_library
from tests.conftest import ENGLISH, speak
from tests.nvml_fakes import FakeGpu, FakeNvml, machine, uuid


def real_cublas_error() -> str:
    """This machine's real loader error for cuBLAS 12 by name, in a process that has not imported PyTorch (whose
    CUDA build loads its own copy): pip keeps it in site-packages/nvidia/cublas/lib, off the loader's path."""
    load = f"import ctypes\ntry:\n    ctypes.CDLL({cublas_library()!r})\nexcept OSError as exc:\n    print(exc)"
    error = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=True).stdout.strip()
    assert cublas_library() in error, error
    return error


H100 = GpuFacts(
    driver_version="570.124.06",
    driver_cuda="12.8",
    gpus=("NVIDIA H100 80GB HBM3 (80 GiB)",),
    capabilities=((9, 0),),
    torch_cuda_build="12.8",
    torch_devices=1,
    ctranslate2_devices=1,
    cudnn_version="9.10.2",
)


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    """{check name: (status, detail)} from the table."""
    table = {}
    for line in stdout.splitlines()[1:]:
        name, _, rest = line.partition("  ")
        if name.strip() and not line.startswith(" ") and not line.startswith("doctor:"):
            status, _, detail = rest.strip().partition(" ")
            table[name.strip()] = (status, detail.strip())
    return table


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "in"
    speak(ENGLISH, source / "a.wav")
    return source, tmp_path / "out"


def test_this_cpu_machine_is_ready_for_a_cpu_run(cli, job: tuple[Path, Path], tiny_en: str, tmp_path: Path) -> None:
    source, out = job
    env = {"TORCH_HOME": str(tmp_path / "torch")}  # an empty torch.hub cache: no wav2vec2 there
    result = cli("doctor", source, "--out", out, "--model", tiny_en, "--device", "cpu", env=env)
    assert result.exit_code == 0, result.stdout
    table = rows(result.stdout)
    assert table["nvidia driver"][0] == "skip" and table["cuda"][0] == "skip" and table["cublas"][0] == "skip"
    assert "information only" in table["cudnn"][1]
    assert table["decoder"][0] == "ok" and "PyAV" in table["decoder"][1]
    assert table["ffmpeg"][0] == "ok"
    assert table["asr model"] == ("ok", f"{tiny_en} (local folder)")
    assert table["vad model"][0] == "ok" and "weights_only=True" in table["vad model"][1]
    # Offline and no wav2vec2 cached: with language auto, only English files would lose their word timings.
    assert table["align model (en)"][0] == "warn" and "HF_HUB_OFFLINE=1" in table["align model (en)"][1]
    assert table["source"][0] == "ok" and f"{source}: readable, 1 recordings" in table["source"][1]
    assert table["dest"][0] == "ok" and "will be created" in table["dest"][1]
    assert not out.exists()  # doctor looks, it does not create
    assert result.stdout.splitlines()[-1].startswith("doctor: ready to run")


def test_asking_for_cuda_without_a_gpu_stops_with_what_to_do(cli, job: tuple[Path, Path], tiny_en: str) -> None:
    source, out = job
    result = cli("doctor", source, "--out", out, "--model", tiny_en, "--device", "cuda", "--no-align")
    assert result.exit_code == 3
    table = rows(result.stdout)
    assert table["nvidia driver"][0] == "fail" and table["cuda"][0] == "fail"
    assert "--gpus all" in result.stdout and "--device cpu" in result.stdout
    assert table["cublas"][0] == "skip"  # without a device there is nothing to load it for
    assert result.stdout.splitlines()[-1] == "doctor: 2 problem(s) would stop a run (exit 3)"


def test_auto_on_a_cpu_machine_warns_and_still_passes(cli, tiny_en: str) -> None:
    result = cli("doctor", "--model", tiny_en, "--no-align")
    assert result.exit_code == 0
    table = rows(result.stdout)
    assert table["cuda"][0] == "warn" and "the run uses the CPU" in table["cuda"][1]
    assert table["source"] == ("skip", "not given") and table["dest"] == ("skip", "not given")


def test_a_gpu_whose_cublas_ctranslate2_cannot_load_fails_with_the_exact_fix(
    cli, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine's real loader failure for cuBLAS 12 by name, on a faked GPU.
    error = real_cublas_error()
    monkeypatch.setattr(device, "probe_gpu", lambda: dataclasses.replace(H100, cublas_error=error))

    auto = cli("doctor", "--model", tiny_en, "--no-align")
    assert auto.exit_code == 0 and rows(auto.stdout)["cublas"][0] == "warn"  # the run would use the CPU
    result = cli("doctor", "--model", tiny_en, "--no-align", "--device", "cuda")
    assert result.exit_code == 3
    assert rows(result.stdout)["cublas"][0] == "fail"
    assert rows(result.stdout)["cudnn"][0] == "ok"  # information only: no stage loads it by name
    fix = next(line for line in result.stdout.splitlines() if "export LD_LIBRARY_PATH=" in line)
    library_path = fix.split("export LD_LIBRARY_PATH=")[1].split(":$LD_LIBRARY_PATH")[0]

    # The advice works: with it, the library loads by name in a fresh process that has not imported PyTorch.
    load = f"import ctypes; ctypes.CDLL({cublas_library()!r})"
    env = {**os.environ, "LD_LIBRARY_PATH": library_path}
    assert subprocess.run([sys.executable, "-c", load], env=env, capture_output=True).returncode == 0


def test_cublas_is_made_loadable_by_name_for_ctranslate2_without_ld_library_path() -> None:
    """A pip install: cuBLAS 12 is off the loader's path, yet after load_cublas CTranslate2's way of loading it
    (by name) works, in a fresh process that has not imported PyTorch and has no LD_LIBRARY_PATH."""
    real_cublas_error()  # by name alone it fails here
    code = (
        "import ctypes\nfrom batch.engine.gpu.device import load_cublas\n"
        "from batch.engine.gpu.kernels import cublas_library\n"
        "assert load_cublas() is None\nctypes.CDLL(cublas_library())\nprint('loaded')"
    )
    env = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr


def test_cublas_is_found_where_pytorch_is_when_that_is_not_the_interpreters_own_site_packages(tmp_path: Path) -> None:
    """A `pip install --user` (or PYTHONPATH): PyTorch and NVIDIA's wheels are imported from a folder that is not
    the interpreter's site-packages (a bare venv's here). load_cublas, before PyTorch is imported (the ASR loads
    on its own thread while the main one imports PyTorch), loads the copy beside PyTorch, the one PyTorch's
    libraries link to, and CTranslate2's load by name then finds it."""
    real_cublas_error()
    bare = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    packages = sysconfig.get_path("purelib")  # where this test's PyTorch is: off the bare venv's own paths
    code = (
        "import ctypes, sys, sysconfig\nfrom pathlib import Path\n"
        "from batch.engine.gpu.device import load_cublas\n"
        "from batch.engine.gpu.kernels import cublas_library\n"
        "assert not (Path(sysconfig.get_path('purelib')) / 'nvidia').exists()\n"
        "assert load_cublas() is None\n"
        "ctypes.CDLL(cublas_library())\n"
        "assert 'torch' not in sys.modules\n"
        "print(next(line.split()[-1] for line in open('/proc/self/maps') if cublas_library() in line))\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {key: value for key, value in os.environ.items() if key not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = f"{root}:{packages}"
    result = subprocess.run([bare / "bin" / "python", "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == Path(packages) / "nvidia" / "cublas" / "lib"


@pytest.mark.parametrize("torch_first", [True, False])
def test_the_process_loads_pytorchs_cublas_whether_load_cublas_runs_before_or_after_pytorchs_import(
    tmp_path: Path, torch_first: bool
) -> None:
    """Another cuBLAS 12 on the loader's path (LD_LIBRARY_PATH, as a system CUDA puts one): the run loads cuBLAS
    on the ASR's thread while the main thread imports PyTorch, and whichever comes first, the process ends up
    with the one copy PyTorch's libraries link to (a library of that name loaded first would be theirs too)."""
    wheel = Path(sysconfig.get_path("purelib")) / "nvidia" / "cublas" / "lib"
    other = tmp_path / "system-cuda"
    other.mkdir()
    for name in ("libcublas.so.12", "libcublasLt.so.12"):
        try:
            os.link(wheel / name, other / name)  # the same bytes under another path, without copying 850 MB
        except OSError as exc:
            pytest.skip(f"cannot hard-link cuBLAS beside the test: {exc}")
    steps = ["import torch", "assert load_cublas() is None"]
    code = (
        "from batch.engine.gpu.device import load_cublas\nfrom batch.engine.gpu.kernels import cublas_library\n"
        + "\n".join(steps if torch_first else steps[::-1])
        + "\nprint(sorted({line.split()[-1] for line in open('/proc/self/maps') if cublas_library() in line}))"
    )
    env = {**os.environ, "LD_LIBRARY_PATH": str(other)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([str(wheel / "libcublas.so.12")])


def test_a_healthy_gpu_machine_is_ready(cli, tiny_en: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "probe_gpu", lambda: H100)
    result = cli("doctor", "--model", tiny_en, "--no-align", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["ready"] is True and document["exit_code"] == 0
    checks = {check["name"]: check for check in document["checks"]}
    assert checks["nvidia driver"]["detail"].startswith(
        "570.124.06 (CUDA 12.8), 1 GPU: NVIDIA H100 80GB HBM3 (80 GiB); "
    )
    assert "CTranslate2's kernels for sm_90 are JIT-compiled from its PTX" in checks["nvidia driver"]["detail"]
    assert checks["cuda"]["status"] == "ok" and "the run uses cuda" in checks["cuda"]["detail"]
    assert checks["cublas"] == {
        "name": "cublas",
        "status": "ok",
        "detail": "libcublas.so.12 loads, as CTranslate2 loads it",
        "fix": None,
    }
    assert checks["cudnn"]["status"] == "ok" and checks["cudnn"]["detail"].startswith("cuDNN 9.10.2, PyTorch's own")


@pytest.mark.parametrize(
    ("facts", "device", "statuses"),
    [
        (dataclasses.replace(H100, driver_cuda="11.8"), "auto", ("warn", "ok", "ok", "ok")),
        (dataclasses.replace(H100, driver_cuda="11.8"), "cuda", ("fail", "ok", "ok", "ok")),
        # CUDA 12.4 cannot JIT CTranslate2's CUDA 12.8 PTX, which an H100 (no machine code for sm_90) needs ...
        (dataclasses.replace(H100, driver_cuda="12.4"), "cuda", ("fail", "ok", "ok", "ok")),
        (dataclasses.replace(H100, driver_cuda="12.4"), "auto", ("warn", "ok", "ok", "ok")),
        # ... while an A10 runs machine code, which an older minor driver runs (minor version compatibility).
        (dataclasses.replace(H100, driver_cuda="12.4", capabilities=((8, 6),)), "cuda", ("ok", "ok", "ok", "ok")),
        (
            GpuFacts(nvml_error="NVML Shared Library Not Found", torch_cuda_build="12.8"),
            "cpu",
            ("skip",) * 4,
        ),
        (GpuFacts(torch_cuda_build=None), "cuda", ("fail", "fail", "skip", "skip")),
        (dataclasses.replace(H100, ctranslate2_devices=0, torch_error=None), "auto", ("ok", "warn", "ok", "ok")),
        (dataclasses.replace(H100, cublas_error="cannot open"), "auto", ("ok", "ok", "warn", "ok")),
        (dataclasses.replace(H100, cublas_error="cannot open"), "cuda", ("ok", "ok", "fail", "ok")),
    ],
)
def test_device_rows_follow_what_device_asks(facts: GpuFacts, device: str, statuses: tuple[str, ...]) -> None:
    assert tuple(check.status for check in device_checks(facts, device)) == statuses


def test_a_refused_checkpoint_says_what_to_do(cli, tiny_en: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the allowlist, torch.load(weights_only=True) really refuses whisperx's VAD checkpoint.
    monkeypatch.setattr("batch.engine.vad.segmentation._safe_globals", lambda: [])
    result = cli("doctor", "--model", tiny_en, "--device", "cpu", "--no-align")
    assert result.exit_code == 3
    assert rows(result.stdout)["vad model"][0] == "fail"
    assert "torch.load refused a checkpoint" in result.stdout and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in result.stdout


def test_a_model_missing_from_an_offline_cache(cli, tmp_path: Path) -> None:
    result = cli("doctor", "--model", "tiny", "--model-dir", tmp_path / "cache", "--device", "cpu", "--no-align")
    assert result.exit_code == 3
    status, detail = rows(result.stdout)["asr model"]
    assert status == "fail" and "tiny (Systran/faster-whisper-tiny) is not in the cache" in detail
    assert "whisperx-batch models pull" in result.stdout


def test_a_cached_hub_model_is_found_offline(cli, tmp_path: Path, tiny_en: str) -> None:
    # The Hub cache layout faster-whisper downloads into: models--ORG--NAME/{refs/main, snapshots/REV/...}.
    repo = tmp_path / "cache" / "models--Systran--faster-whisper-tiny.en"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for item in Path(tiny_en).iterdir():
        (snapshot / item.name).symlink_to(item)
    result = cli("doctor", "--model", "tiny.en", "--model-dir", tmp_path / "cache", "--device", "cpu", "--no-align")
    assert result.exit_code == 0, result.stdout
    assert rows(result.stdout)["asr model"] == (
        "ok",
        f"tiny.en (Systran/faster-whisper-tiny.en): in the cache ({snapshot})",
    )


def test_a_gated_diarization_model_says_accept_its_conditions(
    cli, tiny_en: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []

    def gated(repo_id: str, token: str | None) -> str:
        asked.append((repo_id, token))
        return f"GatedRepoError: 403 Client Error. Cannot access gated repo. Access to model {repo_id} is restricted."

    monkeypatch.setattr(doctor_models, "hub_access", gated)
    token = "hf_" + "T" * 34
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": token, "WHISPERX_BATCH_DIARIZE": "true", "HF_HOME": str(tmp_path)}
    result = cli("doctor", "--model", tiny_en, "--device", "cpu", "--no-align", env=env)
    assert result.exit_code == 3
    assert asked == [("pyannote/speaker-diarization-community-1", token)]
    assert rows(result.stdout)["diarize model"][0] == "fail"
    assert "accept its conditions" in result.stdout
    assert rows(result.stdout)["hf token"] == ("ok", "present (from HF_TOKEN)")
    assert token not in result.stdout


def test_diarization_without_a_token_is_caught_before_the_run(cli, tiny_en: str, tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_HOME": str(tmp_path)}
    result = cli("doctor", "--model", tiny_en, "--device", "cpu", "--no-align", "--diarize", env=env)
    assert result.exit_code == 3
    assert rows(result.stdout)["diarize model"][0] == "fail" and "HF_TOKEN" in result.stdout


def test_the_token_is_said_present_never_shown(cli, tiny_en: str, tmp_path: Path) -> None:
    secret = tmp_path / "hf-token"
    token = "hf_" + "S" * 34
    secret.write_text(token + "\n")
    for output in ([], ["--json"]):
        result = cli("doctor", "--model", tiny_en, "--device", "cpu", "--no-align", "--hf-token-file", secret, *output)
        assert result.exit_code == 0
        assert f"present (from --hf-token-file {secret})" in result.stdout
        assert token not in result.stdout + result.stderr and "S" * 20 not in result.stdout


def test_an_unreadable_token_file_is_a_problem(cli, tiny_en: str, tmp_path: Path) -> None:
    args = ["doctor", "--model", tiny_en, "--device", "cpu", "--no-align", "--hf-token-file", tmp_path / "none"]
    result = cli(*args)
    assert result.exit_code == 3 and rows(result.stdout)["hf token"][0] == "fail"


def test_source_and_dest_problems(cli, tiny_en: str, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("doctor", tmp_path / "missing", "--out", a_file / "out", "--model", tiny_en, "--no-align")
    assert result.exit_code == 3
    table = rows(result.stdout)
    assert table["source"] == ("fail", f"{tmp_path / 'missing'} is not a folder")
    assert table["dest"][0] == "fail" and "not writable" in table["dest"][1]

    # An empty SOURCE would stop a run (exit 2): a problem, unless the job allows it (a drop folder).
    common = ("--out", empty / "out", "--model", tiny_en, "--no-align", "--device", "cpu")
    nothing = cli("doctor", empty, *common)
    assert nothing.exit_code == 3 and rows(nothing.stdout)["source"][0] == "fail"
    assert "no recording is selected there (0 files listed)" in rows(nothing.stdout)["source"][1]
    assert "--allow-empty" in nothing.stdout
    allowed = cli("doctor", empty, *common, env={"WHISPERX_BATCH_ALLOW_EMPTY": "true"})
    assert allowed.exit_code == 0 and rows(allowed.stdout)["source"][0] == "warn"

    one_file = cli("doctor", a_file, *common)  # SOURCE may be one file, whatever its extension
    assert rows(one_file.stdout)["source"] == ("ok", f"{a_file}: readable, 1 recordings (0.0 MiB)")


def test_a_bad_setting_is_a_usage_error(cli) -> None:
    result = cli("doctor", "--device", "tpu")
    assert result.exit_code == 2 and "device" in result.stderr


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            "RuntimeError: Unable to load any of {libcudnn_ops.so.9.1.0, libcudnn_ops.so.9.1, libcudnn_ops.so.9, "
            "libcudnn_ops.so}",
            "LD_LIBRARY_PATH",
        ),
        ("Could not load library libcudnn_cnn_infer.so.8. Error: cannot open shared object file", "cuDNN 9"),
        ("RuntimeError: CUDA failed with error no CUDA-capable device is detected", "CUDA_VISIBLE_DEVICES"),
        ("RuntimeError: Found no NVIDIA driver on your system", "--gpus all"),
        ("NVMLError_LibraryNotFound: NVML Shared Library Not Found", "nvidia-smi"),
        ("CUDA driver version is insufficient for CUDA runtime version", "R570"),
        (
            "_pickle.UnpicklingError: Weights only load failed. ... WeightsUnpickler error: Unsupported global: "
            "GLOBAL omegaconf.listconfig.ListConfig was not an allowed global by default.",
            "weights only by default",
        ),
        (
            "GatedRepoError: 403 Client Error. Cannot access gated repo for url https://huggingface.co/api/models/"
            "pyannote/speaker-diarization-3.1. Access to model pyannote/speaker-diarization-3.1 is restricted",
            "accept its conditions",
        ),
        ("LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder", "models pull"),
        ("CUDA out of memory. Tried to allocate 2.00 GiB", "--batch-size"),
    ],
)
def test_known_failures_become_one_line_of_what_to_do(error: str, says: str) -> None:
    advice = advice_for(error)
    assert advice is not None and says in advice and "\n" not in advice


def test_an_unknown_failure_gets_no_made_up_advice() -> None:
    assert advice_for("ValueError: something nobody has seen") is None


def test_a_gpu_that_cannot_run_falls_back_to_the_cpu_on_auto_and_stops_on_cuda(
    cli, tmp_path: Path, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA build whose cuBLAS 12 cannot be loaded (this machine's real loader error, on a faked GPU at the probe
    seam): `auto` warns with doctor's fix and transcribes on the CPU; `cuda` stops (exit 3) before any model,
    with the same fix."""
    error = real_cublas_error()
    monkeypatch.setattr(device, "probe_gpu", lambda: dataclasses.replace(H100, cublas_error=error))
    source = tmp_path / "in"
    speak(ENGLISH, source / "call.wav")

    auto = cli("run", source, "--out", tmp_path / "auto", "--model", tiny_en, "--no-align")
    assert auto.exit_code == 0, auto.stderr
    assert "device auto: a GPU is present but cannot run the models, so the CPU is used" in auto.stderr
    assert "export LD_LIBRARY_PATH=" in auto.stderr
    [report] = [json.loads(path.read_text()) for path in (tmp_path / "auto" / "_runs").glob("*.json")]
    assert report["device"] == "cpu" and report["succeeded"] == ["call.wav"]

    cuda = cli("run", source, "--out", tmp_path / "cuda", "--model", tiny_en, "--no-align", "--device", "cuda")
    assert cuda.exit_code == 3
    assert "device cuda was asked for but CUDA cannot run here: cublas: libcublas.so.12 cannot be loaded" in (
        cuda.stderr
    )
    assert "export LD_LIBRARY_PATH=" in cuda.stderr and "models loaded" not in cuda.stderr


def test_auto_on_a_healthy_gpu_picks_cuda_and_cuda_without_a_driver_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batch.common.errors import EnvironmentProblem
    from batch.engine.gpu.device import resolve_device

    monkeypatch.setattr(device, "probe_gpu", lambda: H100)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(device, "probe_gpu", lambda: device.GpuFacts(nvml_error="NVML not found"))
    assert resolve_device("auto") == "cpu"
    with pytest.raises(EnvironmentProblem, match="--gpus all") as stopped:
        resolve_device("cuda")
    assert "cublas" not in str(stopped.value)  # no GPU to run on: the libraries are beside the point


def test_silero_is_checked_where_the_run_loads_it_offline(cli, tiny_en: str) -> None:
    environment = {"WHISPERX_BATCH_VAD_METHOD": "silero", "HF_HUB_OFFLINE": "1", "TORCH_HOME": "/nonexistent"}
    result = cli("doctor", "--model", tiny_en, "--no-align", "--json", env=environment)
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["vad model"]["status"] == "ok" and "bundled with faster-whisper" in checks["vad model"]["detail"]


# --- the GPUs --gpus would use (NVML faked by tests/nvml_fakes.py; the driver's absence is this machine's own) --


def test_no_nvidia_driver_skips_the_gpus_row_unless_the_job_asks_for_gpus(cli, tiny_en: str) -> None:
    result = cli("doctor", "--model", tiny_en, "--no-align", "--device", "cpu")
    assert result.exit_code == 0, result.stdout
    status, detail = rows(result.stdout)["gpus"]
    assert status == "skip" and detail.startswith("no GPU: NVML cannot start (no NVIDIA driver visible?): ")
    assert detail.endswith("; --gpus cannot be used here")
    assert not any(name.startswith("gpu0") for name in rows(result.stdout))

    asked = cli("doctor", "--model", tiny_en, "--no-align", env={"WHISPERX_BATCH_GPUS": "all"})
    assert asked.exit_code == 3
    status, detail = rows(asked.stdout)["gpus"]
    assert status == "fail" and detail.startswith("--gpus all: no GPU: NVML cannot start")
    assert "or leave --gpus out" in asked.stdout


def four_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = dataclasses.replace(H100, gpus=H100.gpus * 4, torch_devices=4, ctranslate2_devices=4)
    monkeypatch.setattr(device, "probe_gpu", lambda: facts)
    monkeypatch.setitem(sys.modules, "pynvml", machine(4))


def test_every_gpu_is_listed_and_what_gpus_all_would_start(cli, tiny_en: str, monkeypatch: pytest.MonkeyPatch) -> None:
    four_gpu_machine(monkeypatch)
    result = cli("doctor", "--model", tiny_en, "--no-align", "--json", env={"WHISPERX_BATCH_THREADS": "16"})
    assert result.exit_code == 0, result.stdout
    checks = json.loads(result.stdout)["checks"]
    names = [check["name"] for check in checks]
    assert names[names.index("cudnn") + 1 : names.index("decoder")] == ["gpu0", "gpu1", "gpu2", "gpu3", "gpus"]
    by_name = {check["name"]: check for check in checks}
    assert by_name["gpu2"] == {
        "name": "gpu2",
        "status": "ok",
        "detail": f"NVIDIA H100 80GB HBM3, 80.0 GiB, {uuid('GPU', '20000000')}",
        "fix": None,
    }
    h100 = "(NVIDIA H100 80GB HBM3)"
    assert by_name["gpus"]["status"] == "ok"
    assert by_name["gpus"]["detail"] == (
        f"--gpus all would start 4 workers, 4 CPU threads each: gpu0 {h100}, gpu1 {h100}, gpu2 {h100}, gpu3 {h100}"
    )


def test_the_gpus_are_numbered_as_cuda_visible_devices_lists_them(
    cli, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    four_gpu_machine(monkeypatch)
    env = {"CUDA_VISIBLE_DEVICES": "3,1", "WHISPERX_BATCH_THREADS": "3", "WHISPERX_BATCH_GPUS": "device=1"}
    table = rows(cli("doctor", "--model", tiny_en, "--no-align", env=env).stdout)
    assert table["gpu0"][1].endswith(uuid("GPU", "30000000")) and table["gpu1"][1].endswith(uuid("GPU", "10000000"))
    assert "gpu2" not in table
    started = "--gpus device=1 would start 1 worker, 3 CPU threads each: gpu1 (NVIDIA H100 80GB HBM3)"
    assert table["gpus"] == ("ok", started)


def test_the_jobs_gpus_naming_a_gpu_that_is_not_there_stops_the_run(
    cli, tiny_en: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    four_gpu_machine(monkeypatch)
    result = cli("doctor", "--model", tiny_en, "--no-align", env={"WHISPERX_BATCH_GPUS": "0,5"})
    assert result.exit_code == 3
    status, detail = rows(result.stdout)["gpus"]
    assert status == "fail" and detail.startswith("--gpus 0,5: GPU 5 is not visible to this process (4 visible: GPU 0")
    assert "gpu2 is --gpus device=2" in result.stdout
    assert result.stdout.splitlines()[-1] == "doctor: 1 problem(s) would stop a run (exit 3)"


@pytest.mark.parametrize(
    ("job", "cuda_problem", "expected"),
    [
        ({"device": "cpu"}, None, ("skip", "2 GPU(s) not used (--device cpu); --gpus needs cuda or auto")),
        ({}, "cudnn: libcudnn_ops.so.9 cannot be loaded", ("skip", "--gpus all cannot start workers: CUDA cannot")),
        ({"gpus": "2"}, "cudnn: libcudnn_ops.so.9 cannot be loaded", ("fail", "--gpus 2 cannot start workers")),
        ({"gpus": "3"}, None, ("fail", "--gpus 3: 3 GPUs asked for, 2 visible: GPU 0 (NVIDIA H100")),
        ({"gpus": "2", "threads": 1}, None, ("ok", "--gpus 2 would start 2 workers, 1 CPU thread each: gpu0")),
    ],
)
def test_the_gpus_row_judges_the_jobs_gpus_and_device(
    job: dict[str, object], cuda_problem: str | None, expected: tuple[str, str]
) -> None:
    from batch.cli.doctor.gpus import gpu_checks
    from batch.settings.options import load_settings

    checks = gpu_checks(load_settings(job, environ={}), cuda_problem, environ={}, nvml=machine(2))
    assert [check.name for check in checks] == ["gpu0", "gpu1", "gpus"]
    status, detail = expected
    assert checks[-1].status == status and checks[-1].detail.startswith(detail), checks[-1]


def test_a_gpu_split_by_mig_is_listed_as_its_instances() -> None:
    from batch.cli.doctor.gpus import gpu_checks
    from batch.settings.options import load_settings

    instances = tuple(FakeGpu(uuid("MIG", f"{slot}1111111"), "NVIDIA A100 MIG 3g.20gb", 20 * 2**30) for slot in (1, 2))
    nvml = FakeNvml(FakeGpu(uuid("GPU", "aaaa0000"), "NVIDIA A100", 40 * 2**30, mig=instances))
    checks = gpu_checks(load_settings({"threads": 8}, environ={}), None, environ={}, nvml=nvml)
    assert [(check.name, check.detail) for check in checks[:2]] == [
        ("gpu0", f"NVIDIA A100 MIG 3g.20gb, 20.0 GiB, {instances[0].uuid}"),
        ("gpu1", f"NVIDIA A100 MIG 3g.20gb, 20.0 GiB, {instances[1].uuid}"),
    ]
    assert checks[2].detail.startswith("--gpus all would start 2 workers, 4 CPU threads each")


def test_no_gpu_in_cuda_visible_devices_says_so() -> None:
    from batch.cli.doctor.gpus import gpu_checks
    from batch.settings.options import load_settings

    [check] = gpu_checks(load_settings({}, environ={}), None, environ={"CUDA_VISIBLE_DEVICES": ""}, nvml=machine(2))
    assert (check.name, check.status) == ("gpus", "skip")
    assert check.detail == "no GPU: NVML lists none in CUDA_VISIBLE_DEVICES=''; --gpus cannot be used here"
