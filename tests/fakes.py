"""A fake of the pipeline interface, so the runner's behaviour is tested without a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from batch.common.errors import BatchError
from batch.engine.audio import SAMPLE_RATE
from batch.engine.gpu.oom import raise_if_context_lost
from batch.engine.pipeline import DecodedFile, FileOutcome, PipelineStats

# What PyTorch raises (torch.AcceleratorError, a RuntimeError) after a kernel's illegal memory access: the text
# c10_cuda_check_implementation (libc10_cuda.so) builds around cudaGetErrorString's (libcudart.so.12).
STICKY_CUDA_ERROR = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be "
    "incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)


@dataclass
class FakePipeline:
    """Says "hello KEY" for every file, in batches of `batch_size` files, finishing files in the order given.

    `errors` maps a key to the exception its outcome carries; `stop_errors` maps a key to an exception raised
    out of `process` when that file is reached (a BatchError stops the run). `on_batch` runs before each batch
    (tests send signals or requests from it); it stands for the batch's model call, and what it raises goes through
    the real pipeline's guard (a sticky CUDA error becomes CudaContextLost). Everything the runner asked for is
    recorded.
    """

    batch_size: int = 2
    errors: dict[str, Exception] = field(default_factory=dict)
    stop_errors: dict[str, Exception] = field(default_factory=dict)
    on_batch: Callable[[list[str]], None] = lambda keys: None
    load_error: Exception | None = None
    loads: int = 0
    closes: int = 0
    pulled: list[str] = field(default_factory=list)
    _stats: PipelineStats = field(default_factory=PipelineStats)

    def load(self) -> None:
        if self.load_error is not None:
            raise self.load_error
        if not self.loads:
            self._stats.load_seconds = 0.0
        self.loads += 1

    def stats(self) -> PipelineStats:
        return self._stats

    def close(self) -> None:
        self.closes += 1

    def process(self, files: Iterable[DecodedFile], should_stop: Callable[[], bool]) -> Iterator[FileOutcome]:
        source = iter(files)
        while not should_stop():
            batch = []
            for file in source:
                self.pulled.append(file.key)
                if file.key in self.stop_errors:
                    raise self.stop_errors[file.key]
                batch.append(file)
                if len(batch) == self.batch_size or should_stop():
                    break
            if not batch:
                return
            self._run_model([file.key for file in batch])
            self._stats.asr_batches += 1
            self._stats.asr_items += len(batch)
            for file in batch:
                yield self._outcome(file)

    def _run_model(self, keys: list[str]) -> None:
        """The batch's model call, guarded as the real pipeline's stages guard theirs (batch/engine/asr/chunks.py)."""
        try:
            self.on_batch(keys)
        except BatchError:
            raise
        except Exception as exc:
            raise_if_context_lost(exc)  # every later batch would fail too: the process must go
            raise

    def _outcome(self, file: DecodedFile) -> FileOutcome:
        if file.error is not None:
            return FileOutcome(file, error=file.error)
        if file.key in self.errors:
            return FileOutcome(file, error=self.errors[file.key])
        assert file.audio is not None
        seconds = round(len(file.audio) / SAMPLE_RATE, 3)
        file.stopwatch.add("asr", 0.01)
        segment = {"start": 0.0, "end": seconds, "text": f"hello {file.key}", "avg_logprob": -0.1}
        return FileOutcome(file, transcribed=True, language="en", segments=[segment])


def worker_pipeline(config: object) -> FakePipeline:
    """The fake pipeline of a worker process (the pool's factory "tests.fakes:worker_pipeline").

    The worker's environment, set by the test's worker slots, makes it misbehave as a real worker can:
    FAKE_LOAD_ERROR: its loading raises that message (a GPU that cannot start);
    FAKE_POISON: a batch holding a key that contains this text kills the process (SIGKILL, as the OOM killer);
    FAKE_HANG: a batch holding a key that contains this text stops the process (SIGSTOP: it hangs);
    FAKE_KILL_ONCE: a path; the first batch of any worker kills its process if the path does not exist yet
    (it is created first, so only one worker dies);
    FAKE_BATCH_SECONDS: each batch sleeps this long (files stay in flight);
    FAKE_ALL_READY: FOLDER:N; loading waits until N workers have loaded (a file each in FOLDER), so that every
    worker is there to take files from the start;
    FAKE_CONTEXT_LOST_ONCE: a path; as FAKE_KILL_ONCE, but the batch raises PyTorch's sticky "illegal memory
    access" error (STICKY_CUDA_ERROR), which the pipeline's guard turns into CudaContextLost;
    FAKE_CONTEXT_LOST: a batch holding a key that contains this text raises that error, in every worker;
    FAKE_RAISE: KEY=environment raises an EnvironmentProblem out of `process` when KEY is reached (the run
    stops, exit 3); KEY=defect raises a RuntimeError there (a defect, not the file's own failure).
    """
    import os
    import signal
    import time
    from pathlib import Path

    def first_to_mark(marker: str, keys: list[str]) -> bool:
        """Whether this worker is the one that writes the marker (O_EXCL: two workers' batches at the same
        moment, only one of them)."""
        try:
            handle = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as written:
            written.write(",".join(keys))
        return True

    def on_batch(keys: list[str]) -> None:
        time.sleep(float(os.environ.get("FAKE_BATCH_SECONDS", "0")))
        poison = os.environ.get("FAKE_POISON")
        if poison and any(poison in key for key in keys):
            os.kill(os.getpid(), signal.SIGKILL)
        hang = os.environ.get("FAKE_HANG")
        if hang and any(hang in key for key in keys):
            os.kill(os.getpid(), signal.SIGSTOP)
        marker = os.environ.get("FAKE_KILL_ONCE")
        if marker and first_to_mark(marker, keys):
            os.kill(os.getpid(), signal.SIGKILL)
        lost = os.environ.get("FAKE_CONTEXT_LOST_ONCE")
        if lost and first_to_mark(lost, keys):
            raise RuntimeError(STICKY_CUDA_ERROR)
        poisoned = os.environ.get("FAKE_CONTEXT_LOST")
        if poisoned and any(poisoned in key for key in keys):
            raise RuntimeError(STICKY_CUDA_ERROR)

    from batch.common.errors import EnvironmentProblem

    raising: dict[str, Exception] = {}
    if os.environ.get("FAKE_RAISE"):
        key, _, kind = os.environ["FAKE_RAISE"].partition("=")
        raising[key] = EnvironmentProblem("the GPU fell off the bus") if kind == "environment" else RuntimeError("bug")
    load_error = os.environ.get("FAKE_LOAD_ERROR")
    if os.environ.get("FAKE_ALL_READY"):
        folder, _, count = os.environ["FAKE_ALL_READY"].rpartition(":")
        (Path(folder) / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(Path(folder).iterdir())) < int(count) and time.monotonic() < deadline:
            time.sleep(0.05)
    return FakePipeline(
        on_batch=on_batch, stop_errors=raising, load_error=RuntimeError(load_error) if load_error else None
    )
