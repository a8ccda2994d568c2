"""The soak's own parts, quickly (these run by default): the fault proxy's seam, how a transcript is told by its
code word, scenarios drawn from their seed alone, checks that catch a stale transcript, a queue message deleted
too early and a succeeded manifest replaced by a failure, and the figures' section of docs/reliability.md rewritten
alone."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from moto.server import ThreadedMotoServer
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from soak import checks
from soak import scenario as scenario_module
from soak.driver import Results
from soak.figures import BEGIN, END, write_doc
from soak.places import Places, Version
from soak.plan import EventSend, draw
from soak.proxy import FaultProxy, FaultRule, Place, ProxyLog, ReceivedMessage
from soak.runs import SOAK_OWNER, RunResult, kill_tagged
from soak.scenario import Ledger, SentMessage

CREDENTIALS = {"aws_access_key_id": "k", "aws_secret_access_key": "s", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fronting = FaultProxy(f"http://{host}:{port}")
    yield fronting
    fronting.close()
    server.stop()


def client(service: str, proxy: FaultProxy, run: str) -> object:
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, user_agent_appid=run, read_timeout=10)
    return boto3.client(service, endpoint_url=proxy.url, config=config, **CREDENTIALS)


def test_the_proxy_answers_faults_by_rule_and_forwards_the_rest(proxy: FaultProxy) -> None:
    s3 = client("s3", proxy, "r1")
    s3.create_bucket(Bucket="src")
    s3.create_bucket(Bucket="dst")
    proxy.reset([Place("source", "src", "in/"), Place("dest", "dst", "out/")])
    s3.put_object(Bucket="src", Key="in/a.wav", Body=b"a")
    proxy.arm([FaultRule("s3_slowdown", "source", 0, float("inf"), 1.0)], seed="t")
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket="src", Key="in/a.wav")
    assert refused.value.response["Error"]["Code"] == "SlowDown"
    s3.put_object(Bucket="dst", Key="out/a.wav.json", Body=b"{}")  # DEST is not under the rule
    proxy.arm([FaultRule("s3_lost_response", "dest_manifests", 0, float("inf"), 1.0)], seed="t")
    with pytest.raises(ConnectionClosedError):
        s3.put_object(Bucket="dst", Key="out/a.wav.manifest.json", Body=b"{}")
    proxy.disarm()
    assert s3.get_object(Bucket="dst", Key="out/a.wav.manifest.json")["Body"].read() == b"{}"  # it took effect
    assert s3.get_object(Bucket="src", Key="in/a.wav")["Body"].read() == b"a"
    assert proxy.log.faults == {"s3_slowdown": 1, "s3_lost_response": 1}
    assert proxy.log.faults_by_run[("r1", "PutObject")] == 1


def test_the_proxy_sees_which_message_a_run_deletes(proxy: FaultProxy) -> None:
    sqs = client("sqs", proxy, "r2")
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    proxy.reset([])
    sent = sqs.send_message(QueueUrl=url, MessageBody="hello")["MessageId"]
    proxy.arm([FaultRule("sqs_throttling", "queue", 0, float("inf"), 1.0, ops=("ReceiveMessage",))], seed="t")
    with pytest.raises(ClientError) as throttled:
        sqs.receive_message(QueueUrl=url)
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    proxy.disarm()
    deleting = []
    proxy.on_delete = deleting.append
    (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert [(m.message_id, m.body, m.run) for m in deleting] == [(sent, "hello", "r2")]
    assert proxy.log.received["r2"] == 1 and proxy.log.deleted["r2"] == 1


def test_a_transcript_is_told_by_its_code_word() -> None:
    words = {"wagon", "river", "forest", "tiger"}
    assert checks.says("Coldware did waggon. I repeat, waggon.", "wagon", words)
    assert checks.says("The code word is river. I repeat river.", "river", words)
    assert not checks.says("The code word is river. I repeat river.", "forest", words)
    assert not checks.says("", "tiger", words)


def test_a_scenario_is_drawn_from_its_seed_alone() -> None:
    assert draw(5, 3) == draw(5, 3)
    assert draw(5, 3) != draw(5, 4)
    modes = {draw(1, index).mode for index in range(40)}
    assert modes == {"folder", "s3", "queue"}


def test_a_succeeded_manifest_with_the_old_versions_transcript_is_a_violation(tmp_path: Path) -> None:
    scenario = next(s for s in (draw(9, index) for index in range(100)) if s.mode == "folder" and s.dest == "local")
    places = Places(scenario, tmp_path, s3=None, sqs=None)
    places.create()
    item = scenario.inputs[0]
    item.kind, item.words = "speech", ["river", "forest"]
    old = places.write(item, b"first", "river")
    places.write(item, b"second", "forest")
    ledger = Ledger(scenario, places)
    transcript = {"segments": [{"text": "The code word is river. I repeat, river."}]}
    manifest = {
        "status": "succeeded",
        "input": {"key": item.key, "size": 6, "version": places.current(item.key).token, "fingerprint": None},
        "outputs": ["t.json"],
        "run_id": "r",
    }
    (tmp_path / "out" / "t.json").write_text(json.dumps(transcript))
    (tmp_path / "out" / "t.manifest.json").write_text(json.dumps(manifest))
    checks._succeeded_manifests(ledger, places.dest_files(), "now")
    assert [v.invariant for v in ledger.violations] == ["transcript_version"]
    assert "'forest'" in ledger.violations[0].detail

    manifest["input"] |= {"size": old.size, "version": old.token}  # the old version, and its own transcript
    (tmp_path / "out" / "t.manifest.json").write_text(json.dumps(manifest))
    ledger.violations.clear()
    checks._succeeded_manifests(ledger, places.dest_files(), "now")
    assert ledger.violations == []


def test_the_figures_replace_only_their_section(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Title\n\nbefore\n\n{BEGIN}\nold figures\n{END}\n\nafter\n")
    results = Results(seed=3)
    results.faults.update({"kill9": 2, "s3_503": 5})
    write_doc(results, doc)
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "old figures" not in text and "| kill9 | 2 |" in text and "| faults injected | 7 |" in text


def test_a_message_deleted_before_its_version_has_a_manifest_is_a_violation(tmp_path: Path) -> None:
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "queue" and s.dest == "local")
    places = Places(scenario, tmp_path, s3=None, sqs=None)
    (tmp_path / "out").mkdir(parents=True)
    item = scenario.inputs[0]
    item.kind, item.words = "speech", ["river", "forest"]
    old, new = (Version(item.key, word, 5, word, f"etag-{word}", 0.0) for word in item.words)
    places.versions[item.key] = [old, new]
    ledger = Ledger(scenario, places)
    ledger.messages["m1"] = SentMessage("first", "event", {item.key: new}, "{}")
    deleting = ReceivedMessage("m1", "{}", "run", 0.0)

    checks.message_deleted(ledger, deleting)  # no manifest at all
    manifest = {"status": "succeeded", "input": {"key": item.key, "size": 5, "version": "etag-river"}}
    (tmp_path / "out" / "m.manifest.json").write_text(json.dumps(manifest))
    checks.message_deleted(ledger, deleting)  # the manifest of the version before the one the message names
    manifest["input"]["version"] = "etag-forest"
    (tmp_path / "out" / "m.manifest.json").write_text(json.dumps(manifest))
    checks.message_deleted(ledger, deleting)  # its own version: as it should be
    details = [v.detail for v in ledger.violations]
    assert [v.invariant for v in ledger.violations] == ["message_deleted_early"] * 2
    assert "no manifest" in details[0] and "'forest'" in details[1] and "'river'" in details[1]


def test_a_succeeded_manifest_replaced_by_a_failure_of_its_own_version_is_a_violation(tmp_path: Path) -> None:
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "queue" and s.dest == "local")
    places = Places(scenario, tmp_path, s3=None, sqs=None)
    (tmp_path / "out").mkdir(parents=True)
    item = scenario.inputs[0]
    item.kind, item.words = "speech", ["river", "forest"]
    places.versions[item.key] = [Version(item.key, "river", 5, "river", "etag-river", 0.0)]
    ledger = Ledger(scenario, places)
    manifest = {"status": "succeeded", "input": {"key": item.key, "size": 5, "version": "etag-river"}}
    (tmp_path / "out" / "m.manifest.json").write_text(json.dumps(manifest))
    checks._regressions(ledger, places.dest_files(), "round 0")
    places.deleted[item.key] = 1.0  # the object is gone; a late event for it comes
    manifest["status"] = "failed"
    (tmp_path / "out" / "m.manifest.json").write_text(json.dumps(manifest))
    checks._regressions(ledger, places.dest_files(), "round 1")
    assert [v.invariant for v in ledger.violations] == ["manifest_regressed"]

    ledger.violations.clear()  # a newer version written since: its redo may replace the manifest
    places.versions[item.key].append(Version(item.key, "forest", 6, "forest", "etag-forest", 1.0))
    (tmp_path / "out" / "m.manifest.json").unlink()
    checks._regressions(ledger, places.dest_files(), "round 2")
    assert ledger.violations == []


def test_a_failure_reported_as_not_the_files_own_is_not_recorded_against_it(tmp_path: Path) -> None:
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "s3" and s.dest == "local")
    places = Places(scenario, tmp_path, s3=None, sqs=None)
    (tmp_path / "out").mkdir(parents=True)
    item = scenario.inputs[0]
    item.kind, item.words = "speech", ["river"]
    ledger = Ledger(scenario, places)
    run = RunResult("r0", 0, False, [], run_id="run-1")
    elsewhere = {"type": "ClientError", "message": "not the file's fault, so no manifest: 503", "file_problem": False}
    run.report = {"failed": [{"key": item.key, "error": elsewhere}] * 2}
    checks._failures(ledger, run)  # the run said the fault was not the file's, twice (it came back): no manifest
    assert ledger.violations == []

    run.report = {"failed": [{"key": item.key, "error": elsewhere | {"file_problem": True}}]}
    checks._failures(ledger, run)  # a sound file's failure reported as its own
    in_dest = elsewhere | {"message": "recorded in DEST"}
    manifest = {"status": "failed", "run_id": "run-1", "input": {"key": item.key}, "error": in_dest}
    (tmp_path / "out" / "m.manifest.json").write_text(json.dumps(manifest))
    ledger.runs.append(run)
    checks._failed_manifests(ledger, places.dest_files())  # a failed manifest is the file's failure, whatever it says
    assert [v.invariant for v in ledger.violations] == ["not_own_failure"] * 2


def test_a_run_that_left_files_for_the_next_run_is_expected_to_exit_3() -> None:
    left = {"key": "a.wav", "error": {"type": "AccessDenied", "message": "denied", "file_problem": False}}
    assert checks._expected_exit({"failed": [left], "left_for_next_run": [left]}) == 3
    assert checks._expected_exit({"failed": [left]}) == 1
    assert checks._expected_exit({"stopped_by_signal": 15, "left_for_next_run": [left]}) == 143


def test_a_run_stopped_by_a_signal_before_its_start_line_owes_no_report(tmp_path: Path) -> None:
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "s3")
    ledger = Ledger(scenario, Places(scenario, tmp_path, s3=None, sqs=None))
    warning = {"logger": "batch.cli.console", "run_id": "R1", "message": "signal 15: finishing the current file"}
    run = RunResult("r0", 0, False, [], exit_code=143, signals=["SIGTERM"], run_id="R1", lines=[json.dumps(warning)])
    checks._agreement(ledger, run, {}, [run], None)  # stopped during the start-up checks: no run to report
    assert ledger.violations == []
    started = {"logger": "batch.run.job", "run_id": "R1", "message": "run R1: s3://b/in/ -> out, model tiny"}
    run.lines.insert(0, json.dumps(started))
    checks._agreement(ledger, run, {}, [run], None)  # it began: its report is owed
    assert [v.invariant for v in ledger.violations] == ["run_agreement"]


def test_a_receive_in_flight_when_a_run_is_abandoned_is_not_owed_by_its_report(tmp_path: Path) -> None:
    """Seed 7 scenario 0: with --grace-seconds 0 a run is abandoned at SIGTERM, its report written while a receive
    is in flight; the message handed after that is named nowhere in its log, and only such a message may be
    missing from the report's count. A message the run logged must be counted, abandoned or not."""
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "queue")
    ledger = Ledger(scenario, Places(scenario, tmp_path, s3=None, sqs=None))
    log = ProxyLog()
    for message_id in ("m1", "m2"):
        log.receipts[f"receipt-{message_id}"] = ReceivedMessage(message_id, "{}", "r0", 0.0)
        log.received["r0"] += 1
    taken = {"logger": "batch.run.work.queue", "message": "queue message m1: 1 objects (receive 1)"}
    abandoned = {"logger": "batch.cli.console", "message": "grace period over: abandoning the file in progress"}
    run = RunResult("r0", 0, False, [], exit_code=143, lines=[json.dumps(taken), json.dumps(abandoned)])
    report = {"queue": {"received": 1, "deleted": 0, "returned": 1, "unreadable": 0}, "exit_code": 143}
    checks._queue_agrees(ledger, run, report, log)
    assert ledger.violations == []
    run.lines.pop()  # not abandoned: the report counts every message handed to it
    checks._queue_agrees(ledger, run, report, log)
    assert [v.invariant for v in ledger.violations] == ["run_agreement"]
    run.lines.append(json.dumps(abandoned))
    report["queue"] |= {
        "received": 0,
        "returned": 0,
    }  # m1, which its log names, not counted: abandoned or not, that disagrees
    checks._queue_agrees(ledger, run, report, log)
    assert [v.invariant for v in ledger.violations] == ["run_agreement"] * 2


def test_a_file_whose_message_the_dead_letters_hold_for_lost_receives_is_not_lost(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    """A sound message dead-lettered by receives whose answers the proxy dropped (SQS counts them) is judged by
    queue_leftovers, which excuses it; its file is with the operator, not lost. One dead-lettered for no such
    reason is a queue_leftovers violation, and its file lost."""
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "queue" and s.dest == "local")
    sqs = client("sqs", proxy, "harness")
    places = Places(scenario, tmp_path, s3=None, sqs=sqs)
    (tmp_path / "out").mkdir(parents=True)
    places.dead_letters_url = sqs.create_queue(QueueName="dead-letters-harness")["QueueUrl"]
    places.queue_url = sqs.create_queue(QueueName="empty-harness")["QueueUrl"]
    item = scenario.inputs[0]
    item.kind, item.words = "speech", ["river"]
    places.versions[item.key] = [Version(item.key, "river", 5, "river", "etag-river", 0.0)]
    ledger = Ledger(scenario, places)
    body = json.dumps({"source": f"s3://bucket/{item.key}"})
    ledger.messages["m1"] = SentMessage("first", "source", {item.key: places.current(item.key)}, body)
    sqs.send_message(QueueUrl=places.dead_letters_url, MessageBody=body)
    for other in scenario.inputs[1:]:
        other.kind = "note"  # not selected: no manifest owed
    log = ProxyLog()
    checks.at_the_end(ledger, log)
    assert {v.invariant for v in ledger.violations} == {"final_manifest", "queue_leftovers"}
    ledger.violations.clear()
    log.lost_receives["m1"] = 1
    checks.at_the_end(ledger, log)
    assert ledger.violations == []


def test_a_claim_outliving_its_run_is_a_violation_unless_a_run_killed_outright_took_it(tmp_path: Path) -> None:
    """Seed 35 scenario 5: a run killed -9 in round 0 left its claims, still within their TTL when round 1's runs
    (neither killed) exited; those are the TTL's to free. A claim of a run that exited is left behind."""
    scenario = next(s for s in (draw(35, index) for index in range(100)) if s.parallel == "claims" and s.dest != "s3")
    places = Places(scenario, tmp_path, s3=None, sqs=None)
    (tmp_path / "out" / "_claims").mkdir(parents=True)
    ledger = Ledger(scenario, places)
    killed = RunResult("r0p0", 0, False, [], killed=True, run_id="R-killed")
    exited = RunResult("r1p0", 1, False, [], exit_code=0, run_id="R-exited")
    ledger.runs += [killed, exited]
    claim = {"worker": "host:1", "run_id": "R-killed", "claimed_at": 0.0, "expires_at": 6.0}
    (tmp_path / "out" / "_claims" / "a.ogg.claim").write_text(json.dumps(claim))
    checks._claims(ledger, [exited], places.dest_files(), ProxyLog())
    assert ledger.violations == []

    (tmp_path / "out" / "_claims" / "b.ogg.claim").write_text(json.dumps(claim | {"run_id": "R-exited"}))
    checks._claims(ledger, [exited], places.dest_files(), ProxyLog())
    assert [v.invariant for v in ledger.violations] == ["claims_left"]
    assert "b.ogg.claim" in ledger.violations[0].detail and "a.ogg.claim" not in ledger.violations[0].detail


def test_an_abandoned_runs_report_need_not_count_a_manifest_it_was_writing(tmp_path: Path) -> None:
    """Seed 7 scenario 0: a run abandoned at SIGTERM (--grace-seconds 0) wrote its report, the outcome so far,
    while its writer thread finished a file's manifest. Not abandoned, that manifest must be counted."""
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "queue")
    ledger = Ledger(scenario, Places(scenario, tmp_path, s3=None, sqs=None))
    manifest = {"status": "succeeded", "run_id": "R1", "input": {"key": "calls/a.wav"}}
    files = {"calls/a.wav.manifest.json": json.dumps(manifest).encode()}
    report = {"run_id": "R1", "succeeded": [], "failed": []}
    abandoned = {"logger": "batch.cli.console", "message": "grace period over: abandoning the file in progress"}
    run = RunResult("r0", 0, False, [], exit_code=143, lines=[json.dumps(abandoned)])
    checks._manifests_agree(ledger, run, report, files, alone=False)
    assert ledger.violations == []
    run.lines = []
    checks._manifests_agree(ledger, run, report, files, alone=False)
    assert [v.invariant for v in ledger.violations] == ["run_agreement"]


def test_an_abandoned_runs_log_and_metrics_may_count_a_file_its_report_did_not_yet(tmp_path: Path) -> None:
    """Seed 7 scenario 0: the run's thread counted a file (its log line, its metrics) just after the abandoning
    thread wrote the report. An abandoned run's report may count less than its log and metrics, never more; a run
    not abandoned agrees exactly."""
    scenario = next(s for s in (draw(11, index) for index in range(100)) if s.mode == "queue")
    ledger = Ledger(scenario, Places(scenario, tmp_path, s3=None, sqs=None))
    counts = {"succeeded": 0, "skipped": 0, "failed": 0, "claimed_elsewhere": 0}
    report = {
        "run_id": "R1",
        "exit_code": 143,
        "stopped_by_signal": 15,
        "succeeded": [],
        "failed": [],
        "counts": counts,
    }
    registry = CollectorRegistry()
    Gauge("whisperx_batch_run_exit_code", "exit", registry=registry).set(143)
    Counter("whisperx_batch_files", "files", ["outcome"], registry=registry).labels("succeeded").inc()
    metrics = generate_latest(registry).decode()
    counted = {"logger": "batch.run.tally", "key": "a.wav", "event": "file", "status": "succeeded", "message": "ok"}
    abandoned = {"logger": "batch.cli.console", "message": "grace period over: abandoning the file in progress"}
    run = RunResult("r0", 0, False, [], exit_code=143, signals=["SIGTERM"], run_id="R1", report=report)
    run.lines, run.metrics_text = [json.dumps(abandoned), json.dumps(counted)], metrics
    checks._agreement(ledger, run, {}, [run], ProxyLog())
    assert ledger.violations == []
    run.lines.pop(0)  # not abandoned: the log's and the metrics' count of a.wav disagree with the report
    checks._agreement(ledger, run, {}, [run], ProxyLog())
    assert [v.invariant for v in ledger.violations] == ["run_agreement"] * 2


def test_the_event_of_a_version_is_sent_once_that_version_is_written(tmp_path: Path) -> None:
    """Seed 11 scenario 25: an overwrite's event, due 0.1 s after the overwrite began, went out while the new
    content was still being made; the run then found the old version, done, and deleted the message, and the new
    version had no event left. S3 notifies once an object is written: the soak's event waits for its write."""
    scenario = draw(11, 25)
    item = next(i for i in scenario.inputs if len(i.words) == 2)
    s3, sqs = StubS3(), StubSqs()
    places = Places(scenario, tmp_path, s3=s3, sqs=sqs)
    ledger = Ledger(scenario, places)
    event = EventSend(4.18, [item.key], form="event", word=item.words[1], tag="first")
    sender = threading.Thread(target=scenario_module._send, args=(ledger, event))
    sender.start()
    assert not sqs.sent.wait(1.0), "the event went out before its version was written"
    version = places.write(item, b"the new version", item.words[1])
    sender.join(10)
    (record,) = json.loads(sqs.bodies[0])["Records"]
    assert record["s3"]["object"]["eTag"] == version.token


class StubS3:
    def put_object(self, Bucket: str, Key: str, Body: bytes) -> dict:  # noqa: N803 - boto3's names
        return {"ETag": '"' + hashlib.md5(Body).hexdigest() + '"'}


class StubSqs:
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.sent = threading.Event()

    def send_message(self, QueueUrl: str, MessageBody: str) -> dict:  # noqa: N803 - boto3's names
        self.bodies.append(MessageBody)
        self.sent.set()
        return {"MessageId": f"m{len(self.bodies)}"}


def test_a_soak_kills_only_its_own_leftover_processes() -> None:
    """Two soaks on one machine replaying one seed tag their runs alike: each kills only the runs it started."""

    def sleeper(owner: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SOAK_RUN_TAG": "soak99s1r0p0", "SOAK_OWNER": owner}
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)

    mine, theirs = sleeper(SOAK_OWNER), sleeper("another-soak")
    try:
        assert kill_tagged("soak99s1r") == [mine.pid]
        assert mine.wait(timeout=30) == -9 and theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait()
