"""The report page's data: a run's (or a whole DEST's) summary, every file's row, the plots' series and the cost,
as one JSON-ready dict for batch.formats.report_page to render."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from batch.common.errors import redact
from batch.common.version import __version__
from batch.run.manifest import utc_now
from batch.run.page_facts import ROW_COLUMNS, FileFacts, on_gpu
from batch.run.report import RunReport

# Managed speech-to-text services' list prices per audio hour (pre-recorded/batch audio, the first pricing tier,
# US regions, no discounts), as published on their pricing pages when last read: check the source before relying
# on them.
PRICES_AS_OF = "2025-06"
LIST_PRICES: tuple[dict[str, Any], ...] = (
    {
        "service": "AWS Transcribe (batch, tier 1: $0.024/min)",
        "per_audio_hour": 1.44,
        "source": "https://aws.amazon.com/transcribe/pricing/",
    },
    {
        "service": "Google Cloud Speech-to-Text V2 (standard: $0.016/min)",
        "per_audio_hour": 0.96,
        "source": "https://cloud.google.com/speech-to-text/pricing",
    },
    {
        "service": "OpenAI Whisper API ($0.006/min)",
        "per_audio_hour": 0.36,
        "source": "https://openai.com/api/pricing/",
    },
    {
        "service": "Deepgram Nova-3 (pre-recorded, pay as you go: $0.0043/min)",
        "per_audio_hour": 0.258,
        "source": "https://deepgram.com/pricing",
    },
    {
        "service": "AssemblyAI Universal (pre-recorded: $0.15/h)",
        "per_audio_hour": 0.15,
        "source": "https://www.assemblyai.com/pricing",
    },
)

_ALWAYS = ("succeeded", "skipped", "failed")  # counts a run's summary shows even when 0; the others only when not
# The run report's lists of files that got no manifest from this run, and the status their rows show.
_LISTED = (("skipped", "skipped"), ("claimed_elsewhere", "claimed_elsewhere"))


def run_page_data(report: RunReport, files: Sequence[FileFacts], price_per_hour: float | None) -> dict[str, Any]:
    """The page of one run: its report, and the facts of the files it counted (succeeded and failed)."""
    rows = [*files, *_listed_files(report, {facts.key for facts in files})]
    return {
        "kind": "run",
        "title": f"whisperx-batch run {report.run_id}",
        "generated_at": utc_now(),
        "summary": run_summary(report),
        "settings": _settings(report),
        "versions": {"whisperx-batch": __version__, **report.versions},
        "runs": [],
        "columns": list(ROW_COLUMNS),
        "rows": [facts.row() for facts in rows],
        "plots": plots(files, report.started_at, report.stage_seconds),
        "cost": cost(report.wall_seconds, report.audio_seconds, price_per_hour),
    }


def dest_page_data(
    location: str, reports: Sequence[RunReport], files: Sequence[FileFacts], price_per_hour: float | None
) -> dict[str, Any]:
    """The page of a whole DEST: every run report kept, and the latest outcome of every file (its manifest)."""
    reports = sorted(reports, key=lambda report: (report.started_at, report.run_id))
    files = sorted(files, key=lambda facts: facts.key)
    stage_seconds: Counter[str] = Counter()
    for report in reports:
        stage_seconds.update(report.stage_seconds)
    starts = [r.started_at for r in reports] + [f.finished_at for f in files if f.finished_at]
    return {
        "kind": "dest",
        "title": f"whisperx-batch report {location}",
        "generated_at": utc_now(),
        "summary": dest_summary(location, reports, files),
        "settings": _settings(reports[-1]) if reports else [],
        "versions": {"whisperx-batch": __version__, **(reports[-1].versions if reports else {})},
        "runs": [_run_row(report) for report in reports],
        "columns": list(ROW_COLUMNS),
        "rows": [facts.row() for facts in files],
        "plots": plots(files, min(starts, default=""), dict(stage_seconds)),
        "cost": cost(
            sum(r.wall_seconds for r in reports), sum(r.audio_seconds for r in reports), price_per_hour, len(reports)
        ),
    }


def run_summary(report: RunReport) -> list[list[str]]:
    counts = report.counts | {"left for the next run": len(report.left_for_next_run)}
    rtf = report.realtime_factor
    items = [
        ["run", report.run_id],
        ["started", report.started_at],
        ["finished", report.finished_at or "not finished"],
        ["files", ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n or name in _ALWAYS)],
        ["audio hours", f"{report.audio_hours:.3f}"],
        ["wall time", duration(report.wall_seconds)],
        ["realtime factor", f"{rtf:.1f}x" if rtf else "-"],
        ["exit code", _exit(report)],
        ["device", _device(report)],
        ["model loading", duration(report.model_load_seconds) if report.model_load_seconds is not None else "-"],
        ["models busy", f"{report.model_busy_share:.0%}" if report.model_busy_share is not None else "-"],
    ]
    if report.quality is not None:
        q = report.quality
        items.append(["hallucinations", f"{q.segments_dropped} segments dropped, {q.files_to_review} files to review"])
    if (other := report.other_settings.said()) is not None:
        items.append(["other settings", other])
    return items


def dest_summary(location: str, reports: Sequence[RunReport], files: Sequence[FileFacts]) -> list[list[str]]:
    statuses = Counter(facts.status for facts in files)
    audio = sum(facts.audio_seconds or 0.0 for facts in files if facts.status == "succeeded")
    wall = sum(report.wall_seconds for report in reports)
    last = reports[-1] if reports else None
    return [
        ["DEST", location],
        ["files", ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "none"],
        ["audio hours", f"{audio / 3600:.3f}"],
        ["runs kept", str(len(reports))],
        ["wall time of those runs", duration(wall)],
        ["realtime factor of those runs", _ratio(sum(r.audio_seconds for r in reports), wall)],
        ["to review", str(sum(1 for facts in files if facts.review))],
        ["last run", f"{last.run_id}, exit code {_exit(last)}" if last else "none"],
        ["device of the last run", _device(last) if last else "-"],
    ]


def plots(files: Iterable[FileFacts], origin: str, stage_seconds: dict[str, float]) -> dict[str, Any]:
    """The series the page draws: audio hours done over time, time per stage, batch sizes and free GPU memory over
    time (None: no GPU ran), each file's realtime factor, failures by reason."""
    start = _time(origin)
    timed = sorted(
        ((at - start, facts) for facts in files if (at := _time(facts.finished_at)) is not None and start is not None),
        key=lambda pair: pair[0],
    )
    done, progress = 0.0, [[0.0, 0.0]]
    for seconds, facts in timed:
        if facts.status == "succeeded":
            done += facts.audio_seconds or 0.0
            progress.append([round(seconds, 1), round(done / 3600, 4)])
    return {
        "progress": progress if len(progress) > 1 else [],
        "stages": sorted(([stage, round(s, 1)] for stage, s in stage_seconds.items()), key=lambda item: -item[1]),
        "gpu": _gpu_series(timed),
        "realtime": [round(rtf, 2) for _, facts in timed if (rtf := facts.realtime_factor) is not None],
        "failures": Counter(f.failure_type for f in files if f.status == "failed" and f.failure_type).most_common(),
    }


def cost(wall_seconds: float, audio_seconds: float, price_per_hour: float | None, runs: int = 1) -> dict[str, Any]:
    """What the machine time cost per audio hour at the price the user set, beside the managed services' prices."""
    machine_hours, audio_hours = wall_seconds / 3600, audio_seconds / 3600
    per_audio_hour = (
        price_per_hour * machine_hours / audio_hours if price_per_hour is not None and audio_hours else None
    )
    return {
        "price_per_hour": price_per_hour,
        "machine_hours": round(machine_hours, 4),
        "audio_hours": round(audio_hours, 4),
        "runs": runs,
        "per_audio_hour": None if per_audio_hour is None else round(per_audio_hour, 4),
        "list_prices": list(LIST_PRICES),
        "prices_as_of": PRICES_AS_OF,
    }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}" if whole >= 60 else f"{seconds:.1f} s"


def _listed_files(report: RunReport, counted: set[str]) -> list[FileFacts]:
    """Rows for the files the run did not transcribe: skipped, claimed by others, left for the next run."""
    rows = [FileFacts(key, status) for name, status in _LISTED for key in getattr(report, name) if key not in counted]
    rows += [
        FileFacts(f.key, "left_for_next_run", failure=f"{f.error.type}: {redact(f.error.message)}")
        for f in report.left_for_next_run
    ]
    return rows


def _gpu_series(timed: list[tuple[float, FileFacts]]) -> dict[str, list[list[Any]]] | None:
    series: dict[str, list[list[Any]]] = {}
    for seconds, facts in timed:
        for stage, memory in facts.gpu.items():
            series.setdefault(stage, []).append([round(seconds, 1), memory.batch_size, memory.free_gib])
    return series or None


def _settings(report: RunReport) -> list[list[str]]:
    shown = {"device": report.device, "compute_type": report.compute_type, "threads": report.threads}
    shown |= {"batch_size": report.batch_size, "shard": report.shard, **report.settings}
    return [[name, _said(value)] for name, value in shown.items() if value is not None]


def _run_row(report: RunReport) -> list[Any]:
    counts = report.counts
    return [
        report.run_id,
        report.started_at,
        counts["succeeded"],
        counts["failed"],
        counts["skipped"],
        round(report.audio_hours, 3),
        duration(report.wall_seconds),
        report.realtime_factor,
        report.exit_code,
    ]


def _exit(report: RunReport) -> str:
    if report.exit_code is None:
        return "none (the run did not end)"
    said = str(report.exit_code)
    if report.error is not None:
        said += f": {report.error.type}: {redact(report.error.message)}"
    if report.stopped_by_signal is not None:
        said += f" (stopped by signal {report.stopped_by_signal})"
    return said


def _device(report: RunReport) -> str:
    said = " ".join(part for part in (report.device, report.compute_type) if part) or "-"
    if report.threads:
        said += f", {report.threads} threads"
    if report.gpu_device:
        said += f"; {report.gpu_device}"
    workers = [f"{w.name}: {w.detail}" for w in report.workers]
    if workers:
        said += "; workers " + "; ".join(workers)
    if report.gpu and on_gpu(report.device):
        said += "; GPU stages: " + ", ".join(sorted(report.gpu))
    return said


def _ratio(audio_seconds: float, wall_seconds: float) -> str:
    return f"{audio_seconds / wall_seconds:.1f}x" if audio_seconds and wall_seconds else "-"


def _said(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "(none)"
    return str(value)


def _time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
