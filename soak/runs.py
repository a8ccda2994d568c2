"""One run of the real command line (`python -m batch run ...`) as a process the soak can watch and hurt: its
JSON log lines read as they come (to know when its models are loaded or its first file is counted), signals and
kill -9 for it or for one of its worker processes, and what it left: exit code, log, run report, metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_DEADLINE_SECONDS = 240.0  # a run on a handful of seconds of audio that has not ended by then is stuck


@dataclass
class RunResult:
    tag: str
    round: int
    final: bool
    command: list[str]
    exit_code: int | None = None
    killed: bool = False  # kill -9 of the run itself (its report and last metrics are not expected)
    signals: list[str] = field(default_factory=list)  # what was sent, in order
    worker_faults: list[str] = field(default_factory=list)
    stuck: bool = False  # still running past the deadline
    lines: list[str] = field(default_factory=list)  # stderr
    stdout: str = ""
    run_id: str | None = None
    report: dict[str, Any] | None = None
    metrics_text: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0

    def records(self) -> list[dict[str, Any]]:
        """The log's JSON records (lines that are not JSON are left out)."""
        records = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def began(self) -> bool:
        """Whether the run began: its start line ("run RUN_ID: SOURCE -> DEST ...") logged, after the start-up
        checks. A run id alone does not say so: every line carries it, a signal's warning during the checks too."""
        return any(
            r.get("logger") == "batch.run.job" and str(r.get("message", "")).startswith(f"run {r.get('run_id')}:")
            for r in self.records()
        )

    def file_events(self, status: str) -> list[str]:
        return [r.get("key") or "" for r in self.records() if r.get("event") == "file" and r.get("status") == status]


class Run:
    """A started run: its process, its log as it comes, and the anchors the scenario's faults wait for."""

    def __init__(self, result: RunResult, env: dict[str, str], cwd: Path):
        self.result = result
        self.anchors = {name: threading.Event() for name in ("start", "loaded", "file", "ended")}
        self.process = subprocess.Popen(
            result.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        result.started_at = time.monotonic()
        self.anchors["start"].set()
        self._reader = threading.Thread(target=self._read, name=f"log-{result.tag}", daemon=True)
        self._reader.start()
        self._stdout: list[bytes] = []
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            self.result.lines.append(line)
            if "models loaded" in line:
                self.anchors["loaded"].set()
            if '"event": "file"' in line:
                self.anchors["file"].set()
            if self.result.run_id is None and line.startswith("{"):
                with contextlib.suppress(ValueError, AttributeError):
                    self.result.run_id = json.loads(line).get("run_id")

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout.append(self.process.stdout.read())

    def send(self, signum: int) -> None:
        if self.process.poll() is None:
            self.result.signals.append(signal.Signals(signum).name)
            if signum == signal.SIGKILL:
                self.result.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def workers(self) -> list[int]:
        """The worker processes of this run (they run in sessions of their own, so they are found by the tag in
        their environment, which they inherit)."""
        return [pid for pid in tagged_processes(self.result.tag) if pid != self.process.pid]

    def wait(self, deadline: float) -> None:
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.result.stuck = True
            self.send(signal.SIGKILL)
            self.process.wait()
        self._reader.join(10)
        self._out_reader.join(10)
        self.result.exit_code = self.process.returncode
        self.result.ended_at = time.monotonic()
        self.result.stdout = b"".join(self._stdout).decode("utf-8", "backslashreplace")
        self.anchors["ended"].set()


# Each process a soak starts carries its soak's pid too: two soaks on one machine (two checkouts replaying one
# seed) never find, nor kill, each other's runs.
SOAK_OWNER = f"{os.getpid()}"


def tagged_processes(tag: str) -> list[int]:
    """This soak's processes whose environment holds SOAK_RUN_TAG=tag."""
    return _processes_with(f"SOAK_RUN_TAG={tag}\0".encode())


def kill_tagged(prefix: str) -> list[int]:
    """kill -9 every process of this soak left over from a scenario (its runs' tags start with `prefix`); the pids
    killed."""
    killed = []
    for pid in _processes_with(f"SOAK_RUN_TAG={prefix}".encode()):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            continue
    return killed


def _processes_with(needle: bytes) -> list[int]:
    owner = f"SOAK_OWNER={SOAK_OWNER}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ and owner in environ:
            found.append(int(entry.name))
    return found


def python() -> str:
    return sys.executable
