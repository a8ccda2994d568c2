"""The soak's figures in docs/reliability.md (the section between its markers is rewritten, the rest kept), and
the list of scenarios that ever failed, which tests/soak replays as regression tests."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from soak.checks import INVARIANTS
from soak.driver import PROJECT, Results

DOC = PROJECT / "docs" / "reliability.md"
FAILING = PROJECT / "soak" / "failing_seeds.json"
BEGIN, END = "<!-- soak figures: begin (written by python -m soak --write-doc) -->", "<!-- soak figures: end -->"


def failing_seeds(path: Path = FAILING) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def record_failing(results: Results, path: Path = FAILING) -> list[dict[str, Any]]:
    """Add the scenarios that failed to the list (each once, with the day it was first seen and what failed)."""
    kept = failing_seeds(path)
    known = {(entry["seed"], entry["scenario"]) for entry in kept}
    today = datetime.date.today().isoformat()
    for played in results.failing:
        if (played.seed, played.index) not in known:
            kept.append(
                {
                    "seed": played.seed,
                    "scenario": played.index,
                    "first_failed": today,
                    "scenario_was": played.description,
                    "violations": played.violations[:8],
                }
            )
    kept.sort(key=lambda entry: (entry["seed"], entry["scenario"]))
    path.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    return kept


def section(results: Results) -> str:
    lines = [
        BEGIN,
        "",
        f"Last soak: seed {results.seed}, {len(results.scenarios)} scenarios, "
        f"{datetime.date.today().isoformat()} (`make soak SCENARIOS={len(results.scenarios)} SEED={results.seed}`).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| scenarios run | {len(results.scenarios)} |",
        f"| scenarios with a violation | {len(results.failing)} |",
        f"| invariant violations | {sum(results.violations.values())} |",
        f"| files lost | {results.files_lost} |",
        f"| files done twice | {results.done_twice} |",
        f"| faults injected | {sum(results.faults.values())} |",
        "",
        "| fault kind | injected |",
        "|---|---:|",
        *[f"| {kind} | {count} |" for kind, count in sorted(results.faults.items())],
        "",
        "| invariant | violations |",
        "|---|---:|",
        *[f"| {name} | {results.violations.get(name, 0)} |" for name in INVARIANTS],
        "",
    ]
    if results.skipped:
        lines += ["Not played: " + "; ".join(sorted(results.skipped)), ""]
    failing = failing_seeds()
    lines += ["Scenarios that ever failed (replayed by `tests/soak/test_soak.py`; `make soak SEED=s SCENARIO=k`):", ""]
    lines += [f"- seed {e['seed']} scenario {e['scenario']}: {e['scenario_was']}" for e in failing] or ["- none"]
    lines += ["", END]
    return "\n".join(lines)


def write_doc(results: Results, path: Path = DOC) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:start] + section(results) + text[end:], encoding="utf-8")
