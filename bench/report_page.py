"""The report page of a 10,000-file DEST (manifests made up, no audio): its size, and how long headless Chromium
takes to load and draw it (the median of --loads fresh loads; the first, cold, load is a warm-up and not counted).

    python -m bench.report_page [--files 10000] [--loads 5]

Prints the figures; the target (issue 37) is under 5 MB and under 2 s. The size is also asserted by
tests/run/test_report_page.py, being deterministic; the time is measured here, where a busy machine shows as
noise in the figures rather than as a failed test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from batch.cli.app import app
from tests.browser import browser_session
from tests.run.report_dests import fill_dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_page", description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="report-page-") as folder:
        dest, page = Path(folder) / "dest", Path(folder) / "page.html"
        fill_dest(dest, args.files, gpu=True)
        result = CliRunner().invoke(app, ["report", str(dest), "--out", str(page), "--price-per-hour", "3"])
        if result.exit_code != 0:
            print(result.output)
            return 1
        with browser_session() as browser:
            browser.open(page)  # warm-up: the browser's own first start
            seconds = [browser.open(page).seconds for _ in range(args.loads)]
        size = page.stat().st_size
    print(f"| files | page size | load and draw, median of {args.loads} (min-max) |")
    print("|---:|---:|---:|")
    print(
        f"| {args.files:,} | {size / 1e6:.2f} MB | {statistics.median(seconds):.2f} s "
        f"({min(seconds):.2f}-{max(seconds):.2f}) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
