"""The invariants the soak holds the runner to, over DEST, the queue, the runs' logs, reports and metrics.

They read what the runner wrote as docs/outputs.md describes it (raw JSON, never the project's own decoders),
and what the soak knows to be true: every version of every input it wrote, when it changed or deleted one, which
faults it injected and where.

Each invariant is named as docs/reliability.md lists it, where each one's meaning is given.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from soak.inputs import words_in

if TYPE_CHECKING:
    from soak.proxy import ProxyLog, ReceivedMessage
    from soak.runs import RunResult
    from soak.scenario import Ledger

INVARIANTS = (
    "final_manifest",
    "transcript_version",
    "message_deleted_early",
    "queue_leftovers",
    "not_own_failure",
    "own_failure_record",
    "done_twice",
    "secret_leak",
    "run_agreement",
    "queue_accounting",
    "claims_left",
    "stuck",
    "final_exit",
    "manifest_regressed",
)
WORD_MATCH = 0.75  # how close a transcript's word must come to a code word (tiny.en spells some oddly)
POLLS_ALLOWED, POLLS_PER_SECOND = 20, 10  # far above a consumer's receives: one per message, long polls between
LONG, AT_THE_LIMIT = "a very long recording", "a name at the file system's limit"


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    key: str | None = None
    run: str | None = None

    def line(self) -> str:
        where = "".join(f" [{part}]" for part in (self.run, repr(self.key) if self.key else None) if part)
        return f"{self.invariant}{where}: {self.detail}"


# --- while the runs go: the queue's deletes -----------------------------------------------------------------------


def message_deleted(ledger: Ledger, message: ReceivedMessage) -> None:
    """Called by the proxy before a DeleteMessage goes through: each file the message names must have a manifest
    of the version the message names, or a newer one (or be gone from the drop bucket)."""
    sent = ledger.messages.get(message.message_id)
    if sent is None or sent.form in ("test", "removal"):
        return
    if sent.form == "poison":
        ledger.violate(
            "queue_leftovers",
            "a message that names no object was deleted, not left for the dead letters",
            run=message.run,
        )
        return
    places = ledger.places
    manifests = places.manifests()
    for key, named in sent.versions.items():
        item = ledger.scenario.input(key)
        if not item.selected or key in places.deleted:
            continue
        entry = manifests.get(key)
        if entry is None or entry[1] is None:
            ledger.violate(
                "message_deleted_early", f"its {sent.tag} message was deleted with no manifest of it", key, message.run
            )
            continue
        record = entry[1].get("input", {})
        found = places.version_of(key, record.get("version"), record.get("fingerprint"))
        versions = places.versions.get(key, [])
        if found is None:
            ledger.violate(
                "message_deleted_early",
                f"its message was deleted; the manifest names a version never written ({record})",
                key,
                message.run,
            )
        elif named is not None and versions.index(found) < versions.index(named):
            ledger.violate(
                "message_deleted_early",
                f"its message for the version saying {named.word!r} was deleted while the manifest names the older "
                f"version saying {found.word!r}",
                key,
                message.run,
            )


# --- after each round ---------------------------------------------------------------------------------------------


def after_round(ledger: Ledger, number: int, log: ProxyLog) -> None:
    files = ledger.places.dest_files()
    runs = [run for run in ledger.runs if run.round == number]
    _secrets(ledger, runs, files)
    _succeeded_manifests(ledger, files, f"after round {number}")
    _regressions(ledger, files, f"after round {number}")
    for run in runs:
        if run.stuck:
            ledger.violate(
                "stuck", f"did not end within its deadline; killed ({' '.join(run.command[4:6])})", run=run.tag
            )
            continue
        if not run.killed:
            _agreement(ledger, run, files, runs, log)
        _failures(ledger, run)
        _polls(ledger, run, log)
    _failed_manifests(ledger, files)
    _claims(ledger, runs, files, log)


def _secrets(ledger: Ledger, runs: list[RunResult], files: dict[str, bytes]) -> None:
    texts: list[tuple[str, str]] = []
    for run in runs:
        texts += [(f"{run.tag} stderr", "\n".join(run.lines)), (f"{run.tag} stdout", run.stdout)]
        texts.append((f"{run.tag} metrics", run.metrics_text or ""))
    texts += [(f"DEST/{name}", body.decode("utf-8", "replace")) for name, body in files.items()]
    for where, text in texts:
        for name, secret in ledger.secrets.items():
            if secret and secret in text:
                ledger.violate("secret_leak", f"{name} found in {where}")


def _transcript_text(body: bytes) -> str | None:
    try:
        return " ".join(segment.get("text", "") for segment in json.loads(body)["segments"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def says(text: str, word: str, others: set[str]) -> bool:
    """Whether a transcript says `word` (or Whisper's spelling of it) rather than any other code word."""

    def closeness(candidate: str) -> float:
        return max((SequenceMatcher(None, candidate, token).ratio() for token in words_in(text)), default=0.0)

    mine = closeness(word)
    return mine >= WORD_MATCH and all(closeness(other) < mine for other in others - {word})


def _succeeded_manifests(ledger: Ledger, files: dict[str, bytes], when: str) -> None:
    places = ledger.places
    every_word = {w for item in ledger.scenario.inputs for w in item.words}
    for key, (name, manifest) in places.manifests(files).items():
        if manifest is None:
            ledger.violate("transcript_version", f"{when}: {name} is not a whole manifest")
            continue
        if manifest.get("status") != "succeeded":
            continue
        record = manifest.get("input", {})
        version = places.version_of(key, record.get("version"), record.get("fingerprint"))
        if version is None and _rewritten_in_place(ledger, key):
            continue  # a state the file passed through while a client rewrote it: redone once it is whole
        if version is None:
            ledger.violate(
                "transcript_version", f"{when}: succeeded manifest names a version never written ({record})", key
            )
            continue
        item = ledger.scenario.input(key)
        if version.word is None:
            ledger.violate("transcript_version", f"{when}: an input of kind {item.kind} recorded as succeeded", key)
            continue
        outputs = manifest.get("outputs") or []
        missing = [output for output in outputs if output not in files]
        transcript = next((o for o in outputs if o.endswith(".json") and not o.endswith(".turns.json")), None)
        if not outputs or missing or transcript is None:
            ledger.violate(
                "transcript_version", f"{when}: succeeded, but outputs {missing or outputs} are not in DEST", key
            )
            continue
        text = _transcript_text(files[transcript])
        if text is None:
            ledger.violate("transcript_version", f"{when}: succeeded, but {transcript} is not a whole transcript", key)
        elif not says(text, version.word, every_word):
            ledger.violate(
                "transcript_version",
                f"{when}: the manifest names the version saying {version.word!r}, the transcript says {text.strip()!r}",
                key,
            )


def _rewritten_in_place(ledger: Ledger, key: str) -> bool:
    return any(what == "written in place" for _, what in ledger.changes.get(key, []))


def _regressions(ledger: Ledger, files: dict[str, bytes], when: str) -> None:
    """A succeeded manifest is replaced only by the outcome that supersedes it (a newer version's), never deleted
    ahead of it, nor replaced by a failure or an older version's."""
    places = ledger.places
    manifests = places.manifests(files)
    for key, best in list(ledger.best.items()):
        versions = places.versions.get(key, [])
        entry = manifests.get(key)
        manifest = entry[1] if entry else None
        record = (manifest or {}).get("input", {})
        found = places.version_of(key, record.get("version"), record.get("fingerprint")) if manifest else None
        newer = versions.index(best) < len(versions) - 1
        kept = manifest is not None and manifest.get("status") == "succeeded" and found is not None
        if kept and versions.index(found) >= versions.index(best):
            continue
        if newer or (found is None and manifest is not None and _rewritten_in_place(ledger, key)):
            continue  # superseded by a version written since, which a run is (or will be) doing
        now = "no manifest" if manifest is None else f"a {manifest.get('status')} manifest of {record}"
        ledger.violate(
            "manifest_regressed",
            f"{when}: its succeeded manifest of the version saying {best.word!r} was replaced by {now}, "
            "though no newer version was written",
            key,
        )
    for key, (_, manifest) in manifests.items():
        if manifest is None or manifest.get("status") != "succeeded":
            continue
        record = manifest.get("input", {})
        found = places.version_of(key, record.get("version"), record.get("fingerprint"))
        versions = places.versions.get(key, [])
        if found is not None and (key not in ledger.best or versions.index(found) >= versions.index(ledger.best[key])):
            ledger.best[key] = found


def _agreement(
    ledger: Ledger, run: RunResult, files: dict[str, bytes], round_runs: list[RunResult], log: ProxyLog
) -> None:
    report, code = run.report, run.exit_code
    if report is None:
        said = any("could not write the run report" in line or "run report" in line for line in run.lines)
        # A signal before the run began (its start line not logged yet: during the start-up checks, or while the
        # interpreter starts, before any handler is set) ends the program with no run to report.
        before_the_run = not run.began() and code in (130, 143, -2, -15) and bool(run.signals)
        if code not in (2, 3) and not said and not before_the_run:
            ledger.violate(
                "run_agreement", f"exit {code} and no run report in DEST/_runs/ (nor a word of why)", run=run.tag
            )
        return
    said = {
        "the report": report.get("exit_code"),
        "its counts": _expected_exit(report),
        "its metrics": _metrics_exit(run),
    }
    disagree = {where: value for where, value in said.items() if value is not None and value != code}
    if disagree:
        others = ", ".join(f"{where} {value}" for where, value in disagree.items())
        ledger.violate("run_agreement", f"exit {code}, but {others} ({_outcome(report)})", run=run.tag)
    if "SIGTERM" in run.signals and code not in (143, report.get("exit_code")):
        ledger.violate("run_agreement", f"SIGTERM sent, exit {code}", run=run.tag)
    logged, reported = Counter(run.file_events("succeeded")), Counter(report.get("succeeded", []))
    # An abandoned run's report is the outcome so far: its log may go on to count a file after it, never less.
    if not (reported <= logged) if _abandoned(run) else (logged != reported):
        ledger.violate(
            "run_agreement",
            f"log says succeeded {sorted(logged)}, report {sorted(report.get('succeeded', []))}",
            run=run.tag,
        )
    _metrics_agree(ledger, run, report)
    _queue_agrees(ledger, run, report, log)
    _manifests_agree(ledger, run, report, files, len(round_runs) == 1)


def _expected_exit(report: dict[str, Any]) -> int | None:
    if report.get("error"):
        return None  # the error's own code (2, 3), which the report carries
    if report.get("stopped_by_signal"):
        return 128 + int(report["stopped_by_signal"])
    if report.get("left_for_next_run"):
        return 3  # files whose manifest could not be read were left for the next run: retry it (docs/outputs.md)
    return 1 if report.get("failed") else 0


def _outcome(report: dict[str, Any]) -> str:
    counts = report.get("counts", {})
    return ", ".join(f"{name} {value}" for name, value in counts.items())


def _metrics_agree(ledger: Ledger, run: RunResult, report: dict[str, Any]) -> None:
    if run.metrics_text is None:
        ledger.violate("run_agreement", "no metrics text file", run=run.tag)
        return
    try:
        families = {family.name: family for family in text_string_to_metric_families(run.metrics_text)}
    except ValueError as exc:
        ledger.violate("run_agreement", f"metrics text file does not parse: {exc}", run=run.tag)
        return
    if _metrics_exit(run) is None:
        ledger.violate("run_agreement", f"exit {run.exit_code}, and no exit code in its metrics", run=run.tag)
    files = families.get("whisperx_batch_files")
    counted: Counter[str] = Counter()
    for sample in files.samples if files else []:
        if sample.name.endswith("_total"):
            counted[sample.labels.get("outcome", "")] += int(sample.value)
    for outcome, value in report.get("counts", {}).items():
        # An abandoned run's metrics may count a file its report (the outcome so far) did not yet, never less.
        if value > counted.get(outcome, 0) if _abandoned(run) else counted.get(outcome, 0) != value:
            ledger.violate(
                "run_agreement", f"report counts {outcome} {value}, metrics {counted.get(outcome, 0)}", run=run.tag
            )


def _metrics_exit(run: RunResult) -> int | None:
    try:
        families = text_string_to_metric_families(run.metrics_text or "")
        for family in families:
            if family.name == "whisperx_batch_run_exit_code" and family.samples:
                return int(family.samples[0].value)
    except ValueError:
        return None
    return None


def _abandoned(run: RunResult) -> bool:
    """Whether the run was abandoned when its grace period ran out: its report is then the outcome so far, written
    while a file's write may still be under way on the writer thread (its outputs, then its manifest, whole), so a
    manifest of this run that the report does not count is no disagreement (final_manifest, done_twice and the
    queue's checks still judge that file)."""
    return any("grace period over: abandoning" in line for line in run.lines)


def _unseen_at_abandonment(run: RunResult, log: ProxyLog) -> int:
    """Of the messages handed to a run abandoned when its grace period ran out (`--grace-seconds 0` at once), those
    its log never names: their receive was in flight when it wrote its report (the outcome so far) and exited, so
    the report cannot count them; they come back when their visibility runs out. Any other run counts each."""
    if not _abandoned(run):
        return 0
    logged = "\n".join(run.lines)
    return sum(1 for message in log.receipts.values() if message.run == run.tag and message.message_id not in logged)


def _queue_agrees(ledger: Ledger, run: RunResult, report: dict[str, Any], log: ProxyLog) -> None:
    counts = report.get("queue")
    if counts is None or ledger.scenario.mode != "queue":
        return
    handed = log.received.get(run.tag, 0)
    unseen = _unseen_at_abandonment(run, log)
    if not handed - unseen <= counts.get("received", -1) <= handed:
        ledger.violate(
            "run_agreement",
            f"the queue handed it {handed} messages, its report says {counts.get('received')} received",
            run=run.tag,
        )
    faults_on_queue = any(r == run.tag for r, _ in log.faults_by_run)
    # An abandoned run's report is the outcome so far: a delete may be in flight as it is written (the messages
    # still held are given back first), so its counts need not add up; the final checks judge those messages.
    if report.get("exit_code") in (0, 1, 130, 143) and not faults_on_queue and not _abandoned(run):
        accounted = sum(counts.get(name, 0) for name in ("deleted", "returned", "unreadable", "received_again"))
        if accounted != counts.get("received", 0):
            ledger.violate(
                "queue_accounting",
                f"received {counts.get('received')} messages, deleted {counts.get('deleted')}, made visible "
                f"{counts.get('returned')}, unreadable {counts.get('unreadable')}: the rest left invisible",
                run=run.tag,
            )


def _manifests_agree(
    ledger: Ledger, run: RunResult, report: dict[str, Any], files: dict[str, bytes], alone: bool
) -> None:
    run_id = report.get("run_id")
    succeeded, failed = set(report.get("succeeded", [])), {f.get("key") for f in report.get("failed", [])}
    manifests = ledger.places.manifests(files)
    for key, (_, manifest) in manifests.items():
        if manifest is None or manifest.get("run_id") != run_id or _abandoned(run):
            continue
        status = manifest.get("status")
        if (status == "succeeded" and key not in succeeded) or (status == "failed" and key not in failed):
            ledger.violate(
                "run_agreement",
                f"its manifest says {status} by this run, its report does not count it so",
                key,
                run.tag,
            )
    if not alone:
        return
    for key in succeeded:
        manifest = (manifests.get(key) or ("", None))[1] or {}
        ours = manifest.get("run_id") == run_id and manifest.get("status") == "succeeded"
        if not ours and key not in ledger.places.deleted:
            ledger.violate(
                "run_agreement", "counted succeeded, but no succeeded manifest of this run is in DEST", key, run.tag
            )


# The reason a run reports (and logs) for a file it met a fault that is not the file's own with: the file gets no
# manifest and a later run does it (docs/reruns-and-exit-codes.md). Its log line carries no `file_problem`.
NOT_ITS_FAULT = "(a later run does"


def _failures(ledger: Ledger, run: RunResult) -> None:
    """Every failure this run recorded against its file (its report, else its log) is its file's own, and recorded
    once. A failure reported as not the file's own (`file_problem` false: no manifest, a later run does it) is
    not recorded against the file: the run says the fault was elsewhere, as the issue asks; that it left no failed
    manifest is checked over DEST (`_failed_manifests`), that its queue message stayed, as the message is deleted."""
    if run.report is not None:
        failures = [(f.get("key"), f.get("error") or {}) for f in run.report.get("failed", [])]
    else:
        failures = [
            (r.get("key"), {"type": r.get("error_type"), "message": r.get("message")} | _logged_file_problem(r))
            for r in run.records()
            if r.get("event") == "file" and r.get("status") == "failed"
        ]
    against_the_file = [(key, error) for key, error in failures if error.get("file_problem") is not False]
    counts = Counter(key for key, _ in against_the_file)
    for key, times in counts.items():
        if times > 1:
            ledger.violate("own_failure_record", f"recorded failed {times} times in one run", key, run.tag)
    for key, error in failures:
        check_failure(ledger, run, key or "", error, in_dest=False)


def _logged_file_problem(record: dict[str, Any]) -> dict[str, bool]:
    return {"file_problem": False} if NOT_ITS_FAULT in str(record.get("message", "")) else {}


def _polls(ledger: Ledger, run: RunResult, log: ProxyLog) -> None:
    """A consumer waits on the queue (long polls) when it has nothing to do: a loop of receives that do not wait
    is a run stuck spinning."""
    receives = log.requests_by_run.get((run.tag, "ReceiveMessage"), 0)
    seconds = max(0.0, run.ended_at - run.started_at)
    if receives > POLLS_ALLOWED + POLLS_PER_SECOND * seconds:
        ledger.violate(
            "stuck", f"{receives} ReceiveMessage calls in {seconds:.0f} s: a poll loop that does not wait", run=run.tag
        )


def _failed_manifests(ledger: Ledger, files: dict[str, bytes]) -> None:
    """A failed manifest in DEST is a failure recorded, whether or not its run lived to report it."""
    by_id = {run.run_id: run for run in ledger.runs if run.run_id}
    for key, (_, manifest) in ledger.places.manifests(files).items():
        if manifest is None or manifest.get("status") != "failed":
            continue
        run = by_id.get(manifest.get("run_id"))
        if run is not None:
            check_failure(ledger, run, key, manifest.get("error") or {}, in_dest=True)


def check_failure(ledger: Ledger, run: RunResult, key: str, error: dict[str, Any], in_dest: bool) -> None:
    """One failure a run recorded: in DEST (a failed manifest: always the file's own failure, so it must be one), or
    in its report or log, where `file_problem` false says the fault was not the file's (no manifest)."""
    scenario = ledger.scenario
    what = f"{error.get('type')}: {error.get('message')}"
    try:
        item = scenario.input(key)
    except StopIteration:
        ledger.violate("not_own_failure", f"a failure recorded for a key the soak never wrote ({what})", key, run.tag)
        return
    if not in_dest and error.get("file_problem") is False:
        return  # reported as a fault not of the file, which gets no manifest: not recorded against it
    excuse = own_fault_of(ledger, item, run)
    if excuse in (LONG, AT_THE_LIMIT) and not error.get("file_problem"):
        excuse = None  # such a file may fail alone, as its own problem, but not for a fault that is not its own
    if excuse is None:
        ledger.violate("not_own_failure", f"a sound file recorded as failed: {what}", key, run.tag)
        return
    if error.get("file_problem") is False or not error.get("message"):
        ledger.violate(
            "own_failure_record",
            f"its own fault ({excuse}) recorded without its reason or as not its own: {what}",
            key,
            run.tag,
        )


def own_fault_of(ledger: Ledger, item: Any, run: RunResult) -> str | None:
    """Why a failure of `item` in `run` may be its own: its content, its name, its deletion, or a client that was
    rewriting it in place while the run read it. None: any failure of it is not its own."""
    if item.own_fault:
        return item.kind
    if item.kind == "long":
        return LONG
    name = item.key.rsplit("/", 1)[-1]
    if len(name.encode("utf-8", "surrogateescape")) >= 250 or len(item.key.encode("utf-8", "surrogateescape")) > 900:
        return AT_THE_LIMIT
    for when, what in ledger.changes.get(item.key, []):
        if what == "deleted" and when <= run.ended_at:
            return "deleted"
        if what == "written in place" and run.started_at <= when + 1.0 <= run.ended_at + 1.0:
            return "rewritten in place while read"
    return None


def _claims(ledger: Ledger, runs: list[RunResult], files: dict[str, bytes], log: ProxyLog) -> None:
    """No claim outlives the run that took it, whatever ended it, but for a run killed outright (kill -9, or by the
    harness when stuck): its claims wait for their TTL, and may outlive later rounds (a claim on a file whose
    manifest was written is never taken over), so they are told apart by their owner's run id, not by the round."""
    if ledger.scenario.parallel != "claims" or any(run.stuck for run in runs):
        return
    if any(op == "DeleteObject" for (_, op) in log.faults_by_op):
        return  # a release whose answer was lost or refused leaves the claim to expire: allowed
    killed = {run.run_id for run in ledger.runs if (run.killed or run.stuck) and run.run_id}
    left = [
        name
        for name, body in files.items()
        if name.startswith("_claims/") and "/.probe-" not in name and _claim_owner(body) not in killed
    ]
    if left:
        owners = sorted({str(_claim_owner(files[name])) for name in left})
        ledger.violate(
            "claims_left",
            f"claims held after every run exited: {left} (held by runs {owners})",
            run=",".join(r.tag for r in runs),
        )


def _claim_owner(body: bytes) -> str | None:
    """The run id a claim names (None: unreadable, so no run's)."""
    try:
        owner = json.loads(body).get("run_id")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


# --- at the end ---------------------------------------------------------------------------------------------------


def at_the_end(ledger: Ledger, log: ProxyLog) -> None:
    files = ledger.places.dest_files()
    _final_manifests(ledger, files, _dead_lettered_by_faults(ledger, log) if ledger.scenario.mode == "queue" else set())
    _done_twice(ledger)
    _final_exit(ledger)
    if ledger.scenario.mode == "queue":
        _queue_at_the_end(ledger, log)


def _final_manifests(ledger: Ledger, files: dict[str, bytes], dead_lettered: set[str]) -> None:
    places = ledger.places
    manifests = places.manifests(files)
    final_runs = [run for run in ledger.runs if run.final]
    for item in ledger.scenario.inputs:
        current = places.current(item.key)
        if not item.selected or current is None:
            continue
        entry = manifests.get(item.key)
        if entry is None or entry[1] is None:
            if _failed_alone(final_runs, item.key) and own_fault_of(ledger, item, final_runs[-1]) is not None:
                continue  # a name DEST cannot hold: failed alone, recorded in the run report
            if item.key in dead_lettered:
                continue  # its message is in the dead-letter queue, for an operator to redrive: kept, not lost
            ledger.violate("final_manifest", "no manifest after the clean final run: lost", item.key)
            continue
        manifest = entry[1]
        record = manifest.get("input", {})
        version = places.version_of(item.key, record.get("version"), record.get("fingerprint"))
        status = manifest.get("status")
        if version is not current:
            said = version.word if version else None
            ledger.violate(
                "final_manifest",
                f"final manifest ({status}) names the version saying {said!r}, not the current one ({current.word!r})",
                item.key,
            )
            continue
        if item.kind == "speech" and status != "succeeded":
            ledger.violate("final_manifest", f"a sound recording ends {status}: {manifest.get('error')}", item.key)
        elif item.own_fault and (status != "failed" or not (manifest.get("error") or {}).get("message")):
            ledger.violate(
                "final_manifest",
                f"an input that is its own fault ({item.kind}) ends {status} without its reason",
                item.key,
            )
        elif item.kind == "long" and status == "failed" and not (manifest.get("error") or {}).get("file_problem"):
            ledger.violate(
                "final_manifest",
                f"a very long recording failed, not as its own problem: {manifest.get('error')}",
                item.key,
            )


def _failed_alone(runs: list[RunResult], key: str) -> bool:
    for run in runs:
        for failure in (run.report or {}).get("failed", []):
            if failure.get("key") == key and (failure.get("error") or {}).get("file_problem"):
                return True
    return False


def successes(run: RunResult) -> list[str]:
    if run.report is not None:
        return list(run.report.get("succeeded", []))
    return run.file_events("succeeded")


def _done_twice(ledger: Ledger) -> None:
    counted: Counter[str] = Counter()
    for run in ledger.runs:
        counted.update(successes(run))
    for key, times in counted.items():
        versions = ledger.places.versions.get(key, [])
        allowed = sum(2 if version.in_place else 1 for version in versions)
        if times > allowed:
            ledger.violate("done_twice", f"counted succeeded {times} times over {len(versions)} versions written", key)


def _final_exit(ledger: Ledger) -> None:
    finals = [run for run in ledger.runs if run.final]
    for run in finals:
        if run.stuck or run.exit_code not in (0, 1):
            ledger.violate("final_exit", f"the clean final run ended with exit {run.exit_code}", run=run.tag)
    if ledger.scenario.mode == "queue" or any(run.exit_code not in (0, 1) for run in finals):
        return
    failed = {f.get("key") for run in finals for f in (run.report or {}).get("failed", [])}
    places = ledger.places
    expected = {i.key for i in ledger.scenario.inputs if i.selected and i.own_fault and places.current(i.key)}
    done = {key for run in finals for key in successes(run) + list((run.report or {}).get("skipped", []))}
    for key in sorted(expected - failed):
        ledger.violate("final_exit", "an input that is its own fault was not failed by the clean final run", key)
    for key in sorted(failed - expected):
        item = ledger.scenario.input(key)
        if own_fault_of(ledger, item, finals[-1]) is None:
            ledger.violate("final_exit", "the clean final run failed a sound file", key)
    sound = {i.key for i in ledger.scenario.inputs if i.kind == "speech" and places.current(i.key)}
    for key in sorted(sound - done - failed):
        ledger.violate("final_exit", "the clean final run neither did nor skipped a sound file", key)


def _dead_letters_excused(ledger: Ledger, log: ProxyLog) -> tuple[list[str], set[str]]:
    """The dead-letter queue's bodies, and those of them that a sound message may reach through receives it never
    had a say in: answers the proxy dropped (each a receive for SQS), or runs killed while they held it."""
    places = ledger.places
    dead = sorted(places.queue_bodies(places.dead_letters_url))
    lost = {m.body for mid, m in ledger.messages.items() if log.lost_receives.get(mid)}
    killed = any(run.killed or run.stuck or run.worker_faults for run in ledger.runs)
    return dead, {body for body in dead if killed or body in lost}


def _dead_lettered_by_faults(ledger: Ledger, log: ProxyLog) -> set[str]:
    """Keys whose message the dead-letter queue holds for such excused receives (queue_leftovers judges the rest)."""
    _, excused = _dead_letters_excused(ledger, log)
    return {key for m in ledger.messages.values() if m.body in excused for key in m.versions}


def _queue_at_the_end(ledger: Ledger, log: ProxyLog) -> None:
    places = ledger.places
    visible, in_flight = places.queue_counts(places.queue_url)
    if visible or in_flight:
        ledger.violate("queue_leftovers", f"the queue still holds {visible} visible and {in_flight} invisible messages")
    poison = sorted(m.body for m in ledger.messages.values() if m.form == "poison")
    dead, excused = _dead_letters_excused(ledger, log)
    extra = [body for body in dead if body not in poison and body not in excused]
    if extra:
        shown = "; ".join(re.sub(r"\s+", " ", body)[:160] for body in extra)
        ledger.violate("queue_leftovers", f"{len(extra)} messages naming objects in the dead-letter queue: {shown}")
    missing = [body for body in poison if body not in dead]
    if missing and not (visible or in_flight):
        ledger.violate(
            "queue_leftovers", f"{len(missing)} messages that name no object are not in the dead-letter queue"
        )
