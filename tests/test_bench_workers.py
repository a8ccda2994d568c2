"""bench.bench_workers: the workers table rendered from given figures, its section of results.md, the figures read
from run reports, and bench.tools' process-tree memory on a real parent with a child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import bench_workers
from bench.corpus import Corpus, Recording
from bench.tools import run_measured, tree_rss_bytes

CORPUS = Corpus("short", Path("audio"), tuple(Recording(f"vm{i:02d}.wav", 10.0, "hello") for i in range(30)))


def record(wall: float, workers: list[tuple[str, int, float]], tree: int | None = None) -> dict[str, Any]:
    return {
        "wall_seconds": wall,
        "wer_percent": 18.0,
        "missing_transcripts": 0,
        "peak_rss_bytes": 2**30,
        "tree_peak_rss_bytes": tree,
        "load_average": [0.1, 0.2],
        "workers": [
            {"name": name, "files": files, "restarts": 0, "problem": None, "busy_share": share}
            for name, files, share in workers
        ],
    }


def result(a_walls: list[float], b_walls: list[float]) -> dict[str, Any]:
    return {
        "audio_seconds": 300.0,
        "files": 30,
        "runs": {
            "1": [record(wall, [("in-process", 30, 0.99)], tree=2**30) for wall in a_walls],
            "2": [
                record(wall, [("cpu0", 15 + n, 0.96), ("cpu1", 15 - n, 0.92)], tree=2 * 2**30)
                for n, wall in enumerate(b_walls)
            ],
        },
    }


def test_table_gives_runs_means_speed_up_memory_and_workers() -> None:
    lines = bench_workers.render_corpus(CORPUS, result([30.0, 32.0], [25.0, 27.0]), threads=2)

    assert lines[0] == "## SHORT: 30 recordings, 5.0 min of audio (10-10 s each)"
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header[:4] == ["configuration", "run 1 s", "run 2 s", "mean s"]
    assert "peak RSS, process tree" in header
    assert lines[3].count("|") == lines[2].count("|")
    a = dict(zip(header, (cell.strip() for cell in lines[4].strip("|").split("|")), strict=True))
    b = dict(zip(header, (cell.strip() for cell in lines[5].strip("|").split("|")), strict=True))
    assert a["configuration"] == "1 worker x 2 threads (`--workers 1`)"
    assert b["configuration"] == "2 workers x 1 thread (`--workers 2`)"
    assert (a["mean s"], b["mean s"]) == ("31.0", "26.0")
    assert (a["x realtime"], b["x realtime"]) == ("9.7", "11.5")
    speed_up = "speed-up over 1 worker x 2 threads"
    assert (a[speed_up], b[speed_up]) == ("1.00x", "1.19x")
    assert (a["peak RSS, largest process"], b["peak RSS, process tree"]) == ("1.00 GiB", "2.00 GiB")
    assert (a["files per worker"], b["files per worker"]) == ("30 / 30", "15+15 / 16+14")
    assert (a["busy per worker"], b["busy per worker"]) == ("99 %", "96 + 92 %")
    assert lines[-1].startswith("Verdict on SHORT: 2 workers x 1 thread against 1 worker x 2 threads: **1.192x**")
    assert "floor >= 0.95x (not a regression): yes" in lines[-1]


def test_verdict_fails_below_the_floor_and_passes_at_it() -> None:
    below = bench_workers.render_corpus(CORPUS, result([30.0], [31.7]), threads=2)[-1]
    assert "**0.946x**" in below and "(not a regression): **no**" in below and "1 run each" in below
    at = bench_workers.render_corpus(CORPUS, result([30.0], [31.5]), threads=2)[-1]
    assert "**0.952x**" in at and "(not a regression): yes" in at


def test_worker_restarts_and_problems_are_listed() -> None:
    figures = result([30.0], [25.0])
    figures["runs"]["2"][0]["workers"][1].update(restarts=1, problem="killed by signal 9")
    lines = bench_workers.render_corpus(CORPUS, figures, threads=2)
    assert "- 2 workers x 1 thread, run 1: worker cpu1 restarted 1 times, left the run: killed by signal 9" in lines


def test_section_is_appended_then_replaced_in_place() -> None:
    compare = "# whisperx-batch vs the whisperx command line\n\ntables\n\n# asr\n\nmore\n"
    first = bench_workers.replace_section(compare, "# workers: old\n\nold table\n")
    assert first == compare + "\n# workers: old\n\nold table\n"
    later = first + "\n# other\n\nkept\n"
    second = bench_workers.replace_section(later, "# workers: new\n\nnew table\n")
    assert second == compare + "\n# workers: new\n\nnew table\n\n# other\n\nkept\n"
    assert bench_workers.replace_section("", "# workers: x\n") == "# workers: x\n"


def test_worker_figures_from_a_pool_run_and_an_in_process_run() -> None:
    pool = {
        "wall_seconds": 22.0,
        "model_load_seconds": 2.0,
        "workers": [
            {"name": "cpu0", "files": 16, "restarts": 0, "busy_seconds": 19.0},
            {"name": "cpu1", "files": 14, "restarts": 1, "busy_seconds": 18.0, "problem": "died"},
        ],
    }
    assert bench_workers.worker_figures(pool) == [
        {"name": "cpu0", "files": 16, "restarts": 0, "problem": None, "busy_share": 0.95},
        {"name": "cpu1", "files": 14, "restarts": 1, "problem": "died", "busy_share": 0.9},
    ]
    alone = {"wall_seconds": 12.0, "model_load_seconds": 2.0, "model_seconds": 9.9, "succeeded": ["a", "b"]}
    assert bench_workers.worker_figures(alone) == [
        {"name": "in-process", "files": 2, "restarts": 0, "problem": None, "busy_share": 0.99}
    ]


CHILD_HOLDS = 300 * 2**20
PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "b = bytearray({CHILD_HOLDS}); b[::4096] = b'x' * len(b[::4096]); \
import time; time.sleep(1.5)"])
held = bytearray({CHILD_HOLDS}); held[::4096] = b"x" * len(held[::4096])
child.wait()
"""


def test_process_tree_memory_sums_the_parent_and_its_child(tmp_path: Path) -> None:
    measured = run_measured([sys.executable, "-c", PARENT], tmp_path / "log", tmp_path / "out", timeout=60, tree=True)
    assert measured.tree_peak_rss_bytes is not None
    # Both held it at once; two small interpreters besides (wait4's figure is no check here: a process's peak
    # carries over fork and exec, so it is at least this test process's own).
    assert 2 * CHILD_HOLDS <= measured.tree_peak_rss_bytes < 2 * CHILD_HOLDS + 100 * 2**20
    assert run_measured([sys.executable, "-c", "pass"], tmp_path / "log", tmp_path / "out").tree_peak_rss_bytes is None


def test_tree_memory_of_a_process_that_is_gone_is_unknown() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert tree_rss_bytes(process.pid) is None
    assert (tree_rss_bytes(os.getpid()) or 0) > 0
