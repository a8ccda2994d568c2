"""The fault-injection soak (docs/reliability.md) as tests: a CI-sized soak, one scenario of each mode, and every
scenario that ever failed (soak/failing_seeds.json), replayed. Marked `soak` (`pytest -m soak` runs them alone;
`-m 'not soak'` leaves them out). An entry whose defect is known and not fixed yet carries `open` (why): it is
replayed all the same and reported as an expected failure (xfail), never as a pass, until its fix lands and the
entry's `open` is removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from soak.driver import bench, soak
from soak.figures import failing_seeds
from soak.plan import MODES, draw
from soak.scenario import Bench

pytestmark = pytest.mark.soak
CI_SEED = 34


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    with bench(tmp_path_factory.mktemp("soak")) as opened:
        yield opened


def first_of_each_mode(seed: int) -> list[int]:
    """The first scenario of the seed in each mode: folder, S3 prefix, queue."""
    found: dict[str, int] = {}
    index = 0
    while len(found) < len(MODES):
        found.setdefault(draw(seed, index).mode, index)
        index += 1
    return sorted(found.values())


def test_a_ci_sized_soak_violates_no_invariant(place: Bench) -> None:
    results = soak(CI_SEED, first_of_each_mode(CI_SEED), place, verbose=False)
    found = [
        f"seed {p.seed} scenario {p.index} ({p.description}): {line}" for p in results.failing for line in p.violations
    ]
    assert not found, "\n".join(found)
    assert sum(results.faults.values()) > 0


def replays() -> list[object]:
    return [
        pytest.param(
            entry,
            id=f"seed{entry['seed']}-s{entry['scenario']}",
            marks=[pytest.mark.xfail(reason=entry["open"], strict=False)] if entry.get("open") else [],
        )
        for entry in failing_seeds()
    ]


@pytest.mark.parametrize("entry", replays())
def test_a_scenario_that_once_failed_holds_now(place: Bench, entry: dict) -> None:
    results = soak(entry["seed"], [entry["scenario"]], place, verbose=False)
    assert not results.failing, "\n".join(results.failing[0].violations)
