"""Playing one scenario: its places made, its inputs written, each round's runs started with its faults (HTTP
rules in the proxy, signals and kill -9 at anchored times, inputs changed and events sent while the runs work),
then a clean final round, and the checks of `soak.checks` over what was left.
"""

from __future__ import annotations

import json
import os
import pprint
import random
import secrets
import shlex
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soak import checks
from soak.inputs import Clips, own_fault
from soak.places import Places, Version, claim_wait_seconds
from soak.plan import (
    CLAIM_TTL_SECONDS,
    VISIBILITY_SECONDS,
    EventSend,
    InputPlan,
    Mutation,
    ProcessFault,
    RoundPlan,
    Scenario,
)
from soak.proxy import FaultProxy
from soak.runs import RUN_DEADLINE_SECONDS, SOAK_OWNER, Run, RunResult, kill_tagged, python

TIMER_SLACK_SECONDS = 30.0
VERSION_WRITE_WAIT_SECONDS = 60.0  # an event of a version written in the round waits this long, at most, for its write


@dataclass
class Bench:
    """What every scenario of a soak shares: moto's server, the proxy in front of it, direct clients, the clips,
    the model, and the secrets set in the runs' environment (which must never come out of them)."""

    moto_url: str
    proxy: FaultProxy
    s3: Any
    sqs: Any
    clips: Clips
    model: str
    workdir: Path
    project: Path
    secrets: dict[str, str]


@dataclass
class SentMessage:
    tag: str  # first | duplicate | late | out_of_order | removal | test | poison
    form: str
    versions: dict[str, Version | None]  # key -> the version it names (None: no version of it exists)
    body: str


@dataclass
class Ledger:
    """Everything a scenario did and saw, for the checks."""

    scenario: Scenario
    places: Places
    runs: list[RunResult] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # fault kinds not played, with why
    violations: list[checks.Violation] = field(default_factory=list)
    messages: dict[str, SentMessage] = field(default_factory=dict)
    changes: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # key -> (when, what)
    secrets: dict[str, str] = field(default_factory=dict)
    best: dict[str, Version] = field(default_factory=dict)  # key -> the newest version a succeeded manifest named
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violate(self, invariant: str, detail: str, key: str | None = None, run: str | None = None) -> None:
        """Record a violation, once: a fault seen again after the next round is the same finding."""
        violation = checks.Violation(invariant, detail, key, run)
        with self.lock:
            if violation not in self.violations:
                self.violations.append(violation)

    def changed(self, key: str, what: str) -> None:
        with self.lock:
            self.changes.setdefault(key, []).append((time.monotonic(), what))


def play(scenario: Scenario, bench: Bench) -> Ledger:
    workdir = bench.workdir / f"seed{scenario.seed}-s{scenario.index}"
    shutil.rmtree(workdir, ignore_errors=True)
    _reset_moto(bench)
    places = Places(scenario, workdir, bench.s3, bench.sqs)
    ledger = Ledger(scenario, places, secrets=dict(bench.secrets))
    rng = random.Random(f"soak-play:{scenario.seed}:{scenario.index}")
    try:
        places.create()
        if scenario.dest == "tmpfs" and not places.mounted(places.dest_dir):
            ledger.skipped.append(f"dest_full: mounting a small tmpfs failed ({places.mount_problem})")
        elif scenario.dest == "tmpfs":
            ledger.faults["dest_full"] += 1
        if scenario.spool_full and not places.mounted(places.spool_dir):
            ledger.skipped.append(f"spool_full: mounting a small tmpfs failed ({places.mount_problem})")
        elif scenario.spool_full:
            ledger.faults["spool_full"] += 1
        bench.proxy.reset(places.proxy_places())
        bench.proxy.on_delete = lambda message: checks.message_deleted(ledger, message)
        for item in scenario.inputs:
            if not item.arrives:
                _write_input(ledger, bench, item, item.words[0] if item.words else None, rng)
                _count_input_faults(ledger, item)
        for number, plan in enumerate(scenario.rounds):
            if plan.final:
                _before_final(ledger, bench)
            _play_round(ledger, bench, number, plan, rng)
            checks.after_round(ledger, number, bench.proxy.log)
        checks.at_the_end(ledger, bench.proxy.log)
    finally:
        ledger.faults.update(bench.proxy.log.faults)
        _keep_logs(ledger)
        bench.proxy.disarm()
        bench.proxy.on_delete = lambda message: None
        leftovers = kill_tagged(_tag_prefix(scenario) + "r")
        if leftovers:
            ledger.violate("stuck", f"{len(leftovers)} processes of the scenario's runs were still alive at its end")
        places.tear_down()
    return ledger


def _keep_logs(ledger: Ledger) -> None:
    """The scenario's plan, each run's command and log, and what was found, beside its files (for a replay)."""
    folder = ledger.places.workdir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scenario.txt").write_text(pprint.pformat(ledger.scenario, width=120) + "\n")
    for run in ledger.runs:
        head = (
            f"{shlex.join(run.command)}\nexit {run.exit_code} signals {run.signals} workers hurt {run.worker_faults}\n"
        )
        (folder / f"{run.tag}.log").write_text(head + "\n".join(run.lines) + "\n")
    found = [violation.line() for violation in ledger.violations]
    document = {"violations": found, "faults": dict(ledger.faults), "not played": ledger.skipped}
    (folder / "found.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))


def _reset_moto(bench: Bench) -> None:
    import urllib.request

    request = urllib.request.Request(f"{bench.moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=30).read()


def _count_input_faults(ledger: Ledger, item: InputPlan) -> None:
    if item.own_fault:
        ledger.faults[f"input_{item.kind}"] += 1
    if item.kind == "long":
        ledger.faults["input_long_recording"] += 1
    name = item.key.rsplit("/", 1)[-1]
    if len(name.encode("utf-8", "surrogateescape")) >= 250 or len(item.key.encode("utf-8", "surrogateescape")) > 900:
        ledger.faults["input_name_at_limit"] += 1
    elif not name.startswith(("rec", "late")):
        ledger.faults["input_odd_name"] += 1


def _content(bench: Bench, item: InputPlan, word: str | None, rng: random.Random) -> bytes:
    if item.kind == "speech":
        assert word is not None
        return bench.clips.speech(word, item.container)
    if item.kind == "long":
        assert word is not None
        return bench.clips.long(word, item.long_minutes)
    if item.kind == "note":
        return b"a note beside the recordings\n"
    return own_fault(item.kind, rng)


def _write_input(
    ledger: Ledger, bench: Bench, item: InputPlan, word: str | None, rng: random.Random, in_place: bool = False
) -> Version:
    version = ledger.places.write(item, _content(bench, item, word, rng), word, in_place)
    ledger.changed(item.key, "written in place" if in_place else "written")
    return version


# --- a round -----------------------------------------------------------------------------------------------------


def _play_round(ledger: Ledger, bench: Bench, number: int, plan: RoundPlan, rng: random.Random) -> None:
    scenario = ledger.scenario
    bench.proxy.arm(plan.rules, seed=f"{scenario.seed}:{scenario.index}:{number}")
    started = time.monotonic()
    for event in plan.events:
        if event.at <= 0:
            _send(ledger, event)
    runs = [_start(ledger, bench, number, plan, index) for index in range(scenario.runs_per_round)]
    timers = [
        threading.Thread(target=_at, args=(started + m.at, _mutate, ledger, bench, m, rng)) for m in plan.mutations
    ]
    timers += [threading.Thread(target=_at, args=(started + e.at, _send, ledger, e)) for e in plan.events if e.at > 0]
    timers += [threading.Thread(target=_hurt, args=(ledger, runs[f.run], f)) for f in plan.processes]
    for timer in timers:
        timer.daemon = True
        timer.start()
    deadline = started + RUN_DEADLINE_SECONDS
    for run in runs:
        run.wait(deadline)
    for timer in timers:
        timer.join(TIMER_SLACK_SECONDS)
    bench.proxy.disarm()
    for run in runs:
        result = run.result
        result.report = _report(ledger.places, result.run_id)
        metrics = ledger.places.workdir / "metrics" / f"{result.tag}.prom"
        result.metrics_text = metrics.read_text() if metrics.exists() else None
        ledger.runs.append(result)


def _at(when: float, action: Any, *arguments: Any) -> None:
    time.sleep(max(0.0, when - time.monotonic()))
    action(*arguments)


def _mutate(ledger: Ledger, bench: Bench, mutation: Mutation, rng: random.Random) -> None:
    item = ledger.scenario.input(mutation.key)
    if mutation.action == "delete":
        ledger.places.delete(item.key)
        ledger.changed(item.key, "deleted")
        ledger.faults["deleted_while_in_work"] += 1
        return
    in_place = mutation.in_place and ledger.scenario.mode == "folder" and mutation.action == "overwrite"
    _write_input(ledger, bench, item, mutation.word, rng, in_place)
    ledger.faults["arrived_while_in_work" if mutation.action == "create" else "overwritten_while_in_work"] += 1


def _send(ledger: Ledger, event: EventSend) -> None:
    places = ledger.places
    if event.form == "event" and event.word is not None:  # a version's event comes once it is written
        for key in event.keys:
            places.wait_for_version(key, event.word, VERSION_WRITE_WAIT_SECONDS)
    versions: dict[str, Version | None] = {}
    for key in event.keys:
        named = places.versions.get(key, [])
        versions[key] = next((v for v in named if v.word == event.word), None) if event.word else places.current(key)
    if event.form == "event":
        body = places.event_body(event.keys, word=event.word)
    elif event.form == "removal":
        body = places.event_body(event.keys, removal=True)
    elif event.form == "source":
        body = json.dumps({"source": f"s3://{places.source_bucket}/{event.keys[0]}"}, ensure_ascii=False)
    elif event.form == "test":
        body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": places.source_bucket})
    else:
        body = _poison(ledger)
    message_id = places.send(body)
    with ledger.lock:
        ledger.messages[message_id] = SentMessage(event.tag, event.form, versions, body)
    if event.tag in ("duplicate", "late", "out_of_order", "poison"):
        ledger.faults[f"event_{event.tag}"] += 1


def _poison(ledger: Ledger) -> str:
    """A message that names no object: not JSON, a stray document, or a presigned URL (whose signature is a
    secret: it must not come out in a log)."""
    rng = random.Random(f"poison:{ledger.scenario.seed}:{ledger.scenario.index}:{len(ledger.messages)}")
    choice = rng.randrange(3)
    if choice == 0:
        return "this is not an S3 event"
    if choice == 1:
        return json.dumps({"hello": "world"})
    signature = secrets.token_hex(32)
    ledger.secrets[f"presigned signature {len(ledger.secrets)}"] = signature
    bucket = ledger.places.source_bucket
    return json.dumps(
        {
            "source": f"https://{bucket}.s3.amazonaws.com/calls/x.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature={signature}"
        }
    )


def _hurt(ledger: Ledger, run: Run, fault: ProcessFault) -> None:
    """A process fault at its anchor (the run started, its models loaded, its first file counted) plus a delay;
    none when the run has ended first."""
    anchor, ended = run.anchors[fault.anchor], run.anchors["ended"]
    while not anchor.wait(0.1):
        if ended.is_set() or run.process.poll() is not None:
            return
    if ended.wait(fault.delay) or run.process.poll() is not None:
        return
    if fault.kind == "kill9":
        run.send(signal.SIGKILL)
    elif fault.kind == "sigterm":
        run.send(signal.SIGTERM)
    elif fault.kind == "sigterm_twice":
        run.send(signal.SIGTERM)
        if not ended.wait(0.5):
            run.send(signal.SIGTERM)
    else:
        workers = sorted(run.workers())
        if not workers:
            return
        signum = signal.SIGKILL if fault.kind == "kill9_worker" else signal.SIGTERM
        try:
            os.kill(workers[0], signum)
        except ProcessLookupError:
            return
        run.result.worker_faults.append(fault.kind)
    ledger.faults[fault.kind] += 1


def _start(ledger: Ledger, bench: Bench, number: int, plan: RoundPlan, index: int) -> Run:
    scenario, places = ledger.scenario, ledger.places
    tag = f"{_tag_prefix(scenario)}r{number}p{index}"
    metrics = places.workdir / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    command = [python(), "-m", "batch", "run"]
    command += ["--queue", places.queue_url] if scenario.mode == "queue" else [places.source_url]
    command += ["--out", places.dest_url, "--model", bench.model, "--device", "cpu", "--no-align"]
    command += ["--log-format", "json", "--metrics-textfile", str(metrics / f"{tag}.prom"), "--keep-run-reports", "0"]
    command += ["--prefetch", str(scenario.prefetch), "--grace-seconds", str(scenario.grace_seconds)]
    command += ["--progress-interval", "0"]
    if places.mounted(places.spool_dir):
        command += ["--spool-dir", str(places.spool_dir)]
    command += ["--workers", "2", "--threads", "2"] if scenario.workers > 1 else ["--threads", "1"]
    if scenario.parallel == "claims":
        command += ["--claim", "--claim-ttl", str(CLAIM_TTL_SECONDS)]
    if scenario.parallel == "shards":
        command += ["--shard", f"{index}/2"]
    if scenario.mode == "queue":
        # The clean final run waits past the visibility timeout, so that what comes back (a poison message on
        # its way to the dead letters) is received again by it.
        idle = VISIBILITY_SECONDS + 3 if plan.final else scenario.queue_idle
        command += ["--queue-idle", str(idle)]
    result = RunResult(tag, number, plan.final, command)
    return Run(result, _environment(bench, tag), bench.project)


def _environment(bench: Bench, tag: str) -> dict[str, str]:
    keep = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("WHISPERX_BATCH_", "AWS_", "HF_", "HUGGING"))
    }
    return keep | {
        "PYTHONPATH": str(bench.project),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYANNOTE_METRICS_ENABLED": "0",
        "AWS_ACCESS_KEY_ID": bench.secrets["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": bench.secrets["AWS_SECRET_ACCESS_KEY"],
        "AWS_SESSION_TOKEN": bench.secrets["AWS_SESSION_TOKEN"],
        "HF_TOKEN": bench.secrets["HF_TOKEN"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": bench.proxy.url,
        "AWS_SDK_UA_APP_ID": tag,
        "SOAK_RUN_TAG": tag,
        "SOAK_OWNER": SOAK_OWNER,
    }


def _tag_prefix(scenario: Scenario) -> str:
    return f"soak{scenario.seed}s{scenario.index}"


def _report(places: Places, run_id: str | None) -> dict[str, Any] | None:
    if run_id is None:
        return None
    body = places.dest_files().get(f"_runs/{run_id}.json")
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _before_final(ledger: Ledger, bench: Bench) -> None:
    """The faults are over: DEST gets room, what dead runs held comes back (messages past their visibility,
    claims past their TTL)."""
    places, scenario = ledger.places, ledger.scenario
    places.grow()
    hurt = any(run.killed or run.stuck or run.worker_faults for run in ledger.runs)
    if scenario.parallel == "claims" and (hurt or places.claims_left()):
        # Claims of a run killed outright, or whose release was lost, expire after their TTL: the protocol's own
        # bound, not a guess. (A claim left by a run that exited is a violation of its own, found already.)
        time.sleep(claim_wait_seconds())
    if scenario.mode == "queue":
        deadline = time.monotonic() + VISIBILITY_SECONDS * 4 + 30
        while places.queue_counts(places.queue_url)[1] and time.monotonic() < deadline:
            time.sleep(0.25)
