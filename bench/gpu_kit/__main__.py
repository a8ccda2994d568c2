"""`python -m bench.gpu_kit pack DIR | install WHEELS SITE | step NAME OUTDIR | report OUTDIR` (see the package's
docstring)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_kit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="write the kit into DIR (here, with PyPI reachable)")
    pack.add_argument("dir", type=Path)
    pack.add_argument("--wheel-cache", type=Path, default=None, help="where downloaded wheels are kept between packs")
    install = commands.add_parser("install", help="unpack the wheels in WHEELS into SITE, without pip (run.sh)")
    install.add_argument("wheels", type=Path)
    install.add_argument("site", type=Path)
    step = commands.add_parser("step", help="run one step, writing OUTDIR/steps/NAME.json (run.sh calls it)")
    step.add_argument("name")
    step.add_argument("out", type=Path)
    report = commands.add_parser("report", help="merge the steps into OUTDIR/gpu_kit.json and gpu_kit.md")
    report.add_argument("out", type=Path)
    report.add_argument("--budget", type=float, default=None, help="seconds run.sh had in all")
    args = parser.parse_args(argv)

    if args.command == "pack":
        from bench.gpu_kit.pack import PackTooLarge, pack_kit

        try:
            summary = pack_kit(args.dir, wheel_cache=args.wheel_cache)
        except PackTooLarge as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(summary)
        return 0
    if args.command == "install":
        from bench.gpu_kit.install import main as install_main

        return install_main(args.wheels, args.site)
    if args.command == "step":
        from bench.gpu_kit.steps import run_step

        return run_step(args.name, args.out)
    from bench.gpu_kit.report import write_report

    print(write_report(args.out, budget_seconds=args.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
