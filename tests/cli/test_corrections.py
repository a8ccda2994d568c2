"""`whisperx-batch corrections apply` end to end: a DEST made by a real run (Whisper tiny.en, espeak-ng speech,
sox's hold-music tone), the real CLI, a folder and an S3 prefix on moto's server.

In the DEST: note.wav is for review (the guard doubts its one segment: the user's phrases file holds the whole
sentence, a text signal alone), vibrato.wav had a hallucination dropped (kept in its manifest), call.wav is speech.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batch.cli import app
from batch.run.corrections import subtitle_options
from batch.run.outputs import render
from bench.nonspeech import make_set
from tests.conftest import speak

FORMATS = ("json", "srt", "vtt", "txt", "tsv", "turns")
NOTE = "Could you send me the file before the meeting tomorrow morning, please."
CALL = "Hello, thank you for calling the support line. Please hold while we connect you to an agent."
TYPED = "Send me the <script>alert(1)</script> file --> before\nthe meeting & call me."
TYPED_LINE = "Send me the <script>alert(1)</script> file --> before the meeting & call me."


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    vibrato = next(path for path in make_set(tmp_path_factory.mktemp("made"), seed=2) if path.name == "vibrato.wav")
    shutil.copy(vibrato, folder / "vibrato.wav")
    speak(NOTE, folder / "note.wav")
    speak(CALL, folder / "call.wav")
    return folder


@pytest.fixture(scope="module")
def phrases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("phrases") / "phrases.txt"
    path.write_text("could you send me the file before the meeting tomorrow morning please\n")
    return path


def run(source: Path, out: str | Path, model: str, phrases: Path, *options: object) -> Any:
    result = invoke(
        "run", source, "--out", out, "--model", model, "--no-align", "--threads", "2",
        "--formats", ",".join(FORMATS), "--hallucination-phrases", phrases, *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def made(source: Path, phrases: Path, tiny_en: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("made") / "out"
    run(source, out, tiny_en, phrases)
    return out


@pytest.fixture
def dest(made: Path, tmp_path: Path) -> Path:
    """A copy of the run's DEST for one test to change."""
    return Path(shutil.copytree(made, tmp_path / "out"))


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def version_of(manifest: dict[str, Any]) -> dict[str, Any]:
    made_from = {"input_version": manifest["input"]["version"], "settings_hash": manifest["settings_hash"]}
    return {**made_from, "fingerprint": manifest["input"]["fingerprint"]}


def decision(segment: dict[str, Any], action: str, new_text: str | None = None) -> dict[str, Any]:
    chosen = {"segment": {key: segment[key] for key in ("start", "end", "text")}, "action": action}
    typed = {"new_text": new_text} if new_text is not None else {}
    return {**chosen, **typed, "who": "ana", "when": "2026-12-07T14:00:00Z"}


def entry(manifests: dict[str, dict[str, Any]], key: str, decisions: list[dict], reviewed: bool = True) -> dict:
    marked = {"reviewed": reviewed, "reviewed_by": "ana", "reviewed_at": "2026-12-07T14:05:00Z"} if reviewed else {}
    return {"file": key, "version": version_of(manifests[key]), "decisions": decisions, **marked}


def corrections(dest: str | Path, *files: dict[str, Any]) -> dict[str, Any]:
    header = {"corrections_version": 1, "dest": str(dest), "made_by": "review page", "made_at": "2026-12-07T14:06:00Z"}
    return {**header, "files": list(files)}


def write(path: Path, document: dict[str, Any] | str) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document, ensure_ascii=False))
    return path


def manifests_of(dest: Path) -> dict[str, dict[str, Any]]:
    return {name: read(dest / f"{name}.manifest.json") for name in ("note.wav", "vibrato.wav", "call.wav")}


def snapshot(dest: Path) -> dict[str, bytes]:
    return {str(path.relative_to(dest)): path.read_bytes() for path in sorted(dest.rglob("*")) if path.is_file()}


def decisions_for(dest: str | Path, manifests: dict[str, dict[str, Any]], transcripts: dict[str, Any]) -> dict:
    """note.wav's doubtful segment edited (typed text), vibrato.wav's dropped one restored, call.wav's removed."""
    doubtful = manifests["note.wav"]["quality"]["doubtful"][0]
    dropped = manifests["vibrato.wav"]["quality"]["dropped"][0]
    call = transcripts["call.wav"]["segments"][0]
    return corrections(
        dest,
        entry(manifests, "note.wav", [decision(doubtful, "edit", TYPED)]),
        entry(manifests, "vibrato.wav", [decision(dropped, "keep")]),
        entry(manifests, "call.wav", [decision(call, "remove")], reviewed=False),
    )


def test_the_made_dest_has_a_file_to_review_and_a_dropped_segment(made: Path) -> None:
    manifests = manifests_of(made)
    assert manifests["note.wav"]["quality"]["reasons"] == ["signals_disagree"]
    assert manifests["vibrato.wav"]["quality"]["dropped"] and not read(made / "vibrato.wav.json")["segments"]
    listed = read_review(made)
    assert listed == {"note.wav": ["signals_disagree"], "vibrato.wav": ["speech_without_text"]}


def read_review(dest: str | Path) -> dict[str, list[str]]:
    result = invoke("status", dest, "--review", "--json")
    return {item["key"]: item["reasons"] for item in json.loads(result.stdout)["review"]}


def test_apply_rewrites_every_output_records_the_decisions_and_takes_the_file_off_review(
    dest: Path, tmp_path: Path
) -> None:
    manifests = manifests_of(dest)
    transcripts = {name: read(dest / f"{name}.json") for name in manifests}
    file = write(tmp_path / "corrections.json", decisions_for(dest, manifests, transcripts))

    result = invoke("corrections", "apply", dest, file)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{dest}: 3 applied, 0 refused, 0 failed",
        "  note.wav: 1 decisions applied",
        "  vibrato.wav: 1 decisions applied",
        "  call.wav: 1 decisions applied",
    ]
    note = read(dest / "note.wav.json")
    assert [s["text"] for s in note["segments"]] == [TYPED_LINE]  # data: nothing escaped in the JSON
    assert read(dest / "vibrato.wav.json")["segments"][0]["text"].strip() == "I'll see you next time."
    assert read(dest / "call.wav.json")["segments"] == []
    assert TYPED_LINE in (dest / "note.wav.txt").read_text() and TYPED_LINE in (dest / "note.wav.tsv").read_text()
    assert read(dest / "note.wav.turns.json")[0]["text"] == TYPED_LINE
    assert (
        "&lt;script&gt;" in (dest / "note.wav.vtt").read_text()
        and "<script>" not in (dest / "note.wav.vtt").read_text()
    )
    assert "I'll see you next" in (dest / "vibrato.wav.srt").read_text()  # a cue shows 7 s at most
    assert (dest / "call.wav.txt").read_text() == ""
    for name in manifests:  # every output is what the run's own writers make of the corrected transcript
        manifest, corrected = read(dest / f"{name}.manifest.json"), read(dest / f"{name}.json")
        for fmt, output in zip(FORMATS, manifest["outputs"], strict=True):
            expected = render(corrected, fmt, name, subtitle_options(manifest["settings"]))
            assert (dest / output).read_bytes() == expected, output

    record = read(dest / "note.wav.manifest.json")
    assert record["corrections"]["reviewed"] and record["corrections"]["reviewed_by"] == "ana"
    (applied,) = record["corrections"]["applied"]
    assert applied["corrections_file"] == "corrections.json" and applied["made_by"] == "review page"
    assert applied["decisions"][0]["new_text"] == TYPED and applied["decisions"][0]["who"] == "ana"
    assert {key: record[key] for key in ("input", "settings_hash", "quality", "run_id")} == {
        key: manifests["note.wav"][key] for key in ("input", "settings_hash", "quality", "run_id")
    }
    assert read(dest / "call.wav.manifest.json")["corrections"]["reviewed"] is False
    assert read_review(dest) == {}  # note.wav was reviewed; the others were never listed

    changed = snapshot(dest)
    again = invoke("corrections", "apply", dest, file)  # the same decisions again: known, nothing written
    assert again.exit_code == 0 and "  note.wav: applied before, unchanged" in again.stdout
    assert snapshot(dest) == changed


def test_a_file_reviewed_without_decisions_keeps_its_outputs_byte_for_byte(dest: Path, tmp_path: Path) -> None:
    before = snapshot(dest)
    file = write(tmp_path / "c.json", corrections(dest, entry(manifests_of(dest), "note.wav", [])))
    assert invoke("corrections", "apply", dest, file).exit_code == 0
    after = snapshot(dest)
    assert {name for name in before if before[name] != after[name]} == {"note.wav.manifest.json"}
    assert read_review(dest) == {"vibrato.wav": ["speech_without_text"]}  # its text was dropped: speech left no text


def test_what_does_not_fit_is_refused_with_its_reason_and_nothing_of_it_changes(dest: Path, tmp_path: Path) -> None:
    manifests = manifests_of(dest)
    note, vibrato = manifests["note.wav"], manifests["vibrato.wav"]
    doubtful, dropped = note["quality"]["doubtful"][0], vibrato["quality"]["dropped"][0]
    stale = entry(manifests, "note.wav", [decision(doubtful, "remove")])
    stale["version"]["input_version"] = "1700000000000000000"
    other_settings = entry(manifests, "vibrato.wav", [decision(dropped, "keep")])
    other_settings["version"]["settings_hash"] = "sha256:" + "0" * 64
    old_text = entry(
        manifests, "call.wav", [decision({**read(dest / "call.wav.json")["segments"][0], "text": "Hi."}, "remove")]
    )
    unknown = {**entry(manifests, "call.wav", []), "file": "nowhere.wav"}
    cases = corrections(dest, stale, other_settings, old_text, unknown)
    before = snapshot(dest)

    result = invoke("corrections", "apply", dest, write(tmp_path / "c.json", cases))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{dest}: 0 applied, 4 refused, 0 failed"
    assert lines[1] == (
        "  note.wav: refused: the corrections were made on input version 1700000000000000000; DEST holds a "
        f"transcript of version {note['input']['version']} now (the file was redone)"
    )
    assert lines[2].startswith(
        "  vibrato.wav: refused: the corrections were made on a transcript of settings sha256:000"
    )
    assert (
        lines[3].startswith("  call.wav: refused: a decision does not fit its transcript: no segment ")
        and "'Hi.'" in lines[3]
    )
    assert lines[4] == "  nowhere.wav: refused: DEST holds no such file (no manifest of it)"
    assert snapshot(dest) == before

    elsewhere = corrections(tmp_path / "other", entry(manifests, "note.wav", [decision(doubtful, "remove")]))
    result = invoke("corrections", "apply", dest, write(tmp_path / "e.json", elsewhere), "--json")
    assert result.exit_code == 1
    (refused,) = json.loads(result.stdout)["files"]
    assert refused == {
        "file": "note.wav",
        "outcome": "refused",
        "reason": f"the corrections were made for DEST {tmp_path / 'other'}, not {dest}",
        "decisions": 1,
    }
    assert snapshot(dest) == before


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('{"corrections_version": 1, "dest": ', "is not JSON: Expecting value"),
        ('{"corrections_version": 2, "dest": "x", "made_by": "p", "made_at": "2026-12-07", "files": []}', "version 2"),
        ("misspelt", "files.1.decisions.0.newtext: Extra inputs are not permitted"),
        ("two_files", "'note.wav' is named twice"),
    ],
)
def test_a_malformed_corrections_file_applies_nothing(dest: Path, tmp_path: Path, content: str, said: str) -> None:
    manifests = manifests_of(dest)
    good = entry(manifests, "note.wav", [decision(manifests["note.wav"]["quality"]["doubtful"][0], "edit", "Yes.")])
    if content == "misspelt":
        bad = json.loads(json.dumps(good))
        bad["decisions"][0]["newtext"] = bad["decisions"][0].pop("new_text")
        content = json.dumps(corrections(dest, good, {**bad, "file": "call.wav"}))
    elif content == "two_files":
        content = json.dumps(corrections(dest, good, good))
    before = snapshot(dest)
    result = invoke("corrections", "apply", dest, write(tmp_path / "bad.json", content))
    assert result.exit_code == 2 and "whisperx-batch: error: corrections file: " in result.stderr
    assert said in result.stderr
    assert snapshot(dest) == before


def test_a_rerun_keeps_corrections_and_a_redo_keeps_them_in_history_for_review_again(
    dest: Path, tmp_path: Path, source: Path, phrases: Path, tiny_en: str
) -> None:
    manifests = manifests_of(dest)
    transcripts = {name: read(dest / f"{name}.json") for name in manifests}
    file = write(tmp_path / "corrections.json", decisions_for(dest, manifests, transcripts))
    assert invoke("corrections", "apply", dest, file).exit_code == 0
    corrected = snapshot(dest)

    same = run(source, dest, tiny_en, phrases)  # the same settings: every file skipped, corrections kept
    assert "0 succeeded, 3 skipped" in same.stderr
    assert {k: v for k, v in snapshot(dest).items() if not k.startswith("_runs/")} == {
        k: v for k, v in corrected.items() if not k.startswith("_runs/")
    }
    assert read_review(dest) == {}

    run(source, dest, tiny_en, phrases, "--max-line-width", "30")  # other settings: every file redone
    note = read(dest / "note.wav.manifest.json")
    assert "corrections" not in note and note["settings_hash"] != manifests["note.wav"]["settings_hash"]
    (history,) = note["corrections_history"]
    assert history["settings_hash"] == manifests["note.wav"]["settings_hash"]
    assert history["run_id"] == manifests["note.wav"]["run_id"]
    assert history["corrections"]["applied"][0]["decisions"][0]["new_text"] == TYPED
    assert read(dest / "note.wav.json")["segments"][0]["text"].strip() != TYPED_LINE
    assert read_review(dest) == {"note.wav": ["signals_disagree"], "vibrato.wav": ["speech_without_text"]}
    stale = invoke("corrections", "apply", dest, file)
    assert stale.exit_code == 1 and "the file was redone with settings" in stale.stdout

    entries = decisions_for(dest, manifests_of(dest), {n: read(dest / f"{n}.json") for n in manifests})
    assert invoke("corrections", "apply", dest, write(tmp_path / "second.json", entries)).exit_code == 0
    run(source, dest, tiny_en, phrases, "--max-line-width", "30", "--force")  # redone with the same settings
    histories = read(dest / "note.wav.manifest.json")["corrections_history"]
    assert [h["corrections"]["applied"][0]["corrections_file"] for h in histories] == [
        "corrections.json",
        "second.json",
    ]
    assert read_review(dest) == {"note.wav": ["signals_disagree"], "vibrato.wav": ["speech_without_text"]}


def test_corrections_applied_to_an_s3_dest(
    s3_client: Any, source: Path, phrases: Path, tiny_en: str, tmp_path: Path
) -> None:
    s3 = s3_client
    s3.create_bucket(Bucket="corrected")
    run(source, "s3://corrected/out", tiny_en, phrases, "--include", "note.wav")

    def get(name: str) -> Any:
        return json.loads(s3.get_object(Bucket="corrected", Key=f"out/{name}")["Body"].read())

    manifests = {"note.wav": get("note.wav.manifest.json")}
    doubtful = manifests["note.wav"]["quality"]["doubtful"][0]
    file = write(
        tmp_path / "c.json",
        corrections("s3://corrected/out/", entry(manifests, "note.wav", [decision(doubtful, "edit", TYPED)])),
    )
    assert read_review("s3://corrected/out") == {"note.wav": ["signals_disagree"]}
    result = invoke("corrections", "apply", "s3://corrected/out", file)
    assert result.exit_code == 0, result.output
    assert get("note.wav.json")["segments"][0]["text"] == TYPED_LINE
    srt = s3.get_object(Bucket="corrected", Key="out/note.wav.srt")["Body"].read().decode()
    assert "<script>alert(1)</script>" in srt.replace("\n", " ")
    assert get("note.wav.manifest.json")["corrections"]["reviewed"] and read_review("s3://corrected/out") == {}
    same = run(source, "s3://corrected/out", tiny_en, phrases, "--include", "note.wav")
    assert "0 succeeded, 1 skipped" in same.stderr
    assert get("note.wav.json")["segments"][0]["text"] == TYPED_LINE


def test_a_chunk_that_alignment_split_into_sentences_is_edited_whole(
    source: Path, tiny_en: str, tmp_path: Path
) -> None:
    from tests.tiny_models import build_tiny_align_model

    aligner = build_tiny_align_model(tmp_path / "align-en")
    out = tmp_path / "aligned"
    result = invoke(
        "run", source, "--out", out, "--model", tiny_en, "--align-model", aligner, "--threads", "2",
        "--formats", "json,srt,vtt,turns", "--highlight-words", "--include", "call.wav",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest, transcript = read(out / "call.wav.manifest.json"), read(out / "call.wav.json")
    sentences = transcript["segments"]
    assert len(sentences) == 2 and all(s.get("words") for s in sentences) and transcript["word_segments"]
    read_as = " " + " ".join(sentence["text"].strip() for sentence in sentences)  # the chunk's text, as Whisper read it
    chunk = {"start": sentences[0]["start"], "end": sentences[-1]["end"], "text": read_as}
    edited = corrections(out, entry({"call.wav": manifest}, "call.wav", [decision(chunk, "edit", TYPED)]))
    applied = invoke("corrections", "apply", out, write(tmp_path / "c.json", edited))
    assert applied.exit_code == 0, applied.output
    after = read(out / "call.wav.json")
    said_in = {key: sentences[0][key] for key in ("language", "language_probability")}  # the text keeps its language
    assert after["segments"] == [{"start": chunk["start"], "end": chunk["end"], "text": TYPED_LINE, **said_in}]
    assert after["word_segments"] == []  # the typed words have no times of their own
    vtt = (out / "call.wav.vtt").read_text()
    assert "<u>" not in vtt and "&lt;script&gt;alert(1)&lt;/script&gt;" in vtt.replace("\n", " ")
    turns = read(out / "call.wav.turns.json")
    assert [turn["text"] for turn in turns] == [TYPED_LINE]


def s3_copy(made: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, prefix: str) -> Any:
    """The run's DEST copied to s3://faults/PREFIX on moto's server; a client of that server."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing-secret-value")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("WHISPERX_BATCH_S3_ENDPOINT_URL", s3_endpoint)
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    if "faults" not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="faults")
    for path in made.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket="faults", Key=f"{prefix}/{path.relative_to(made)}", Body=path.read_bytes())
    return s3


def stored(s3: Any, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket="faults", Prefix=f"{prefix}/").get("Contents", [])
    return {item["Key"]: s3.get_object(Bucket="faults", Key=item["Key"])["Body"].read() for item in listed}


def note_edited(made: Path, dest: str) -> bytes:
    manifests = manifests_of(made)
    doubtful = manifests["note.wav"]["quality"]["doubtful"][0]
    return json.dumps(corrections(dest, entry(manifests, "note.wav", [decision(doubtful, "edit", "Yes.")]))).encode()


def test_a_manifest_a_run_rewrites_meanwhile_refuses_the_file_and_nothing_is_written(
    made: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch.run.corrections import apply_corrections

    s3 = s3_copy(made, s3_endpoint, monkeypatch, "race")
    before = stored(s3, "race")
    rewritten = read(made / "note.wav.manifest.json") | {"run_id": "20261207T150000Z-beside"}

    def a_run_rewrites_it(request: Any, **_: Any) -> None:  # just before the conditional delete reaches S3
        if request.url.endswith("/race/note.wav.manifest.json") and request.method == "DELETE":
            s3.put_object(Bucket="faults", Key="race/note.wav.manifest.json", Body=json.dumps(rewritten).encode())

    client = __import__("boto3").client("s3", endpoint_url=s3_endpoint)
    client.meta.events.register("before-send.s3.DeleteObject", a_run_rewrites_it)
    _, (result,) = apply_corrections("s3://faults/race", note_edited(made, "s3://faults/race"), "c.json", client=client)
    assert (result.outcome, result.reason) == (
        "refused",
        "its manifest changed while the corrections were applied (a run redid the file): apply again",
    )
    after = stored(s3, "race")
    assert json.loads(after.pop("race/note.wav.manifest.json"))["run_id"] == "20261207T150000Z-beside"
    before.pop("race/note.wav.manifest.json")
    assert after == before  # no output was touched


def test_a_dest_that_refuses_a_write_midway_leaves_no_manifest_to_take_the_file_as_done(
    made: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.awsrequest import AWSResponse

    from batch.run.corrections import apply_corrections

    s3 = s3_copy(made, s3_endpoint, monkeypatch, "refusing")

    class Body:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"

    def refuse_subtitles(request: Any, **_: Any) -> AWSResponse | None:
        if request.url.endswith("/refusing/note.wav.srt"):
            return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, Body())
        return None

    client = __import__("boto3").client("s3", endpoint_url=s3_endpoint)
    client.meta.events.register("before-send.s3.PutObject", refuse_subtitles)
    url = "s3://faults/refusing"
    _, (result,) = apply_corrections(url, note_edited(made, url), "c.json", client=client)
    assert result.outcome == "failed" and "AccessDenied" in (result.reason or "")
    after = stored(s3, "refusing")
    assert "refusing/note.wav.manifest.json" not in after  # not done: the next run redoes the file
    assert json.loads(after["refusing/note.wav.json"])["segments"][0]["text"] == "Yes."  # written before the refusal
    listed = invoke("status", url, "--json")
    assert json.loads(listed.stdout)["succeeded"] == 2  # note.wav is not counted done beside mixed outputs
