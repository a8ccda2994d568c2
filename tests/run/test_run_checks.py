"""Mistakes an unattended run must catch and say once, through the real CLI on real files and models: an empty
SOURCE or a filter that takes nothing, a language or compute type the model or machine cannot run, config keys
from WhisperX's provider guide, old run reports, a single file as SOURCE, and every format at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ctranslate2
import pytest

from tests.conftest import ENGLISH, speak


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def report_files(out: Path) -> list[str]:
    return sorted(path.name for path in (out / "_runs").glob("*.json"))


def clean(result) -> bool:  # noqa: ANN001 - click's Result
    return "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.fixture(scope="module")
def memo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(ENGLISH, tmp_path_factory.mktemp("memo") / "memo.wav")


@pytest.fixture
def one_file_source(tmp_path: Path, memo: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(memo, source / "memo.wav")
    return source


# --- nothing to do --------------------------------------------------------------------------------------


def test_an_empty_source_stops_the_run_with_exit_2_unless_empty_is_allowed(cli, tmp_path: Path, tiny_en: str) -> None:
    mount, out = tmp_path / "mnt", tmp_path / "out"
    mount.mkdir()
    args = ("--out", out, "--model", tiny_en, "--device", "cpu")
    result = cli("run", mount, *args)
    assert result.exit_code == 2 and clean(result)
    said = f"source: {mount} holds no files (is it mounted?); give --allow-empty"
    assert result.stderr.count(said) == 1, result.stderr  # said once, not by the log, the summary and the CLI
    report = read(out / "_runs" / report_files(out)[0])
    assert report["exit_code"] == 2 and report["error"]["type"] == "ConfigError"
    assert "holds no files" in report["error"]["message"]
    assert cli("status", out).exit_code == 1  # a cron job that mails on failure hears of it

    dry = cli("run", mount, *args, "--dry-run")
    assert dry.exit_code == 2 and dry.stdout == "" and said in dry.stderr

    allowed = cli("run", mount, *args, "--allow-empty")
    assert allowed.exit_code == 0 and "0 succeeded, 0 skipped, 0 failed" in allowed.stderr
    assert "error" not in allowed.stderr
    by_environment = cli("run", mount, *args, env={"WHISPERX_BATCH_ALLOW_EMPTY": "true"})
    assert by_environment.exit_code == 0


def test_a_filter_that_takes_nothing_says_what_was_listed(cli, tmp_path: Path, tiny_en: str, memo: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    (source / "Calls").mkdir(parents=True)
    shutil.copy(memo, source / "Calls" / "Monday.WAV")
    (source / "notes.txt").write_text("not a recording\n")
    args = ("--out", out, "--model", tiny_en, "--device", "cpu")

    include = cli("run", source, *args, "--include", "*.mp3")
    assert include.exit_code == 2 and clean(include)
    assert f"include: {source}: 2 files listed, 0 selected by --include *.mp3; " in include.stderr

    exclude = cli("run", source, *args, "--exclude", "calls/*")  # globs ignore case, as extensions do
    assert exclude.exit_code == 2
    assert "exclude: " in exclude.stderr
    assert "2 files listed, 0 selected by the media extensions and --exclude calls/*" in exclude.stderr

    taken = cli("run", source, *args, "--include", "calls/*.wav", "--dry-run")
    assert taken.exit_code == 0 and taken.stdout.splitlines() == ["Calls/Monday.WAV"]

    (source / "Calls" / "Monday.WAV").unlink()
    no_media = cli("run", source, *args)
    assert no_media.exit_code == 2
    assert f"source: {source}: 1 files listed, 0 selected by the media extensions" in no_media.stderr


# --- a language the model cannot read ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["folder", "tiny.en"])
def test_an_english_only_model_refuses_another_language_before_it_loads(
    cli, one_file_source: Path, tmp_path: Path, tiny_en: str, model: str
) -> None:
    out = tmp_path / "out"
    name = tiny_en if model == "folder" else model  # the folder's name says nothing: its vocabulary tells
    result = cli("run", one_file_source, "--out", out, "--model", name, "--language", "fr", "--device", "cpu")
    assert result.exit_code == 2 and clean(result)
    assert result.stderr.count(f"language: the model {name} is English-only; use en or auto") == 1
    assert "models loaded" not in result.stderr and not out.exists()


def hub_cache_holding(model_folder: str, repo_id: str, cache: Path) -> Path:
    """A Hugging Face cache in which `repo_id` is the given CTranslate2 model, as a download leaves it."""
    owner, name = repo_id.split("/")
    repo, commit = cache / f"models--{owner}--{name}", "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in Path(model_folder).iterdir():
        os.symlink(file, snapshot / file.name)
    return cache


def test_a_cached_hub_model_that_is_english_only_is_refused_before_any_file(
    cli, one_file_source: Path, tmp_path: Path, tiny_en: str
) -> None:
    cache = hub_cache_holding(tiny_en, "acme/whisper-voicemail", tmp_path / "models")
    out = tmp_path / "out"
    args = ("--out", out, "--model", "acme/whisper-voicemail", "--model-dir", cache, "--device", "cpu", "--no-align")
    refused = cli("run", one_file_source, *args, "--language", "fr")
    assert refused.exit_code == 2 and clean(refused)
    assert refused.stderr.count("language: the model acme/whisper-voicemail is English-only; use en or auto") == 1
    assert "models loaded" not in refused.stderr and not list(out.rglob("*.manifest.json"))

    english = cli("run", one_file_source, *args, "--language", "en")  # the same cached model, really loadable
    assert english.exit_code == 0, english.stderr
    assert "meeting on friday" in read(out / "memo.wav.json")["segments"][0]["text"].lower()


# What the parent of worker processes must not load (it decodes, with PyAV; the workers run the models).
MODEL_LIBRARIES = ("faster_whisper", "ctranslate2", "torch", "pyannote", "transformers")


def parent_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The real command line in a fresh process, which prints at its exit the model libraries it had imported."""
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('loaded:', [m for m in {MODEL_LIBRARIES!r} if m in sys.modules]))\n"
        f"sys.argv = {['whisperx-batch', *argv]!r}\n"
        "from batch.cli.app import main\n"
        "main()\n"
    )
    environ = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environ)


def test_a_hub_id_is_looked_up_in_the_cache_without_loading_a_model_library(
    one_file_source: Path, tmp_path: Path, tiny_en: str
) -> None:
    """An id that is neither a Whisper name nor a folder is looked up in the Hub cache when the settings ask what an
    English-only model cannot do; with --workers the parent that does so must still load no model library."""
    cache = hub_cache_holding(tiny_en, "acme/whisper-voicemail", tmp_path / "models")
    common = ["--out", str(tmp_path / "out"), "--model-dir", str(cache), "--device", "cpu", "--workers", "2"]
    cached = parent_run(["run", str(one_file_source), *common, "--model", "acme/whisper-voicemail", "--language", "fr"])
    assert cached.returncode == 2, cached.stderr
    assert "language: the model acme/whisper-voicemail is English-only; use en or auto" in cached.stderr
    assert cached.stdout.splitlines()[-1] == "loaded: []"

    elsewhere = ["run", str(one_file_source), *common, "--model", "acme/not-cached", "--language", "fr", "--dry-run"]
    unknown = parent_run(elsewhere)  # not in the cache: nothing to refuse yet (the worker's loaded model tells)
    assert unknown.returncode == 0, unknown.stderr
    assert unknown.stdout.splitlines() == ["memo.wav", "loaded: []"]


def test_auto_and_en_on_an_english_only_model_do_not_redo_the_files(
    cli, one_file_source: Path, tmp_path: Path, tiny_en: str
) -> None:
    out = tmp_path / "out"
    args = ("--out", out, "--model", tiny_en, "--device", "cpu", "--no-align")
    first = cli("run", one_file_source, *args, "--language", "auto")
    assert first.exit_code == 0 and "1 succeeded" in first.stderr
    assert read(out / "memo.wav.manifest.json")["settings"]["language"] == "en"
    again = cli("run", one_file_source, *args, "--language", "en")
    assert again.exit_code == 0 and "0 succeeded, 1 skipped" in again.stderr


# --- a compute type the machine cannot run ---------------------------------------------------------------------


def test_a_compute_type_the_cpu_cannot_run_is_a_config_error_found_before_loading(
    cli, one_file_source: Path, tmp_path: Path, tiny_en: str
) -> None:
    supported = sorted(ctranslate2.get_supported_compute_types("cpu"))
    assert "float16" not in supported  # CTranslate2 has no float16 on x86 CPUs
    out = tmp_path / "out"
    result = cli(
        "run", one_file_source, "--out", out, "--model", tiny_en, "--device", "cpu", "--compute-type", "float16"
    )
    assert result.exit_code == 2 and clean(result)
    said = f"compute_type: float16 cannot run on the CPU; supported here: {', '.join(supported)} (or default)"
    assert said in result.stderr and "models loaded" not in result.stderr and not out.exists()

    runs = cli(
        "run",
        one_file_source,
        "--out",
        out,
        "--model",
        tiny_en,
        "--device",
        "cpu",
        "--compute-type",
        "int8_float32",
        "--dry-run",
    )
    assert runs.exit_code == 0 and runs.stdout.splitlines() == ["memo.wav"]


def test_device_auto_without_a_gpu_refuses_float16_and_says_why(
    cli, one_file_source: Path, tmp_path: Path, tiny_en: str
) -> None:
    from batch.engine.gpu.device import resolve_device

    args = ("--out", tmp_path / "out", "--model", tiny_en, "--device", "auto", "--compute-type", "float16")
    result = cli("run", one_file_source, *args, "--dry-run")
    if resolve_device("auto") == "cuda":  # on a GPU machine, auto is cuda, where float16 runs
        assert result.exit_code == 0, result.stderr
    else:
        assert result.exit_code == 2 and clean(result)
        assert "float16 cannot run on the CPU" in result.stderr and "device auto found no usable GPU" in result.stderr


# --- the provider guide's key names, and every mistake at once ---------------------------------------------------


def test_every_mistake_in_a_config_file_is_listed_at_once_with_hints(
    cli, one_file_source: Path, tmp_path: Path
) -> None:
    token = "hf_" + "Zq7" * 12
    config = tmp_path / "job.toml"
    config.write_text(f'modle = "tiny"\nbatchsize = 4\nhf_token = "{token}"\nvad_onset = 3\nlanguage = "klingon"\n')
    result = cli("run", one_file_source, "--out", tmp_path / "out", "--config", config)
    assert result.exit_code == 2 and clean(result)
    lines = result.stderr.splitlines()
    assert lines[0] == "whisperx-batch: error: 5 problems in the settings:"
    assert lines[1:3] == [
        f"  modle: unknown config key; did you mean model? (from config file {config})",
        f"  batchsize: unknown config key; did you mean batch_size? (from config file {config})",
    ]
    assert lines[3].startswith("  hf_token: a token is never read from the job's settings")
    assert "HF_TOKEN" in lines[3] and "hf_token_file" in lines[3]
    assert lines[4].startswith("  language: unknown language 'klingon'")
    assert lines[5].startswith("  vad_onset: Input should be less than 1")
    assert token not in result.stderr + result.stdout

    variable = cli("run", one_file_source, "--out", tmp_path / "out", env={"WHISPERX_BATCH_HF_TOKEN": token})
    assert variable.exit_code == 2 and "WHISPERX_BATCH_HF_TOKEN: a token is never read" in variable.stderr
    assert token not in variable.stderr + variable.stdout
    typo = cli("run", one_file_source, "--out", tmp_path / "out", env={"WHISPERX_BATCH_BATCHSIZE": "4"})
    assert "WHISPERX_BATCH_BATCHSIZE: unknown environment variable; did you mean WHISPERX_BATCH_BATCH_SIZE?" in (
        typo.stderr
    )


def test_enable_diarization_is_read_as_diarize(cli, one_file_source: Path, tmp_path: Path, tiny_en: str) -> None:
    config = tmp_path / "job.toml"
    common = ("--out", tmp_path / "out", "--model", tiny_en, "--device", "cpu", "--dry-run")
    config.write_text('enable_diarization = true\nformats = ["rttm"]\n')  # rttm needs diarize
    from_file = cli("run", one_file_source, *common, "--config", config)
    assert from_file.exit_code == 0, from_file.stderr
    assert from_file.stdout.splitlines() == ["memo.wav"]
    from_environment = cli(
        "run", one_file_source, *common, "--formats", "rttm", env={"WHISPERX_BATCH_ENABLE_DIARIZATION": "true"}
    )
    assert from_environment.exit_code == 0, from_environment.stderr

    config.write_text("enable_diarization = true\ndiarize = false\n")
    both = cli("run", one_file_source, *common, "--config", config)
    assert both.exit_code == 2 and "diarize: given twice (also as enable_diarization): keep one" in both.stderr

    config.write_text('enable_diarization = "sometimes"\n')
    bad = cli("run", one_file_source, *common, "--config", config)
    assert bad.exit_code == 2 and f"(from config file {config}, as enable_diarization)" in bad.stderr


# --- run reports ------------------------------------------------------------------------------------------


def old_report(out: Path, run_id: str) -> None:
    (out / "_runs").mkdir(parents=True, exist_ok=True)
    document = {"run_id": run_id, "started_at": "2020-01-01T00:00:00.000Z", "exit_code": 0}
    (out / "_runs" / f"{run_id}.json").write_text(json.dumps(document))


def test_only_the_newest_run_reports_are_kept(cli, tmp_path: Path, tiny_en: str) -> None:
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    old = [f"20200101T00000{index}Z-aaaaaa" for index in range(4)]
    for run_id in old:
        old_report(out, run_id)
    args = ("run", drop, "--out", out, "--model", tiny_en, "--device", "cpu", "--allow-empty")
    assert cli(*args, "--keep-run-reports", "2").exit_code == 0
    kept = report_files(out)
    assert len(kept) == 2 and kept[0] == f"{old[-1]}.json" and kept[1] > kept[0]  # the newest old one, and this run's
    assert sorted(path.name for path in (out / "_runs").glob("*.html")) == [kept[1].replace(".json", ".html")]

    assert cli(*args, "--keep-run-reports", "0").exit_code == 0  # 0 keeps every report
    assert len(report_files(out)) == 3
    config = tmp_path / "job.toml"
    config.write_text("keep_run_reports = 1\n")
    assert cli(*args, "--config", config).exit_code == 0
    assert len(report_files(out)) == 1
    assert len(list((out / "_runs").glob("*.html"))) == 1  # each report's page goes with it
    assert cli("status", out).exit_code == 0


# --- a single file as SOURCE, every format ------------------------------------------------------------------


def test_a_single_file_is_a_source_and_all_formats_are_written(cli, tmp_path: Path, tiny_en: str, memo: Path) -> None:
    folder, out = tmp_path / "calls", tmp_path / "out"
    folder.mkdir()
    recording = shutil.copy(memo, folder / "memo.wav")
    shutil.copy(memo, folder / "other.wav")
    args = ("--out", out, "--model", tiny_en, "--device", "cpu", "--no-align")
    result = cli("run", recording, *args, "--formats", "all")
    assert result.exit_code == 0, result.stderr
    for ext in ("json", "srt", "vtt", "txt", "tsv", "turns.json"):
        assert (out / f"memo.wav.{ext}").stat().st_size > 0
    assert not (out / "memo.wav.rttm").exists()  # needs --diarize
    assert read(out / "memo.wav.manifest.json")["input"]["key"] == "memo.wav"
    assert "meeting on friday" in (out / "memo.wav.txt").read_text().lower()
    assert not (out / "other.wav.json").exists()
    again = cli("run", recording, *args, "--formats", "all")
    assert "0 succeeded, 1 skipped" in again.stderr

    named = shutil.copy(memo, tmp_path / "voice.dat")  # named on its own, a file needs no media extension
    dry = cli("run", named, *args, "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.splitlines() == ["voice.dat"]
    missing = cli("run", tmp_path / "gone.wav", *args)
    assert missing.exit_code == 3 and "SOURCE is not a readable folder" in missing.stderr
