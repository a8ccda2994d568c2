"""Two runs that did the same version of a file at once (one queue event given to two consumers, two runs on one
folder) commit it: exactly one records the success; the other finds it there as its own manifest is written and
counts the file done alongside (skipped), on a folder DEST and on S3 alike."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from batch.engine.pipeline import Stopwatch
from batch.run.manifest import InputRecord, Manifest, manifest_name, read_manifest
from batch.run.outputs import DoneAlongside, write_file
from batch.storage import ConditionalWritesUnsupported, Store, open_store
from batch.storage.local import LocalStore
from tests.conftest import ENGLISH, speak
from tests.run.test_claims_s3 import StripConditions, StripHandler
from tests.storage.test_s3 import aws_environment, bucket, moto_url, put  # noqa: F401 - fixtures

RUN_STARTED = "2026-12-07T10:00:00.000Z"
TRANSCRIPT = {"segments": [{"start": 0.0, "end": 1.0, "text": " hello"}], "language": "en"}


def manifest_of(run_id: str, version: str = "v1", settings_hash: str = "same") -> Manifest:
    return Manifest(
        status="succeeded",
        input=InputRecord(key="calls/a.wav", size=10, version=version),
        settings_hash=settings_hash,
        settings={},
        timings={},
        batch_size=1,
        model="tiny.en",
        device="cpu",
        compute_type="int8",
        threads=1,
        versions={},
        run_id=run_id,
        started_at=RUN_STARTED,
        finished_at="2026-12-07T10:00:05.000Z",
    )


@pytest.fixture(params=["folder", "s3"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "folder":
        return LocalStore(str(tmp_path / "out"))
    return open_store(f"s3://{request.getfixturevalue('bucket')}/out")


def when_outputs_are_written(dest: Store, action: Callable[[], None]) -> None:
    """Runs `action` once, as `dest` takes this run's first output: between its check and its manifest."""
    write_bytes = dest.write_bytes

    def first_output_then_action(name: str, data: bytes) -> None:
        write_bytes(name, data)
        if not name.endswith(".manifest.json") and not done:
            done.append(name)
            action()

    done: list[str] = []
    dest.write_bytes = first_output_then_action  # type: ignore[method-assign]


def commit(dest: Store, mine: Manifest) -> Manifest:
    return write_file(dest, mine, Stopwatch(), TRANSCRIPT, ("json",), None, run_started_at=RUN_STARTED)


def test_the_same_version_committed_by_another_run_meanwhile_is_recorded_once(dest: Store) -> None:
    other = manifest_of("other-run")
    when_outputs_are_written(dest, lambda: dest.write_bytes(manifest_name("calls/a.wav"), other.encode()))
    with pytest.raises(DoneAlongside):
        commit(dest, manifest_of("this-run"))
    assert read_manifest(dest, "calls/a.wav").run_id == "other-run"


def test_an_old_manifest_is_replaced_and_a_newer_one_from_meanwhile_is_not_deleted_unseen(dest: Store) -> None:
    """The check saw an old version's manifest; another run replaced it with this same version's before the old
    one was to be deleted: this run does not delete the newcomer blindly, it finds the file done alongside."""
    dest.write_bytes(manifest_name("calls/a.wav"), manifest_of("old-run", version="v0").encode())
    read_with_version = dest.read_with_version
    reads: list[str] = []

    def other_run_commits_after_the_check(name: str):  # type: ignore[no-untyped-def]
        found = read_with_version(name)
        if name == manifest_name("calls/a.wav") and not reads:
            reads.append(name)
            dest.write_bytes(name, manifest_of("other-run").encode())
        return found

    dest.read_with_version = other_run_commits_after_the_check  # type: ignore[method-assign]
    with pytest.raises(DoneAlongside):
        commit(dest, manifest_of("this-run"))
    assert read_manifest(dest, "calls/a.wav").run_id == "other-run"


def test_with_nothing_beside_it_a_run_records_its_success_over_an_old_version(dest: Store) -> None:
    dest.write_bytes(manifest_name("calls/a.wav"), manifest_of("old-run", version="v0").encode())
    written = commit(dest, manifest_of("this-run"))
    assert written.status == "succeeded"
    stored = read_manifest(dest, "calls/a.wav")
    assert (stored.run_id, stored.input.version, stored.outputs) == ("this-run", "v1", ["calls/a.wav.json"])


def test_a_manifest_of_other_settings_written_meanwhile_is_replaced_by_the_outputs_now_in_place(dest: Store) -> None:
    """Not the same work: this run's outputs replaced the other's, so its manifest must describe them."""
    other = manifest_of("other-run", settings_hash="other")
    when_outputs_are_written(dest, lambda: dest.write_bytes(manifest_name("calls/a.wav"), other.encode()))
    commit(dest, manifest_of("this-run"))
    assert read_manifest(dest, "calls/a.wav").run_id == "this-run"


def test_a_store_without_conditional_writes_still_records_the_success(
    dest: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without hard links, an S3 look-alike answering NotImplemented: the manifest is written plainly."""

    def unsupported(*_args: object) -> None:
        raise ConditionalWritesUnsupported("no conditional writes here")

    dest.write_bytes(manifest_name("calls/a.wav"), manifest_of("old-run", version="v0").encode())
    monkeypatch.setattr(dest, "create_exclusive", unsupported)
    monkeypatch.setattr(dest, "delete_if_version", unsupported)
    commit(dest, manifest_of("this-run"))
    assert read_manifest(dest, "calls/a.wav").run_id == "this-run"


class RefuseConditions(StripConditions):
    """An S3 look-alike that answers 501 NotImplemented to any request with If-None-Match or If-Match, as stores
    without conditional writes do; everything else goes on to moto's server."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.RequestHandlerClass = RefuseConditionsHandler
        self.refused = 0


class RefuseConditionsHandler(StripHandler):
    stripped = ()

    def _forward(self) -> None:
        if "If-None-Match" in self.headers or "If-Match" in self.headers:
            self.server.refused += 1
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._answer(501, [], b"<Error><Code>NotImplemented</Code><Message>no conditions</Message></Error>")
            return
        self._answer(*self._relay())

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def test_a_store_that_answers_not_implemented_to_conditions_is_written_plainly_and_refused_claims(
    cli,
    bucket: str,  # noqa: F811
    moto_url: str,  # noqa: F811
    tiny_en: str,
    tmp_path: Path,
) -> None:
    proxy = RefuseConditions(moto_url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    put(bucket, "in/memo.mp3", speak(ENGLISH, tmp_path / "memo.mp3").read_bytes())
    common = ("--out", f"s3://{bucket}/out", "--model", tiny_en, "--device", "cpu", "--no-align")
    endpoint = ("--s3-endpoint-url", f"http://127.0.0.1:{proxy.server_address[1]}")
    try:
        done = cli("run", f"s3://{bucket}/in", *common, *endpoint)
        claimed = cli("run", f"s3://{bucket}/in", *common, *endpoint, "--claim", "--force")
    finally:
        proxy.shutdown()
    assert done.exit_code == 0, done.stderr
    assert proxy.refused >= 1  # the manifest's conditional create was tried, then written plainly
    stored = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="out/memo.mp3.manifest.json")["Body"].read())
    assert stored["status"] == "succeeded"
    assert claimed.exit_code == 2 and "cannot write on a condition" in claimed.stderr, claimed.stderr


def test_a_newer_version_recorded_by_a_run_beside_this_one_is_not_overwritten_by_the_older(
    dest: Store, tmp_path: Path
) -> None:
    """This run read the file, then it was replaced and a run beside this one did the new version: this run's
    older outcome is stale. It leaves the newer record (Superseded, counted skipped), as long as SOURCE holds
    that version; when SOURCE holds neither, this run's record stands (the next change redoes it anyway)."""
    from batch.run.outputs import Superseded

    source = LocalStore(str(tmp_path / "in"))
    (tmp_path / "in" / "calls").mkdir(parents=True)
    (tmp_path / "in" / "calls" / "a.wav").write_bytes(b"new")
    now = source.current_version("calls/a.wav")
    assert now is not None
    dest.write_bytes(manifest_name("calls/a.wav"), manifest_of("other-run", version=now).encode())

    def holds_now(version: str) -> bool:
        return source.current_version("calls/a.wav") == version

    mine = manifest_of("this-run", version="older")
    with pytest.raises(Superseded):
        write_file(
            dest, mine, Stopwatch(), TRANSCRIPT, ("json",), None, run_started_at=RUN_STARTED, holds_now=holds_now
        )
    assert read_manifest(dest, "calls/a.wav").input.version == now
    (tmp_path / "in" / "calls" / "a.wav").unlink()  # SOURCE holds neither now
    write_file(dest, mine, Stopwatch(), TRANSCRIPT, ("json",), None, run_started_at=RUN_STARTED, holds_now=holds_now)
    assert read_manifest(dest, "calls/a.wav").run_id == "this-run"


def test_a_manifest_whose_write_landed_but_whose_answer_was_lost_counts_as_written(
    bucket: str,  # noqa: F811
    moto_url: str,  # noqa: F811
) -> None:
    """The manifest's create lands, and the answer to it and to every write after it is lost (botocore's retry of
    the create finds its own condition failed, 412): the file is written, this run's manifest is there, and it is
    counted so, not failed beside a manifest that says it succeeded."""
    from batch.storage.s3 import make_client
    from tests.run.test_claims_s3 import LoseFirstAnswer, LoseFirstAnswerHandler

    class LoseEveryManifestAnswer(LoseFirstAnswerHandler):
        def _forward(self) -> None:
            answer = self._relay()
            if self.command == "PUT" and self.path.endswith(".manifest.json"):
                self.server.lost.append(self.path)
                self.close_connection = True
                return
            self._answer(*answer)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    proxy = LoseFirstAnswer(moto_url, "If-None-Match")
    proxy.RequestHandlerClass = LoseEveryManifestAnswer
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        dest = open_store(f"s3://{bucket}/out", client=make_client(f"http://127.0.0.1:{proxy.server_address[1]}"))
        written = commit(dest, manifest_of("this-run"))
    finally:
        proxy.shutdown()
    assert proxy.lost and set(proxy.lost) == {f"/{bucket}/out/calls/a.wav.manifest.json"}
    assert written.status == "succeeded"
    assert read_manifest(open_store(f"s3://{bucket}/out"), "calls/a.wav").run_id == "this-run"
