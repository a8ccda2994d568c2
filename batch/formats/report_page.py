"""The run report page: one self-contained HTML file (styles, script and data inline, nothing fetched) from the
page's data (batch.run.page_data). The page draws its tables and plots from the data with its own script."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

_PLACEHOLDER = re.compile(r"__(TITLE|STYLE|SCRIPT|DATA)__")
# Inside <script>, "</script>" or "<!--" in a string would end or change the element: JSON's \u escapes keep
# every <, > and & out of the text (they stay the same characters once parsed).
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


@cache
def _asset(name: str) -> str:
    return resources.files("batch.formats").joinpath("page", name).read_text(encoding="utf-8")


def embedded_json(data: Mapping[str, Any]) -> str:
    """`data` as JSON that can stand inside a <script> element; ASCII only, so a file name that is not valid UTF-8
    (a lone surrogate) stays an escape and never breaks the page's encoding."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def report_page(data: Mapping[str, Any]) -> str:
    """The page's HTML for `data` (title, summary, rows, plots, cost: see batch.run.page_data)."""
    return self_contained_page("report", data, "whisperx-batch report")


def self_contained_page(name: str, data: Mapping[str, Any], title: str, styles: tuple[str, ...] = ()) -> str:
    """The page `name` (page/NAME.html) with its style (report.css, then `styles`), script (page/NAME.js) and
    `data` inline: everything it shows is drawn by its script from the data, as text."""
    parts = {
        "TITLE": html.escape(str(data.get("title", title))),
        "STYLE": "\n".join(_asset(style) for style in ("report.css", *styles)),
        "SCRIPT": _asset(f"{name}.js"),
        "DATA": embedded_json(data),
    }
    # One pass: text put in (a title holding "__DATA__") is never searched for placeholders again.
    return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], _asset(f"{name}.html"))
