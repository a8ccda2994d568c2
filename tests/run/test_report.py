"""The run report's figures summed from what the engine recorded: each stage's memory records."""

from __future__ import annotations

from batch.common.units import GiB
from batch.engine.gpu.oom import StageMemoryRecord
from batch.run.report import sum_records


def test_the_report_sums_each_stage_memory_records() -> None:
    records = [
        StageMemoryRecord("asr", 16, 16, 16, 0, 30 * GiB, 80 * GiB, 3 * GiB),
        StageMemoryRecord("asr", 16, 16, 4, 2, 5 * GiB, 80 * GiB, None),
        StageMemoryRecord("align", 16, 8, 8, 0, None, None, None),
        StageMemoryRecord("align", 16, 2, 1, 1, 2 * GiB, 80 * GiB, None, failed=True),
    ]
    totals = sum_records(records)
    assert totals["asr"] == {
        "runs": 2,
        "oom_retries": 2,
        "batch_size_used_min": 4,
        "batch_size_used_max": 16,
        "free_bytes_min": 5 * GiB,
        "failed": 0,
    }
    assert totals["align"] == {
        "runs": 2,
        "oom_retries": 1,
        "batch_size_used_min": 1,
        "batch_size_used_max": 8,
        "free_bytes_min": 2 * GiB,
        "failed": 1,
    }
