"""The review page end to end: a DEST made by a real run (Whisper tiny.en, espeak-ng speech, sox's hold-music tone)
cuts a clip of each segment the guard judged; `whisperx-batch review DEST` writes the page; a real browser (headless
Chromium, the network off: tests/browser.py) plays a clip, takes a person's decisions through the page's controls,
and downloads the corrections file, which `whisperx-batch corrections apply` then writes into DEST.

In the DEST (as in tests/cli/test_corrections.py): note.wav is for review (the guard doubts its one segment: the
user's phrases file holds the whole sentence), vibrato.wav had a hallucination dropped, call.wav is speech.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from batch.formats.clips import clip_window
from batch.run.review_clips import clip_name
from tests.browser import Browser, browser_session
from tests.cli.test_corrections import CALL, FORMATS, NOTE, TYPED, TYPED_LINE, invoke, read_review
from tests.conftest import speak
from tests.run.test_report_page import page_data

AUTOPLAY = ("--autoplay-policy=no-user-gesture-required",)  # a clip plays without a click
HOSTILE = '<script>window.ran = 1</script><img src=x onerror="window.ran = 2"> & more'


@pytest.fixture(scope="module")
def made(tiny_en: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.nonspeech import make_set

    source = tmp_path_factory.mktemp("in")
    vibrato = next(path for path in make_set(tmp_path_factory.mktemp("set"), seed=2) if path.name == "vibrato.wav")
    shutil.copy(vibrato, source / "vibrato.wav")
    spoken = speak(NOTE, tmp_path_factory.mktemp("spoken") / "note.wav")
    # A second of silence after the speech: its clip holds context past the span, where the player must not go.
    subprocess.run(["sox", str(spoken), str(source / "note.wav"), "pad", "0", "1.5"], check=True)
    speak(CALL, source / "call.wav")
    phrases = tmp_path_factory.mktemp("phrases") / "phrases.txt"
    phrases.write_text("could you send me the file before the meeting tomorrow morning please\n")
    out = tmp_path_factory.mktemp("made") / "out"
    result = invoke(
        "run", source, "--out", out, "--model", tiny_en, "--no-align", "--threads", "2",
        "--formats", ",".join(FORMATS), "--hallucination-phrases", phrases,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def dest(made: Path, tmp_path: Path) -> Path:
    """A copy of the run's DEST for one test to change."""
    return Path(shutil.copytree(made, tmp_path / "out"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browser_session(AUTOPLAY) as session:
        yield session


def manifest(dest: Path, key: str) -> dict[str, Any]:
    return json.loads((dest / f"{key}.manifest.json").read_text())


def judged(dest: Path, key: str, kind: str) -> dict[str, Any]:
    return manifest(dest, key)["quality"][kind][0]


def seconds_of(clip: Path) -> float:
    with av.open(str(clip)) as container:
        return sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))


def review_page(dest: Path, browser: Browser) -> Any:
    result = invoke("review", dest)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"review page written: {dest}/_review/index.html"
    loaded = browser.open(dest / "_review" / "index.html")
    assert loaded.errors == [], loaded.errors  # no console error, no failed load, no CSP refusal
    assert loaded.off_disk == [], loaded.off_disk
    return loaded


def section(browser: Browser, key: str) -> Any:
    return next(
        s for s in browser.driver.find_elements(By.CSS_SELECTOR, "section.file") if s.get_attribute("data-file") == key
    )


def decide(browser: Browser, key: str, action: str, new_text: str | None = None) -> None:
    chosen = section(browser, key)
    Select(chosen.find_element(By.CSS_SELECTOR, "select.action")).select_by_value(action)
    if new_text is not None:
        typed = chosen.find_element(By.CSS_SELECTOR, "textarea.new-text")
        typed.clear()
        typed.send_keys(new_text)


def landed(target: Path, timeout: float = 30) -> None:
    """Until Chromium has downloaded `target` (it writes NAME.crdownload, then renames it)."""
    deadline = time.monotonic() + timeout
    while not target.exists():
        assert time.monotonic() < deadline, f"nothing downloaded to {target}"
        time.sleep(0.05)


def export(browser: Browser, folder: Path, who: str = "ana") -> dict[str, Any]:
    """Type the name, press Export, and read the file Chromium downloaded."""
    browser.download_to(folder)
    name = browser.driver.find_element(By.ID, "who")
    name.clear()
    name.send_keys(who)
    browser.driver.find_element(By.ID, "export").click()
    browser.wait_for("document.getElementById('export-note').textContent.startsWith('corrections.json')")
    target = folder / "corrections.json"
    landed(target)
    document = json.loads(target.read_text())
    assert document == json.loads(browser.run("return window.exportedCorrections"))
    return document


def test_the_run_cuts_a_clip_of_each_judged_segment_beside_the_page(made: Path) -> None:
    note, vibrato = manifest(made, "note.wav"), manifest(made, "vibrato.wav")
    expected = {}
    for found, kind in ((note, "doubtful"), (vibrato, "dropped")):
        segment = found["quality"][kind][0]
        name = clip_name(found["input"]["key"], found["input"]["version"], segment["start"], segment["end"])
        expected[name] = clip_window(segment["start"], segment["end"], found["audio_seconds"])
    assert sorted(str(p.relative_to(made)) for p in (made / "_review" / "clips").iterdir()) == sorted(expected)
    for name, (start, end) in expected.items():
        assert seconds_of(made / name) == pytest.approx(end - start, abs=0.03)
        assert (made / name).stat().st_size < 6_000 * (end - start)  # compressed: Opus at 24 kbit/s
    assert not any("_review" in output for output in note["outputs"])  # a clip is no output of the file


def test_a_clip_name_is_short_and_safe_for_any_key() -> None:
    odd = 'calls/../ünï cødé <x> "q" ?*|\\' + "long/" * 200 + "\udcff.wav"
    name = clip_name(odd, "v1", 1.0, 2.5)
    assert name.startswith("_review/clips/") and len(name) < 60 and name.isascii() and name.count("/") == 2
    assert name != clip_name(odd, "v2", 1.0, 2.5) != clip_name(odd, "v1", 1.0, 2.6)


def test_the_page_plays_a_clip_and_its_decisions_are_applied(dest: Path, browser: Browser, tmp_path: Path) -> None:
    review_page(dest, browser)
    assert [s.get_attribute("data-file") for s in browser.driver.find_elements(By.CSS_SELECTOR, "section.file")] == [
        "note.wav",
        "vibrato.wav",
    ]  # on the review list, and a file with a dropped segment to restore; call.wav is neither
    doubtful = judged(dest, "note.wav", "doubtful")
    note = section(browser, "note.wav")
    assert note.find_element(By.CSS_SELECTOR, ".text").text == doubtful["text"]
    assert "signals_disagree" in note.text and "known_phrase" in note.text and "avg_logprob" in note.text

    browser.run(
        "const audio = document.querySelector('section.file audio'); window.heard = [];"
        "audio.addEventListener('timeupdate', () => window.heard.push(audio.currentTime));"
        "audio.addEventListener('pause', () => { window.stopped = true; }); audio.play();"
    )
    browser.wait_for("window.stopped === true", 30)  # the media fragment stops the player at the span's end
    heard = browser.run("return window.heard")
    window = clip_window(doubtful["start"], doubtful["end"], manifest(dest, "note.wav")["audio_seconds"])
    span_from, span_to = doubtful["start"] - window[0], doubtful["end"] - window[0]
    assert heard == sorted(heard) and heard[-1] - heard[0] > 2, heard  # it played, forward
    assert all(span_from - 0.01 <= time <= span_to + 0.3 for time in heard), (heard, span_from, span_to)
    assert window[1] - window[0] >= span_to + 0.45  # the clip goes on past the span: the player stopped at its end
    browser.run("window.heard = []; window.stopped = false;")
    note.find_element(By.CSS_SELECTOR, "button.play-span").click()  # the span again, and only it
    browser.wait_for("window.stopped === true", 30)
    again = browser.run("return window.heard")
    assert again[0] <= span_from + 0.5 and again[-1] - again[0] > 2 and again[-1] <= span_to + 0.3, again
    browser.screenshot("review-page.png", whole_page=True)

    decide(browser, "note.wav", "edit", TYPED)
    decide(browser, "vibrato.wav", "keep")
    for key in ("note.wav", "vibrato.wav"):
        section(browser, key).find_element(By.CSS_SELECTOR, "input.reviewed").click()
    browser.screenshot("review-page-decided.png", whole_page=True)
    document = export(browser, tmp_path / "downloads")

    assert document["dest"] == str(dest) and document["made_by"].startswith("whisperx-batch review page")
    by_file = {entry["file"]: entry for entry in document["files"]}
    assert by_file["note.wav"]["decisions"][0]["new_text"] == TYPED  # as typed: apply makes it one line
    assert by_file["vibrato.wav"]["decisions"][0]["action"] == "keep"
    assert all(entry["reviewed"] and entry["reviewed_by"] == "ana" for entry in by_file.values())

    applied = invoke("corrections", "apply", dest, tmp_path / "downloads" / "corrections.json")
    assert applied.exit_code == 0, applied.output
    assert (dest / "note.wav.txt").read_text().strip() == TYPED_LINE
    restored = json.loads((dest / "vibrato.wav.json").read_text())["segments"]
    assert [segment["text"] for segment in restored] == [judged(dest, "vibrato.wav", "dropped")["text"]]
    assert read_review(dest) == {}

    review_page(dest, browser)  # nothing left to review: the page says so
    assert browser.driver.find_element(By.ID, "empty").is_displayed()
    assert browser.driver.find_elements(By.CSS_SELECTOR, "section.file") == []
    browser.screenshot("review-page-empty.png")


def test_remove_through_the_page_and_the_name_is_kept(dest: Path, browser: Browser, tmp_path: Path) -> None:
    review_page(dest, browser)
    decide(browser, "note.wav", "remove")
    document = export(browser, tmp_path / "downloads", who="bo")
    assert [entry["file"] for entry in document["files"]] == ["note.wav"]
    assert "reviewed" not in document["files"][0]  # not marked: the file stays on the review list
    assert browser.run("return localStorage.getItem('whisperx-batch-review-who')") == "bo"

    applied = invoke("corrections", "apply", dest, tmp_path / "downloads" / "corrections.json")
    assert applied.exit_code == 0, applied.output
    assert json.loads((dest / "note.wav.json").read_text())["segments"] == []
    assert read_review(dest) == {"note.wav": ["signals_disagree"], "vibrato.wav": ["speech_without_text"]}

    review_page(dest, browser)
    assert browser.driver.find_element(By.ID, "who").get_attribute("value") == "bo"  # kept in localStorage
    assert "applied before: remove" in section(browser, "note.wav").text


def test_text_holding_markup_is_shown_not_run(dest: Path, browser: Browser) -> None:
    path = dest / "note.wav.manifest.json"
    document = json.loads(path.read_text())
    document["quality"]["doubtful"][0]["text"] = HOSTILE
    document["quality"]["reasons"].append(HOSTILE)
    path.write_text(json.dumps(document))
    review_page(dest, browser)
    note = section(browser, "note.wav")
    assert note.find_element(By.CSS_SELECTOR, ".text").text == HOSTILE
    assert browser.run("return window.ran === undefined")
    assert browser.run("return document.querySelectorAll('main img, main script').length") == 0


def test_a_dest_with_nothing_to_review_says_so(tmp_path: Path, browser: Browser) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    review_page(dest, browser)
    assert browser.driver.find_element(By.ID, "empty").text.startswith("Nothing to review")


def test_a_dest_that_is_missing_is_refused(tmp_path: Path) -> None:
    result = invoke("review", tmp_path / "nowhere")
    assert result.exit_code == 3, result.output
    assert not (tmp_path / "nowhere").exists()


def test_a_clip_that_cannot_be_written_is_a_warning_and_the_file_succeeds(tiny_en: str, tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    speak(NOTE, source / "note.wav")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("could you send me the file before the meeting tomorrow morning please\n")
    (out / "_review").mkdir(parents=True)
    (out / "_review" / "clips").write_text("a file where the clips' folder belongs")  # DEST refuses every clip
    result = invoke(
        "run", source, "--out", out, "--model", tiny_en, "--no-align", "--threads", "2",
        "--hallucination-phrases", phrases,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "could not write the review clip _review/clips/" in result.output
    assert manifest(out, "note.wav")["status"] == "succeeded" and (out / "note.wav.json").exists()
    assert read_review(out) == {"note.wav": ["signals_disagree"]}
    assert invoke("review", out).exit_code == 0  # the page says the segment has no clip
    assert [segment["clip"] for segment in page_data(out / "_review" / "index.html")["files"][0]["segments"]] == [None]


def test_an_s3_dest_synced_to_a_folder_plays_its_clips_without_source(
    s3_client: Any, tiny_en: str, tmp_path: Path, browser: Browser
) -> None:
    s3 = s3_client
    s3.create_bucket(Bucket="reviewjobs")
    source = tmp_path / "in"
    speak(NOTE, source / "note.wav")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("could you send me the file before the meeting tomorrow morning please\n")
    result = invoke(
        "run", source, "--out", "s3://reviewjobs/out", "--model", tiny_en, "--no-align", "--threads", "2",
        "--hallucination-phrases", phrases,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = invoke("review", "s3://reviewjobs/out")
    assert written.exit_code == 0, written.output
    assert written.stdout.strip() == "review page written: s3://reviewjobs/out/_review/index.html"

    synced = tmp_path / "synced"  # as `aws s3 sync s3://reviewjobs/out synced` leaves it
    kinds = {}
    for listed in s3.list_objects_v2(Bucket="reviewjobs", Prefix="out/")["Contents"]:
        target = synced / listed["Key"].removeprefix("out/")
        target.parent.mkdir(parents=True, exist_ok=True)
        got = s3.get_object(Bucket="reviewjobs", Key=listed["Key"])
        target.write_bytes(got["Body"].read())
        kinds[target.suffix] = got["ContentType"]
    assert kinds[".ogg"] == "audio/ogg" and kinds[".html"].startswith("text/html")
    shutil.rmtree(source)  # the page needs no SOURCE

    loaded = browser.open(synced / "_review" / "index.html")
    assert loaded.errors == [] and loaded.off_disk == [], (loaded.errors, loaded.off_disk)
    assert page_data(synced / "_review" / "index.html")["dest"] == "s3://reviewjobs/out"
    browser.run(
        "const audio = document.querySelector('section.file audio'); window.heard = [];"
        "audio.addEventListener('timeupdate', () => window.heard.push(audio.currentTime)); audio.play();"
    )
    browser.wait_for("window.heard.length > 0 && window.heard[window.heard.length - 1] > 1", 30)

    elsewhere = tmp_path / "elsewhere.html"  # a page for an S3 DEST written on this machine cannot reach its clips
    assert invoke("review", "s3://reviewjobs/out", "--out", elsewhere).exit_code == 0
    browser.open(elsewhere)
    assert "open the page written there" in browser.driver.find_element(By.CSS_SELECTOR, ".no-clip").text


def test_words_are_shown_with_their_confidence(dest: Path, browser: Browser) -> None:
    """An aligned transcript's words (here written into the run's transcript as alignment writes them)."""
    path = dest / "note.wav.json"
    transcript = json.loads(path.read_text())
    segment = transcript["segments"][0]
    segment["words"] = [
        {"word": "Could", "start": 0.1, "end": 0.3, "score": 0.91},
        {"word": "<b>you</b>", "start": 0.3, "end": 0.5, "score": 0.12},
    ]
    path.write_text(json.dumps(transcript))
    review_page(dest, browser)
    words = browser.run(
        "return [...document.querySelectorAll('section.file .words span')].map(s => [s.textContent, s.title])"
    )
    assert words == [["Could", "confidence 0.91"], ["<b>you</b>", "confidence 0.12"]]


def test_a_page_written_elsewhere_reaches_a_local_dests_clips(made: Path, tmp_path: Path) -> None:
    page = tmp_path / "pages" / "review.html"
    assert invoke("review", made, "--out", page).exit_code == 0
    clips = [segment["clip"] for file in page_data(page)["files"] for segment in file["segments"]]
    assert len(clips) == 2 and all((page.parent / clip["url"]).resolve().is_file() for clip in clips)
