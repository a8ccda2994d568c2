"""The report page's HTML from its data: self-contained, and nothing in the data can end its script or add markup."""

from __future__ import annotations

import json
import re

from batch.formats.report_page import embedded_json, report_page


def test_data_that_holds_markup_stays_inside_the_pages_json() -> None:
    hostile = "</script><script>alert(1)</script><!-- & __DATA__ __SCRIPT__"
    page = report_page({"title": hostile, "rows": [[hostile, "failed"]], "name": "bytes-\udcff.wav"})
    assert "<script>alert(1)" not in page and "</script><script>" not in page
    # Text put in is never searched for placeholders again: shown as it is (title, heading, the JSON's two copies).
    assert page.count("__SCRIPT__") == 4 and page.count("function filesTable") == 1
    assert "<title>&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!-- &amp; " in page
    (data,) = re.findall(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
    assert json.loads(data)["rows"][0][0] == hostile and json.loads(data)["name"] == "bytes-\udcff.wav"
    page.encode("utf-8")  # a name that is not UTF-8 is an escape, never a lone surrogate in the file


def test_the_page_fetches_nothing_and_carries_its_style_and_script() -> None:
    page = report_page({"title": "t"})
    assert "default-src 'none'" in page  # the Content-Security-Policy: no request of any kind
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "function filesTable" in page and ".grid th" in page
    assert embedded_json({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'
