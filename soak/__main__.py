"""python -m soak --scenarios 500 --seed 7 [--write-doc]   (a soak, its figures into docs/reliability.md)
python -m soak --seed 7 --scenario 12                      (one scenario replayed, its violations printed)

Exit status: 0 when no scenario violated an invariant, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soak.driver import bench, soak
from soak.figures import DOC, record_failing, write_doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", type=int, default=20, help="how many scenarios to draw from the seed")
    parser.add_argument("--scenario", type=int, default=None, help="replay this one scenario of the seed")
    parser.add_argument("--write-doc", action="store_true", help=f"write the figures into {DOC}")
    parser.add_argument("--record", action="store_true", help="add failing seeds to the regression list")
    parser.add_argument("--workdir", type=Path, default=None, help="keep each scenario's files here")
    args = parser.parse_args(argv)
    indexes = [args.scenario] if args.scenario is not None else range(args.scenarios)
    with bench(args.workdir) as place:
        results = soak(args.seed, indexes, place)
    print(
        f"[soak] {len(results.scenarios)} scenarios, {sum(results.faults.values())} faults injected, "
        f"{sum(results.violations.values())} violations in {len(results.failing)} scenarios",
        file=sys.stderr,
    )
    if args.record:
        record_failing(results)
    if args.write_doc:
        write_doc(results)
    return 1 if results.failing else 0


if __name__ == "__main__":
    sys.exit(main())
