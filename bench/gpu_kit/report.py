"""OUTDIR/gpu_kit.json and OUTDIR/gpu_kit.md from the steps' records (OUTDIR/steps/NAME.json) and run.sh's exit
codes (NAME.rc): a step with no record timed out (124) or crashed, and says so with the end of its log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.gpu_kit.steps import STEPS, no_gpu_reason

TIMED_OUT = (124, 137)
#: the steps that measure memory per batch item and throughput, in the tables' order
MEASURED = ("vad", "align", "align_large", "embed", "asr")


def step_record(out: Path, name: str) -> dict[str, Any]:
    steps = out / "steps"
    path = steps / f"{name}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            return {"step": name, "ok": False, "error": f"unreadable record: {exc}"}
    rc_file = steps / f"{name}.rc"
    if not rc_file.exists():
        return {"step": name, "ok": False, "skipped": "not run (run.sh's 8 minutes were spent)"}
    rc = int(rc_file.read_text().strip() or -1)
    log = out / "logs" / f"{name}.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    if rc in TIMED_OUT:
        error = f"timed out after {STEPS[name].timeout} s"
    else:
        error = f"the step's process ended with exit code {rc}"
    return {"step": name, "ok": False, "error": error, "log_tail": tail}


def status(record: dict[str, Any]) -> str:
    if record.get("skipped"):
        return f"skipped: {record['skipped']}"
    if not record.get("ok"):
        return f"failed: {record.get('error', '?')}"
    result = record.get("result") or {}
    if isinstance(result, dict) and result.get("skipped"):
        return f"skipped: {result['skipped']}"
    return "ok"


def collect(out: Path, budget_seconds: float | None = None) -> dict[str, Any]:
    kit_info = out / "steps" / "kit.json"
    install = out / "steps" / "install.txt"
    steps = {name: step_record(out, name) for name in STEPS}
    cuda = steps["cuda"].get("result") or {}
    return {
        "kit": json.loads(kit_info.read_text()) if kit_info.exists() else None,
        "no_gpu": no_gpu_reason(out),
        "gpu": cuda.get("name"),
        "budget_seconds": budget_seconds,
        "install": install.read_text().splitlines() if install.exists() else None,
        "steps": steps,
    }


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:220]


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]


def result_of(data: dict[str, Any], name: str) -> dict[str, Any]:
    record = data["steps"].get(name, {})
    result = record.get("result") if record.get("ok") else None
    return result if isinstance(result, dict) else {}


def memory_rows(data: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name in MEASURED:
        memory = result_of(data, name).get("memory")
        if isinstance(memory, dict) and "rows" in memory:
            extra = memory.get("warm_up_extra_mib") or {}
            rows.append(
                [
                    name,
                    result_of(data, name).get("item_seconds", 30.0),
                    memory.get("torch_mib_per_item"),
                    memory.get("nvml_mib_per_item"),
                    memory.get("sizer_mib_per_item"),
                    memory.get("measured_over_sizer"),
                    memory.get("nvml_fixed_mib"),
                    extra.get("nvml"),
                ]
            )
    return rows


def throughput_rows(data: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name in MEASURED:
        for row in result_of(data, name).get("throughput") or []:
            if isinstance(row, dict):
                rows.append([name, row["batch"], row["ms_per_batch"], row["items_per_s"], row["audio_x_realtime"]])
    return rows


def oom_rows(data: dict[str, Any]) -> list[list[Any]]:
    trials = dict(result_of(data, "oom"))
    asr = result_of(data, "asr").get("oom")
    if isinstance(asr, dict):
        trials["asr"] = asr
    rows = []
    for name, trial in trials.items():
        if not isinstance(trial, dict) or "first_file" not in trial:
            continue
        first, following = trial["first_file"], trial["next_file"]
        record = first.get("record") or {}
        rows.append(
            [
                name,
                " ".join(str(size) for size in first["tried"]),
                first["recovered"],
                record.get("batch_size_used"),
                first["seconds"],
                " ".join(str(size) for size in following["tried"]),
                trial.get("left_allocated_mib"),
                first.get("first_error"),
            ]
        )
    return rows


def ct2_lines(ct2: dict[str, Any]) -> list[str]:
    """CTranslate2 on CUDA: which way works, each attempt's output, and what the JIT cost (`asr.jit_figures`)."""
    if not ct2:
        return []
    lines = ["", "## CTranslate2 on CUDA", "", f"- works: {ct2.get('works')}"]
    converter = ct2.get("converter")
    if isinstance(converter, dict):
        same = "the model it makes under the tested versions" if converter.get("as_tested") else "ANOTHER model"
        lines.append(f"- converter under transformers {converter.get('transformers')}: {same}")
    for way in ("as_is", "cuda13_shim", "from_cache"):
        if isinstance(ct2.get(way), dict):
            lines.append(f"- {way} ({ct2[way].get('seconds')} s): {_cell(ct2[way].get('output'))}")
    jit = ct2.get("jit")
    if isinstance(jit, dict):
        cache = jit.get("cache") or {}
        header = ["JIT", "cold first decode s", "from cache s", "JIT s", "cold run s", "cached run s"]
        row = [
            f"CTranslate2 {jit.get('compute_type')}",
            jit.get("cold_first_decode_s"),
            jit.get("cached_first_decode_s"),
        ]
        row += [jit.get("jit_s"), jit.get("cold_run_s"), jit.get("cached_run_s")]
        lines += ["", *table([*header, "cache files", "cache MiB"], [[*row, cache.get("files"), cache.get("mib")]])]
    return lines


def sticky_lines(sticky: dict[str, Any]) -> list[str]:
    """The sticky step: the lost context's error and what the project made of it, then who still computes."""
    if not sticky:
        return []
    lost, after = sticky.get("lost") or {}, (sticky.get("lost") or {}).get("next_call") or {}
    lines = ["", "## A sticky CUDA error in one process", ""]
    lines.append(f"- error: {_cell(lost.get('error') or lost.get('output'))}")
    lines.append(f"- `is_context_lost`: {lost.get('context_lost')}; raised: {_cell(lost.get('raised'))}")
    lines.append(f"- the next CUDA call in that process failed: {after.get('failed')} ({_cell(after.get('error'))})")
    lines.append(f"- another process's context on the card still computes: {(sticky.get('bystander') or {}).get('ok')}")
    fresh = sticky.get("fresh") or {}
    lines.append(f"- a fresh process computes: {fresh.get('ok')}, ready in {fresh.get('ready_s')} s")
    return lines


ALLOC_COLUMNS = (
    ("peak_reserved_mib", "peak reserved MiB"),
    ("peak_allocated_mib", "peak allocated MiB"),
    ("reserved_over_allocated", "reserved/allocated"),
    ("nvml_peak_mib", "NVML peak MiB"),
    ("wall_s", "wall s"),
    ("out_of_memory", "out of memory"),
    ("alloc_retries", "alloc retries"),
    ("expandable_segments", "expandable"),
)


def alloc_lines(result: dict[str, Any]) -> list[str]:
    """torch's allocator as it is against expandable segments on the same batches, side by side, and the choice."""
    runs = result.get("runs")
    if not isinstance(runs, dict):
        return []
    workload = result.get("workload") or {}
    lines = ["", "## torch's allocator on padded batches of varying length (issue 35 item 8)", ""]
    lines.append(
        f"- {workload.get('batches')} batches of 1 to {workload.get('max_batch')} segments of "
        f"{workload.get('min_seconds')} to {workload.get('max_seconds')} s (seed {workload.get('seed')}), "
        f"{result.get('model')}, each setting in its own process"
    )
    rows = []
    for name, run in runs.items():
        if run.get("ok"):
            rows.append([name, run.get("conf") or "(unset)", *(run.get(key) for key, _ in ALLOC_COLUMNS)])
        else:
            rows.append([name, run.get("conf") or "(unset)", f"failed: {run.get('error')}"])
    lines += ["", *table(["run", "PYTORCH_CUDA_ALLOC_CONF", *(title for _, title in ALLOC_COLUMNS)], rows)]
    choice = result.get("verdict") or {}
    lines += [
        "",
        f"- choice: **{choice.get('choice') or 'none'}** ({choice.get('why')})",
        f"- rule: {choice.get('rule')}",
    ]
    return lines


def whisperx_lines(result: dict[str, Any]) -> list[str]:
    """The project's own pipeline: what it did, how busy the GPU was, its peak memory, and the cache contest."""
    run = result.get("run")
    if not isinstance(run, dict):
        return []
    stats = result.get("stats") or {}
    lines = ["", "## The project's WhisperxPipeline (its 3 threads, one BatchSizer)", ""]
    lines += table(
        [
            "files",
            "audio s",
            "s",
            "x realtime",
            "ASR batches",
            "fill",
            "words timed",
            "GPU busy %",
            "NVML peak MiB",
            "torch peak MiB",
        ],
        [
            [
                f"{run.get('transcribed')}/{run.get('files')}",
                run.get("audio_seconds"),
                run.get("seconds"),
                run.get("x_realtime"),
                stats.get("asr_batches"),
                stats.get("batch_fill"),
                f"{run.get('timed_words')}/{run.get('words')}",
                result.get("gpu_busy_percent"),
                result.get("nvml_peak_used_mib"),
                result.get("torch_peak_reserved_mib"),
            ]
        ],
    )
    lines.append(f"- stage seconds: {run.get('stage_seconds')}; alignment: {result.get('alignment')}")
    if run.get("errors"):
        lines.append(f"- errors: {_cell('; '.join(run['errors']))}")
    contest = result.get("cache_contest") or {}
    if contest.get("skipped") or contest.get("error"):
        lines.append(f"- torch's cache against CTranslate2: {contest.get('skipped') or contest.get('error')}")
    elif contest:
        before, after = contest.get("before") or {}, contest.get("after") or {}
        lines.append(
            f"- torch's cache against CTranslate2: {before.get('torch_cached_mib')} MiB cached, "
            f"{before.get('device_free_mib')} MiB free on the device; recovered: {contest.get('recovered')}, "
            f"ASR sizes {contest.get('asr_sizes_used')}, {contest.get('asr_oom_retries')} out-of-memory retries; "
            f"after: {after.get('torch_cached_mib')} MiB cached, {after.get('device_free_mib')} MiB free"
        )
        errors = (contest.get("run") or {}).get("errors")
        if errors:
            lines.append(f"- errors: {_cell('; '.join(errors))}")
    return lines


def markdown(data: dict[str, Any]) -> str:
    gpu = data["gpu"] or "no GPU"
    lines = [f"# GPU kit: {gpu}", ""]
    if data["no_gpu"]:
        lines += [f"**no GPU**: {data['no_gpu']}", ""]
    lines += table(
        ["step", "what", "status", "seconds"],
        [[name, STEPS[name].title, status(record), record.get("seconds")] for name, record in data["steps"].items()],
    )
    sections = [
        (
            "Memory per batch item (MiB, fitted after a warm-up batch)",
            ["stage", "item s", "torch", "NVML", "sizer", "measured/sizer", "NVML fixed", "warm-up extra"],
            memory_rows,
        ),
        ("Throughput", ["stage", "batch", "ms/batch", "items/s", "x realtime"], throughput_rows),
        (
            "Out-of-memory back-off (3 GiB left free)",
            ["stage", "sizes tried", "recovered", "size used", "s", "next file tried", "left MiB", "first error"],
            oom_rows,
        ),
    ]
    for title, header, rows_of in sections:
        rows = rows_of(data)
        if rows:
            lines += ["", f"## {title}", "", *table(header, rows)]
    device = result_of(data, "device")
    if device:
        auto, cuda = device.get("auto", {}), device.get("cuda", {})
        lines += ["", "## Device selection", "", f"- `--device auto` -> {auto.get('device')}: {auto.get('log')}"]
        lines += [
            f"- `--device cuda` -> {cuda.get('device')} {cuda.get('error') or ''}",
            f"- problem: {device.get('problem')}",
        ]
    lines += alloc_lines(result_of(data, "alloc"))
    lines += ct2_lines(result_of(data, "ct2"))
    if data.get("install"):
        lines += ["", "## Wheels", "", *(f"- {line}" for line in data["install"])]
    lines += sticky_lines(result_of(data, "sticky"))
    pipeline = result_of(data, "pipeline")
    if pipeline.get("stages"):
        lines += ["", f"## GPU busy share: {pipeline.get('gpu_busy_percent')} % over {pipeline.get('seconds')} s", ""]
        lines += table(
            ["stage", "s", "busy %"], [[k, v["seconds"], v["gpu_busy_percent"]] for k, v in pipeline["stages"].items()]
        )
    lines += whisperx_lines(result_of(data, "whisperx"))
    return "\n".join(lines) + "\n"


def write_report(out: Path, budget_seconds: float | None = None) -> str:
    """Write both files; returns a line saying where, and the GPU (or why there is none)."""
    data = collect(out, budget_seconds)
    (out / "gpu_kit.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "gpu_kit.md").write_text(markdown(data))
    what = data["gpu"] or f"no GPU ({data['no_gpu']})"
    return f"{out / 'gpu_kit.json'}, {out / 'gpu_kit.md'}: {what}"
