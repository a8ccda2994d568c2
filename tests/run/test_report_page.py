"""The run report page in a real browser (headless Chromium, the network off: tests/browser.py): each run's page
beside its run report, and `whisperx-batch report DEST` for a whole DEST, folder or S3. The page must fetch
nothing, log no error, show every file once through its pager, sort and filter, draw its plots, and show text
that holds markup as text."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser import Browser
from tests.run.report_dests import HOSTILE_KEY, HOSTILE_REASON, fill_dest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
PLOTS_WITH_GPU = (
    "Audio hours done",
    "Time per stage (summed over files)",
    "Batch size per stage (GPU)",
    "Free GPU memory before each stage",
    "Realtime factor per file",
    "Failures by reason",
)
DRAWN = """return [...document.querySelectorAll('#plots figure')].map(figure => [
    figure.querySelector('figcaption').textContent,
    [...figure.querySelectorAll('svg path:not(.axis)')].filter(path => path.getAttribute('d').length > 4).length,
    figure.querySelector('p') ? figure.querySelector('p').textContent : null])"""
ROWS = (
    "return [...document.querySelectorAll('#files tbody tr')].map(row => [...row.cells].map(cell => cell.textContent))"
)


def page_data(page: Path) -> dict[str, Any]:
    """The JSON the page draws from (its inline <script type="application/json">)."""
    text = page.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1))


def every_row(browser: Browser) -> list[list[str]]:
    """The table's rows, page after page, through the pager's next button."""
    rows = browser.run(ROWS)
    while not browser.run("return document.getElementById('next').disabled"):
        browser.driver.find_element(By.ID, "next").click()
        rows += browser.run(ROWS)
    return rows


def clean(loaded: Any) -> None:
    assert loaded.errors == [], loaded.errors  # no console error, no failed load, no CSP refusal
    assert loaded.off_disk == [], loaded.off_disk  # nothing asked of the network
    assert loaded.requests and all(url.startswith("file:") for url in loaded.requests)


def test_a_dest_page_shows_every_file_once_sorts_filters_and_draws_its_plots(cli, browser: Browser, tmp_path) -> None:
    dest = tmp_path / "dest"
    keys = fill_dest(dest, 250, gpu=True)
    result = cli("report", dest, "--price-per-hour", "2.5")
    assert result.exit_code == 0, result.stderr
    page = dest / "_runs" / "index.html"
    assert f"report page written: {page}" in result.stdout

    loaded = browser.open(page)
    clean(loaded)
    assert browser.run("return window.__ran") is None  # the name and the reason holding markup were not run
    rows = every_row(browser)
    assert sorted(row[0] for row in rows) == sorted(keys)  # one row per file, HOSTILE_KEY shown as its text
    assert any(row[7].endswith(HOSTILE_REASON) for row in rows)
    drawn = browser.run(DRAWN)
    assert [caption for caption, _, _ in drawn] == list(PLOTS_WITH_GPU)
    assert all(paths >= 1 for _, paths, _ in drawn), drawn
    assert browser.run("return document.querySelectorAll('#cost svg path').length") == 6  # this DEST and 5 services
    assert "$2.5 an hour" in browser.run("return document.getElementById('cost-note').textContent")
    assert "GPU 0 (NVIDIA L4, 22.0 GiB, GPU-0a1b)" in browser.run(
        "return document.getElementById('summary').textContent"
    )
    browser.screenshot("report-dest.png", whole_page=True)

    browser.driver.find_element(By.ID, "first").click()
    duration = browser.driver.find_element(By.XPATH, "//table[@id='files']//th[text()='duration (s)']")
    duration.click()
    duration.click()  # descending
    durations = [float(row[2]) for row in browser.run(ROWS) if row[2]]
    assert durations == sorted(durations, reverse=True) and durations[0] == 190.0

    Select(browser.driver.find_element(By.ID, "status")).select_by_value("failed")
    failed = every_row(browser)
    assert (
        failed and {row[1] for row in failed} == {"failed"} and len(failed) == sum(1 for i in range(250) if i % 7 == 6)
    )
    browser.driver.find_element(By.ID, "filter").send_keys("FileTimeout")
    assert {row[7].split(":")[0] for row in every_row(browser)} == {"FileTimeout"}
    Select(browser.driver.find_element(By.ID, "status")).select_by_value("")
    browser.driver.find_element(By.ID, "filter").clear()
    browser.driver.find_element(By.ID, "filter").send_keys("call-00010.wav")
    assert [row[0] for row in browser.run(ROWS)] == ["calls/000/call-00010.wav"]
    assert browser.run("return document.getElementById('count').textContent") == "1 of 250 files"
    assert browser.log() == []


def test_without_a_gpu_or_a_price_the_page_says_so(cli, browser: Browser, tmp_path) -> None:
    dest = tmp_path / "dest"
    fill_dest(dest, 12, gpu=False)
    out = tmp_path / "pages" / "dest.html"
    assert cli("report", dest, "--out", out).exit_code == 0
    assert not (dest / "_runs" / "index.html").exists()
    clean(browser.open(out))
    drawn = {caption: (paths, said) for caption, paths, said in browser.run(DRAWN)}
    assert drawn["Batch sizes and GPU memory"] == (0, "no GPU: no stage ran on a GPU")
    note = browser.run("return document.getElementById('cost-note').textContent")
    assert "Set the machine's price per hour (--price-per-hour, or price_per_hour in the config file)" in note
    assert "list prices as of" in note


def test_a_run_writes_its_page_beside_its_run_report(cli, browser: Browser, tmp_path, tiny_en: str) -> None:
    source, out = tmp_path / "audio", tmp_path / "out"
    shutil.copytree(EXAMPLES, source)
    result = cli(
        "run", source, "--out", out, "--model", tiny_en, "--device", "cpu", "--no-align", "--formats", "srt",
        "--price-per-hour", "0.8",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (report,) = (out / "_runs").glob("*.json")
    page = report.with_suffix(".html")
    assert sorted(path.name for path in (out / "_runs").iterdir()) == [page.name, report.name]

    clean(browser.open(page))
    rows = every_row(browser)
    files = sorted(str(path.relative_to(source)) for path in source.rglob("*") if path.is_file())
    assert sorted(row[0] for row in rows) == files and {row[1] for row in rows} == {"succeeded"}
    assert all(float(row[2]) > 0 and float(row[3]) > 0 and row[4] == "en" for row in rows)
    summary = dict(
        browser.run(
            "return [...document.querySelectorAll('#summary tr')].map(r => [...r.cells].map(c => c.textContent))"
        )
    )
    assert summary["run"] == report.stem and summary["exit code"] == "0" and summary["files"].startswith("3 succeeded")
    assert "$0.8 an hour" in browser.run("return document.getElementById('cost-note').textContent")
    drawn = {caption: (paths, said) for caption, paths, said in browser.run(DRAWN)}
    assert drawn["Batch sizes and GPU memory"][1] == "no GPU: no stage ran on a GPU"
    assert drawn["Audio hours done"][0] == 1 and drawn["Realtime factor per file"][0] == 1
    browser.screenshot("report-run.png", whole_page=True)

    again = cli("run", source, "--out", out, "--model", tiny_en, "--device", "cpu", "--no-align", "--formats", "srt")
    assert again.exit_code == 0
    newest = max((out / "_runs").glob("*.html"))
    assert {row[1] for row in page_data(newest)["rows"]} == {"skipped"}  # a rerun's page lists what it skipped


def test_a_page_for_10000_files_stays_small_and_pages_its_table(cli, browser: Browser, tmp_path) -> None:
    dest = tmp_path / "dest"
    fill_dest(dest, 10_000, gpu=True)
    out = tmp_path / "big.html"
    assert cli("report", dest, "--out", out, "--price-per-hour", "3").exit_code == 0
    size = out.stat().st_size
    loaded = browser.open(out)
    print(f"\n10,000 files: the page is {size / 1e6:.2f} MB and loaded in {loaded.seconds:.2f} s (headless Chromium)")
    assert size < 5_000_000
    clean(loaded)
    assert browser.run("return document.getElementById('count').textContent") == "10000 of 10000 files"
    assert browser.run("return document.getElementById('page').textContent") == "page 1 of 100"
    browser.driver.find_element(By.ID, "last").click()
    assert len(browser.run(ROWS)) == 100  # its load time is measured by bench/report_page.py, not asserted here


def test_report_refuses_what_is_not_a_dest_with_a_clear_error(cli, tmp_path) -> None:
    missing = cli("report", tmp_path / "nothing-here")
    assert missing.exit_code == 3 and "DEST" in missing.stderr and "Traceback" not in missing.stderr
    none = cli("report")
    assert none.exit_code == 2 and "out: missing" in none.stderr
    dest = tmp_path / "dest"
    fill_dest(dest, 3)
    (tmp_path / "taken").mkdir()
    blocked = cli("report", dest, "--out", tmp_path / "taken")
    assert blocked.exit_code == 3 and f"the report page could not be written to {tmp_path / 'taken'}" in blocked.stderr
    assert not list((tmp_path).glob(".taken.*"))  # no half-written page left
    price = cli("report", dest, "--price-per-hour", "-1")
    assert price.exit_code == 2 and "price_per_hour" in price.stderr


def test_the_price_comes_from_the_config_file_and_the_page_escapes_what_it_holds(cli, tmp_path) -> None:
    dest = tmp_path / "dest"
    fill_dest(dest, 20)
    config = tmp_path / "job.toml"
    config.write_text(f'out = "{dest}"\nprice_per_hour = 4.0\n')
    assert cli("report", "--config", config).exit_code == 0
    page = dest / "_runs" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert "<script>window.__ran" not in text and "<img src=x" not in text  # only as \\u003c escapes in the JSON
    data = page_data(page)
    assert HOSTILE_KEY in [row[0] for row in data["rows"]]
    cost = data["cost"]
    assert cost["price_per_hour"] == 4.0
    manifests = [json.loads(path.read_text()) for path in dest.rglob("*.manifest.json")]
    audio_seconds = sum(m.get("audio_seconds", 0.0) for m in manifests if m["status"] == "succeeded")
    assert cost["per_audio_hour"] == pytest.approx(4.0 * (21 / 3600) / (audio_seconds / 3600), rel=1e-3)
    assert [price["per_audio_hour"] for price in cost["list_prices"]] == [1.44, 0.96, 0.36, 0.258, 0.15]


def test_a_page_for_an_s3_dest_is_written_into_it(cli, s3_client: Any, tmp_path) -> None:
    client = s3_client
    client.create_bucket(Bucket="pages")
    local = tmp_path / "dest"
    keys = fill_dest(local, 30)
    for path in local.rglob("*.json"):
        client.put_object(Bucket="pages", Key=f"out/{path.relative_to(local)}", Body=path.read_bytes())

    result = cli("report", "s3://pages/out")
    assert result.exit_code == 0, result.stderr
    assert "report page written: s3://pages/out/_runs/index.html" in result.stdout
    stored = client.get_object(Bucket="pages", Key="out/_runs/index.html")
    assert stored["ContentType"].startswith("text/html")
    saved = tmp_path / "index.html"
    saved.write_bytes(stored["Body"].read())
    assert sorted(row[0] for row in page_data(saved)["rows"]) == sorted(keys)
    assert page_data(saved)["runs"][0][0] == "20260101T000000Z-abcdef"


def test_a_page_that_cannot_be_written_leaves_the_runs_outcome_and_report_as_they_were(tmp_path, caplog) -> None:
    from batch.run.job import Job
    from batch.settings.options import load_settings
    from tests.conftest import tone
    from tests.fakes import FakePipeline

    source, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.wav", "b/c.wav"):
        tone(source / name)
    settings = load_settings({"source": str(source), "out": str(out), "device": "cpu"}, environ={})
    job = Job(settings, environ={}, pipeline=FakePipeline())
    (out / "_runs" / f"{job.run_id}.html").mkdir(parents=True)  # where the page goes: a folder, so its write fails
    report = job.run()
    assert report.exit_code == 0 and sorted(report.succeeded) == ["a.wav", "b/c.wav"]
    assert (out / "_runs" / f"{job.run_id}.json").is_file()
    assert "could not write the run's report page" in caplog.text

    again = Job(settings, environ={}, pipeline=FakePipeline())
    assert again.run().exit_code == 0
    assert [row[:2] for row in page_data(out / "_runs" / f"{again.run_id}.html")["rows"]] == [
        ["a.wav", "skipped"],
        ["b/c.wav", "skipped"],
    ]


def test_the_price_per_hour_shapes_no_output() -> None:
    from batch.settings.options import load_settings
    from tests.conftest import sections

    plain = sections(load_settings({"device": "cpu"}, environ={}))
    priced = sections(load_settings({"device": "cpu"}, environ={"WHISPERX_BATCH_PRICE_PER_HOUR": "3.2"}))
    assert priced.control.price_per_hour == 3.2 and plain.control.price_per_hour is None
    assert priced.settings_hash == plain.settings_hash  # setting a price redoes no done file
