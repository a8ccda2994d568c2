"""A scenario drawn from (seed, index): its mode, its processes, its inputs and the faults of each round.

Everything random about a scenario is drawn here, from `random.Random(f"soak:{seed}:{index}")`, before anything
runs: replaying a seed gives the same scenario and the same schedule of faults. What the schedule meets is timing
(which request is in flight when a rule's window opens), so a replay reproduces the scenario, not every request.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from soak.inputs import MEDIA_OWN_FAULTS, SPEECH_CONTAINERS, WORDS
from soak.proxy import S3_KINDS, SQS_KINDS, FaultRule

MODES = ("folder", "s3", "queue")
# A queue refuses --claim and --shard (it gives each message to one consumer): two consumers share it instead.
PARALLEL = {
    "folder": ("single", "claims", "shards"),
    "s3": ("single", "claims", "shards"),
    "queue": ("single", "pair"),
}
PROCESS_FAULTS = ("kill9", "sigterm", "sigterm_twice")
WORKER_FAULTS = ("kill9_worker", "sigterm_worker")
ANCHORS = ("start", "loaded", "file")
# Odd but not hidden: a name starting with "." is never taken (docs/options.md), so none does.
ODD_NAMES = (
    "Meeting #3", "what?", "a+b c", "100% sure", "semi;colon", "it's", 'say "hi"', "ü ñ é", "日本語の会議",
    "mic 🎤", " lead", "trail ", "-dash", "a&b=c", "x%2Fy", "dots..", "tab\tname", "sub dir/inner",
)  # fmt: skip
FOLDER_ONLY_NAMES = ("new\nline", "back\\slash", "bytes-\udcff-latin1")
VISIBILITY_SECONDS = 3
MAX_RECEIVES = 8  # the redrive policy's maxReceiveCount
CLAIM_TTL_SECONDS = 6


@dataclass
class InputPlan:
    key: str  # the run's key: relative to SOURCE, or the object's key in the drop bucket (queue)
    kind: str  # speech | long | empty | garbage | text | note (not media: never selected)
    container: str
    words: list[str] = field(default_factory=list)  # the code word of each version, version 0 first
    long_minutes: float = 0.0
    arrives: bool = False  # written by a round's mutation, not before the first run
    deleted: bool = False  # a round deletes it (planning only: no later round touches it)

    @property
    def own_fault(self) -> bool:
        return self.kind in MEDIA_OWN_FAULTS

    @property
    def selected(self) -> bool:
        return self.kind != "note"


@dataclass
class Mutation:
    at: float  # seconds after the round's runs started
    key: str
    action: str  # overwrite | delete | create
    in_place: bool = False  # folder: rewritten where it lies (a reader may see half of it), else renamed in
    word: str | None = None  # the new version's code word (overwrite, create)


@dataclass
class EventSend:
    """Queue mode: a message naming `keys`, at the version whose code word is `word` (None: the version current
    when it is sent)."""

    at: float
    keys: list[str]
    form: str = "event"  # event | source (a {"source": "s3://..."} body) | removal | test | poison
    word: str | None = None
    tag: str = "first"  # first | duplicate | late | out_of_order | poison | test | removal


@dataclass
class ProcessFault:
    run: int  # index of the run in its round
    kind: str
    anchor: str  # start | loaded (its models loaded) | file (its first file counted)
    delay: float


@dataclass
class RoundPlan:
    rules: list[FaultRule] = field(default_factory=list)
    processes: list[ProcessFault] = field(default_factory=list)
    mutations: list[Mutation] = field(default_factory=list)
    events: list[EventSend] = field(default_factory=list)
    dest_full: bool = False
    final: bool = False


@dataclass
class Scenario:
    seed: int
    index: int
    mode: str
    dest: str  # local | s3 | tmpfs (a small file system that fills)
    dest_inside_source: bool
    workers: int
    parallel: str
    prefetch: int
    grace_seconds: int
    queue_idle: int
    inputs: list[InputPlan]
    rounds: list[RoundPlan]
    spool_full: bool = False  # S3 downloads spooled to a small file system that fills, until the final round

    @property
    def name(self) -> str:
        return f"seed {self.seed} scenario {self.index}"

    def describe(self) -> str:
        kinds = ",".join(sorted({i.kind for i in self.inputs}))
        spool = ", spool fills" if self.spool_full else ""
        return (
            f"{self.mode} -> {self.dest} dest, workers {self.workers}, {self.parallel}, prefetch {self.prefetch}, "
            f"{len(self.inputs)} inputs ({kinds}), {len(self.rounds) - 1} fault rounds{spool}"
        )

    @property
    def runs_per_round(self) -> int:
        return 1 if self.parallel == "single" else 2

    def input(self, key: str) -> InputPlan:
        return next(item for item in self.inputs if item.key == key)


def draw(seed: int, index: int) -> Scenario:
    rng = random.Random(f"soak:{seed}:{index}")
    mode = rng.choice(MODES)
    dest = rng.choice(("local", "s3", "tmpfs") if mode == "folder" else ("local", "s3", "s3", "tmpfs"))
    words = rng.sample(WORDS, len(WORDS))
    inputs = _inputs(rng, mode, dest, words)
    scenario = Scenario(
        seed=seed,
        index=index,
        mode=mode,
        dest=dest,
        dest_inside_source=mode == "s3" and dest == "s3" and rng.random() < 0.3,
        workers=rng.choice((1, 1, 2)),
        parallel=rng.choice(PARALLEL[mode]),
        prefetch=rng.choice((0, 1, 2)),
        grace_seconds=rng.choice((0, 3, 25)),
        queue_idle=rng.choice((2, 3, 4)),
        inputs=inputs,
        rounds=[],
    )
    fault_rounds = rng.choice((1, 1, 2))
    for number in range(fault_rounds):
        scenario.rounds.append(_round(rng, scenario, words, first=number == 0))
    scenario.rounds.append(RoundPlan(final=True))
    # Drawn last, so that adding it left every earlier scenario of a seed as it was (failing seeds replay).
    scenario.spool_full = mode != "folder" and rng.random() < 0.2
    return scenario


def _inputs(rng: random.Random, mode: str, dest: str, words: list[str]) -> list[InputPlan]:
    count = rng.randint(3, 5)
    prefix = "calls/" if mode == "queue" else ""
    inputs: list[InputPlan] = []
    for number in range(count):
        kind = "speech"
        roll = rng.random()
        if roll < 0.25:
            kind = rng.choice(MEDIA_OWN_FAULTS)
        elif roll < 0.3:
            kind = "long"
        container = "ogg" if kind == "long" else rng.choice(SPEECH_CONTAINERS)
        name = _name(rng, mode, dest, number, container)
        item = InputPlan(prefix + name, kind, container)
        if kind in ("speech", "long"):
            item.words.append(words.pop())
        if kind == "long":
            item.long_minutes = rng.choice((5, 10, 20))
        inputs.append(item)
    if mode != "folder" and rng.random() < 0.3:
        inputs.append(InputPlan(prefix + "notes.txt", "note", "txt"))
    return inputs


def _name(rng: random.Random, mode: str, dest: str, number: int, container: str) -> str:
    roll = rng.random()
    if roll < 0.6:
        return f"rec{number}.{container}"
    if roll < 0.95:
        names = ODD_NAMES + (FOLDER_ONLY_NAMES if mode == "folder" else ())
        name = rng.choice(names)
        if dest == "s3":  # moto's server answers 404 to any request for a key holding a newline; real S3 takes it
            name = name.replace("\n", "\r")
        return f"{name} {number}.{container}"
    # At the file system's limit: a name component of 255 bytes (a folder's NAME_MAX), or on S3 a key near 1024.
    stem = rng.choice(("n", "é", "日"))
    size = len(stem.encode())
    budget = 255 - len(f"-{number}.{container}".encode())
    component = stem * (budget // size) + f"-{number}.{container}"
    if mode != "folder" and dest == "s3" and rng.random() < 0.5:
        folder = ("d" * 250 + "/") * 3
        return folder + component
    return component


def _round(rng: random.Random, scenario: Scenario, words: list[str], first: bool) -> RoundPlan:
    plan = RoundPlan(dest_full=first and scenario.dest == "tmpfs")
    plan.rules = _rules(rng, scenario)
    if rng.random() < 0.6:
        kinds = PROCESS_FAULTS + (WORKER_FAULTS if scenario.workers > 1 else ())
        plan.processes.append(
            ProcessFault(
                run=rng.randrange(scenario.runs_per_round),
                kind=rng.choice(kinds),
                anchor=rng.choice(ANCHORS),
                delay=round(rng.uniform(0.0, 3.0), 2),
            )
        )
    media = [item for item in scenario.inputs if item.kind == "speech" and not item.deleted]
    for _ in range(rng.choice((0, 1, 1, 2))):
        if not media:
            break
        item = rng.choice(media)
        action = rng.choice(("overwrite", "overwrite", "delete", "create"))
        at = round(rng.uniform(0.0, 10.0), 2)
        if action == "create":
            number = len(scenario.inputs)
            container = rng.choice(SPEECH_CONTAINERS)
            prefix = "calls/" if scenario.mode == "queue" else ""
            new = InputPlan(f"{prefix}late{number}.{container}", "speech", container, [words.pop()], arrives=True)
            scenario.inputs.append(new)
            plan.mutations.append(Mutation(at, new.key, "create", word=new.words[0]))
            continue
        word = None
        if action == "overwrite":
            word = words.pop()
            item.words.append(word)
        else:
            media.remove(item)
            item.deleted = True
        plan.mutations.append(Mutation(at, item.key, action, in_place=rng.random() < 0.5, word=word))
    if scenario.mode == "queue":
        plan.events = _events(rng, scenario, plan, first)
    return plan


def _rules(rng: random.Random, scenario: Scenario) -> list[FaultRule]:
    s3_roles = (
        ["dest", "dest_manifests", "dest_outputs", "dest_claims", "dest_reports"] if scenario.dest == "s3" else []
    )
    if scenario.mode != "folder":
        s3_roles += ["source", "source"]
    rules = []
    for _ in range(rng.choice((0, 1, 2, 3))):
        if scenario.mode == "queue" and (not s3_roles or rng.random() < 0.4):
            kind, role = rng.choice(SQS_KINDS), "queue"
        elif s3_roles:
            kind, role = rng.choice(S3_KINDS), rng.choice(s3_roles)
        else:
            continue
        if rng.random() < 0.15:  # a misconfiguration: the whole round
            start, end = 0.0, math.inf
        else:
            start = round(rng.uniform(0.0, 10.0), 2)
            end = round(start + rng.uniform(0.5, 8.0), 2)
        rules.append(
            FaultRule(
                kind,
                role,
                start,
                end,
                probability=round(rng.uniform(0.15, 1.0), 2),
                hold_seconds=round(rng.uniform(0.5, 4.0), 2),
            )
        )
    return rules


def _events(rng: random.Random, scenario: Scenario, plan: RoundPlan, first: bool) -> list[EventSend]:
    """The messages of a queue round: the drop bucket's events for its objects, with duplicates, late and
    out-of-order ones, a test event and messages that name no object (for the dead letters)."""
    events: list[EventSend] = []
    if first:
        if rng.random() < 0.3:
            events.append(EventSend(0.0, [], form="test", tag="test"))
        pending = [item.key for item in scenario.inputs if not item.arrives]
        rng.shuffle(pending)
        while pending:
            group = [pending.pop()]
            if pending and rng.random() < 0.2:
                group.append(pending.pop())  # one event, several records
            form = "source" if len(group) == 1 and rng.random() < 0.25 else "event"
            late = rng.random() < 0.15
            at = round(rng.uniform(2.0, 10.0), 2) if late else 0.0
            events.append(EventSend(at, group, form=form, tag="late" if late else "first"))
            if rng.random() < 0.15:
                again = round(at + rng.uniform(0.0, 6.0), 2)
                events.append(EventSend(again, group, form=form, tag="duplicate"))
        if rng.random() < 0.3:
            events.append(EventSend(round(rng.uniform(0.0, 5.0), 2), [], form="poison", tag="poison"))
    for mutation in plan.mutations:
        item = scenario.input(mutation.key)
        if mutation.action == "delete":
            events.append(EventSend(mutation.at + 0.1, [item.key], form="removal", tag="removal"))
            continue
        if mutation.action == "overwrite" and rng.random() < 0.4:
            # Out of order: the new version's event first, then (late) the one of the version it replaced.
            old = item.words[item.words.index(mutation.word) - 1]
            events.append(EventSend(mutation.at + 0.1, [item.key], word=mutation.word, tag="first"))
            late = round(mutation.at + rng.uniform(0.5, 4.0), 2)
            events.append(EventSend(late, [item.key], word=old, tag="out_of_order"))
            continue
        events.append(EventSend(mutation.at + 0.1, [item.key], word=mutation.word, tag="first"))
        if rng.random() < 0.2:
            again = round(mutation.at + rng.uniform(0.2, 3.0), 2)
            events.append(EventSend(again, [item.key], word=mutation.word, tag="duplicate"))
    return events
