"""`configure`: the user's settings made into the run's sections in one pass, with every refusal that needs more
than the settings themselves (the token, the device, the model) made there, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

import batch.run.config as run_config
from batch.common.errors import ConfigError
from batch.run.config import configure
from batch.settings.options import load_settings

TOKEN = "hf_" + "k" * 34


def settings(**flags: object):  # type: ignore[no-untyped-def]
    return load_settings({"source": "in", "out": "out", "device": "cpu", **flags}, environ={})


@pytest.mark.parametrize("missing", ["source", "out"])
def test_a_job_needs_a_source_and_a_dest(missing: str) -> None:
    flags = {"source": "in", "out": "out", "device": "cpu"}
    del flags[missing]
    with pytest.raises(ConfigError) as caught:
        configure(load_settings(flags, environ={}), {})
    assert caught.value.key == missing


def test_the_token_is_resolved_once_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = run_config.hf_token
    monkeypatch.setattr(run_config, "hf_token", lambda *args: calls.append(args) or real(*args))
    config = configure(settings(diarize=True), {"HF_TOKEN": TOKEN})
    assert len(calls) == 1
    hub = config.pipeline.hub
    assert hub.token == TOKEN and hub.token_source == "HF_TOKEN"
    assert TOKEN not in repr(config) and TOKEN not in str(config.shaping)


def test_diarization_without_a_token_is_refused_unless_offline_or_local(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        configure(settings(diarize=True), {})
    assert caught.value.key == "hf_token"
    assert configure(settings(diarize=True), {"HF_HUB_OFFLINE": "1"}).pipeline.hub.token is None
    assert configure(settings(diarize=True, diarize_model=str(tmp_path)), {}).pipeline.diarize.enabled


def test_a_compute_type_the_cpu_cannot_run_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        configure(settings(compute_type="float16"), {})
    assert caught.value.key == "compute_type" and "float16" in str(caught.value)
    assert configure(settings(compute_type="int8"), {}).pipeline.runtime.compute_type == "int8"


def test_what_an_english_only_model_cannot_do_is_refused_before_it_loads(tiny_en: str) -> None:
    with pytest.raises(ConfigError) as caught:
        configure(settings(model=tiny_en, language="de"), {})
    assert caught.value.key == "language"
    with pytest.raises(ConfigError) as caught:
        configure(settings(model=tiny_en, task="translate"), {})
    assert caught.value.key == "task"
    config = configure(settings(model=tiny_en), {})
    assert config.shaping["language"] == "en"  # auto reads English as en does: the same settings hash


def test_each_part_gets_its_own_section() -> None:
    config = configure(
        settings(shard="1/3", max_input_size="2GiB", align_model=("fr=some/model",), vad_step=1.0, prefetch=3), {}
    )
    assert config.selection.shard is not None and str(config.selection.shard) == "1/3"
    assert config.storage.max_input_bytes == 2 * 1024**3
    assert config.pipeline.align.per_language == {"fr": "some/model"}
    assert config.pipeline.vad.step == 1.0 and config.shaping["vad_step"] == 1.0
    assert config.pipeline.runtime.device == "cpu" and config.control.prefetch == 3


def test_workers_are_planned_on_the_cpu_with_the_threads_shared() -> None:
    config = configure(settings(workers=3, threads=9), {})
    assert [(slot.name, slot.device, slot.threads) for slot in config.workers] == [
        ("cpu0", "cpu", 3),
        ("cpu1", "cpu", 3),
        ("cpu2", "cpu", 3),
    ]
    assert config.workers[0].environ["OMP_NUM_THREADS"] == "3" and config.pipeline.runtime.threads == 9
    assert configure(settings(workers=1), {}).workers == () and configure(settings(), {}).workers == ()


def test_workers_on_a_run_that_found_a_gpu_are_refused_for_gpus() -> None:
    from batch.engine.config import RuntimeOptions
    from batch.run.pool.plan import plan_workers

    on_a_gpu = RuntimeOptions(device="cuda", compute_type="float16", threads=8, batch_size=16)
    with pytest.raises(ConfigError, match="use --gpus for one worker per GPU, or --device cpu") as caught:
        plan_workers(None, 2, on_a_gpu, {})
    assert caught.value.key == "workers" and caught.value.exit_code == 2
