"""Machine facts: CPUs from affinity and container quotas; secrets redacted everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch.common.errors import describe, redact, register_secret
from batch.common.runtime import available_cpus, cuda_counts_by_pci_bus, package_versions
from batch.engine.gpu.device import default_compute_type
from tests.conftest import ENGLISH, speak


def test_cpus_follow_affinity_when_no_quota(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_cgroup_v2_quota_caps_threads(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (min(affinity, expected) if expected else affinity)


def test_cgroup_v1_quota_caps_threads(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1


def test_compute_type_defaults() -> None:
    assert default_compute_type("cuda") == "float16"  # CTranslate2 cannot tell without a GPU: the usual choice
    assert default_compute_type("cpu") == "int8"


def test_the_cuda_compute_type_is_the_best_that_ctranslate2_says_this_gpu_runs() -> None:
    """CTranslate2's list is the seam: an sm_61 card (GTX 10xx, P40) is offered no float16."""
    volta_and_newer = {"float32", "int8", "int8_float32", "int8_float16", "float16", "bfloat16", "int8_bfloat16"}
    assert default_compute_type("cuda", lambda device: volta_and_newer) == "float16"
    assert default_compute_type("cuda", lambda device: {"float32", "int8", "int8_float32"}) == "int8_float32"
    assert default_compute_type("cuda", lambda device: {"float32"}) == "float32"
    asked = []
    default_compute_type("cuda", lambda device: asked.append(device) or {"float16"})
    assert asked == ["cuda"]


def test_cuda_counts_gpus_by_pci_bus_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    environ: dict[str, str] = {}
    cuda_counts_by_pci_bus(environ)
    assert environ == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    chosen = {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    cuda_counts_by_pci_bus(chosen)
    assert chosen == {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}


def test_tf32_is_off_for_the_whole_run_on_cuda() -> None:
    import torch

    from batch.engine.loading import fix_gpu_numerics

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        fix_gpu_numerics(torch)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_versions_name_the_key_packages() -> None:
    versions = package_versions()
    assert versions["whisperx"].startswith("3.8") and "torch" in versions and "faster-whisper" in versions


def test_redaction_covers_environment_registered_and_shaped_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "my-very-private-token")
    register_secret("token-from-a-mounted-file")
    text = (
        "auth my-very-private-token failed; file token-from-a-mounted-file; "
        "other " + "hf_" + "abcdefghijklmnopqrstuvwxyz012345" + " and " + "AKIA" + "ABCDEFGHIJKLMNOP"
    )
    cleaned = redact(text)
    # Shaped tokens are built from pieces, so secret scanners do not flag this file.
    for secret in (
        "my-very-private-token",
        "token-from-a-mounted-file",
        "hf_" + "abcdefghij",
        "AKIA" + "ABCDEFGHIJKLMNOP",
    ):
        assert secret not in cleaned
    assert describe(RuntimeError(text))["message"] == cleaned


def test_thread_pools_stay_within_the_cpus_the_process_may_use(tmp_path: Path, tiny_en: str) -> None:
    """Given one thread (as a container whose CPU quota is one core, on a host with more), a real run keeps every
    pool at one thread: CTranslate2, torch, and the BLAS/OpenMP pools numpy and torch load (read back with
    threadpoolctl), whatever cores the host shows."""
    speak(ENGLISH, tmp_path / "in" / "a.wav")
    script = f"""
import os, json
from batch import Job, load_settings
settings = load_settings({{"source": {str(tmp_path / "in")!r}, "out": {str(tmp_path / "out")!r},
                          "model": {tiny_en!r}, "device": "cpu", "align": False, "threads": 1}})
report = Job(settings).run()
import torch, threadpoolctl
pools = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
print(json.dumps({{"threads": report.threads, "torch": torch.get_num_threads(), "pools": pools,
                  "succeeded": report.succeeded}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={key: value for key, value in os.environ.items() if not key.endswith("_NUM_THREADS")},
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["succeeded"] == ["a.wav"] and figures["threads"] == 1 and figures["torch"] == 1
    assert figures["pools"] and max(figures["pools"]) == 1


# In a fresh process: malloc set up as `how` says, then, on a new thread (as CTranslate2's worker allocates), a
# 256 MiB block allocated, written and freed twice; printed: that thread's page faults the second time.
REUSE_CHILD = """
import ctypes, json, resource, sys, threading
how, folder = sys.argv[1], sys.argv[2]
tuned = None
if how in ("call", "after-a-thread"):
    from batch.common.runtime import reuse_freed_memory
    running = threading.Event()
    if how == "after-a-thread":
        threading.Thread(target=running.wait, daemon=True).start()
    tuned = reuse_freed_memory()
    running.set()
elif how == "app":
    from batch.cli import app
    app(["status", folder], standalone_mode=False)
elif how == "cli":
    from batch.cli import main
    sys.argv = ["whisperx-batch", "status", folder]
    try:
        main()
    except SystemExit as exit:
        assert exit.code in (0, None), exit.code
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
SIZE, faults = 256 << 20, []
def allocate_twice():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(SIZE)
        libc.memset(block, 1, SIZE)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=allocate_twice)
worker.start()
worker.join()
print(json.dumps({"tuned": tuned, "pages": SIZE // resource.getpagesize(), "faults": faults[1]}))
"""


def _reallocation_faults(how: str, folder: Path, **environ: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run(
        [sys.executable, "-c", REUSE_CHILD, how, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, **environ},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _faults_every_page(figures: dict) -> bool:
    """As glibc does by default: a fresh mapping, every page faulted in (with transparent huge pages always on,
    a mapping faults per 2 MiB instead, so only the setting that was made can be told)."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if path.exists() and "[always]" in path.read_text():
        return True
    return figures["faults"] > 0.9 * figures["pages"]


def test_freed_memory_is_reused_not_faulted_in_again(tmp_path: Path) -> None:
    """A large buffer freed by a worker thread and allocated again costs no page faults once malloc is set up,
    by the call and by the command line's entry point; left as glibc has it, every page faults again."""
    assert _faults_every_page(_reallocation_faults("none", tmp_path))
    called = _reallocation_faults("call", tmp_path)
    assert called["tuned"] is True
    assert called["faults"] < 0.05 * called["pages"]
    from_the_cli = _reallocation_faults("cli", tmp_path)
    assert from_the_cli["faults"] < 0.05 * from_the_cli["pages"]


def test_malloc_is_left_alone_when_tuned_by_the_user_or_too_late(tmp_path: Path) -> None:
    """Left alone, and said so: with the user's own malloc settings, and once another thread runs (its arena
    would keep taking the large blocks the tuning is for)."""
    for environ in ({"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}):
        mine = _reallocation_faults("call", tmp_path, **environ)
        assert mine["tuned"] is False and _faults_every_page(mine)
    late = _reallocation_faults("after-a-thread", tmp_path)
    assert late["tuned"] is False and _faults_every_page(late)


def test_the_app_run_in_process_keeps_the_callers_malloc(tmp_path: Path) -> None:
    """The tuning is the program's (main), not the app's: a program that runs the app in-process, as these tests
    do, keeps its malloc."""
    assert _faults_every_page(_reallocation_faults("app", tmp_path))


FREED_BLOCK_RSS = """
import ctypes, json, sys
from batch.common.runtime import large_blocks_mapped, reuse_freed_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def kept_after_free(size=256 << 20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # every page touched
    before = rss()
    libc.free(block)
    return (rss() - before + size) / size  # 1.0: all of it still resident; 0.0: all handed back

reused = reuse_freed_memory() if sys.argv[1] == "reuse" else False
outside = kept_after_free()
with large_blocks_mapped():  # larger than the 256 MiB now free in the heap (that would be reused first)
    inside = kept_after_free(512 << 20)
print(json.dumps({"reused": reused, "outside": outside, "inside": inside}))
"""


@pytest.mark.parametrize("malloc", ["reuse", "glibc"])
def test_pytorch_stages_hand_large_blocks_back_while_the_asr_keeps_its_own(malloc: str) -> None:
    """In a fresh process: under the reuse settings a freed 256 MiB block stays resident (the ASR's buffers,
    reused batch after batch); within large_blocks_mapped a block the free heap cannot hold (wav2vec2's and
    pyannote's activations) gets a mapping of its own and goes back to the kernel when freed, instead of growing
    the heap for good; without the settings both are glibc's, handed back."""
    result = subprocess.run([sys.executable, "-c", FREED_BLOCK_RSS, malloc], capture_output=True, text=True, timeout=60)
    figures = json.loads(result.stdout)
    assert figures["reused"] is (malloc == "reuse")
    assert figures["inside"] < 0.1
    assert (figures["outside"] > 0.9) if malloc == "reuse" else (figures["outside"] < 0.1)


def test_compute_types_asked_in_a_child_are_ctranslate2s_own() -> None:
    import ctranslate2

    from batch.engine.gpu.device import compute_types_in_a_child

    assert set(compute_types_in_a_child("cpu")) == set(ctranslate2.get_supported_compute_types("cpu"))
