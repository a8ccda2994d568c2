"""The real CLI end to end on real files: outputs, manifests, reruns, failures, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ENGLISH, speak, video_without_audio


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def reports(out: Path) -> list[dict]:
    return [read(p) for p in sorted((out / "_runs").glob("*.json"), key=os.path.getmtime)]


@pytest.fixture
def corpus(tmp_path: Path, speech_formats: dict[str, Path], sample_wav: Path) -> Path:
    """Name collisions (a/x.wav, b/x.wav, a/x.mp3), unicode and spaces, a video, real speech."""
    root = tmp_path / "in"
    for key, ext in {"a/x.wav": "wav", "b/x.wav": "wav", "a/x.mp3": "mp3", "vidéo réunion/clip 1.mp4": "mp4"}.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(speech_formats[ext], root / key)
    shutil.copy(sample_wav, root / "call.wav")
    return root


def test_a_folder_becomes_transcripts_and_manifests(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    out = tmp_path / "out"
    result = cli(
        "run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--formats", "srt,vtt", "--formats", "txt,tsv"
    )
    assert result.exit_code == 0, result.stderr
    keys = ["a/x.mp3", "a/x.wav", "b/x.wav", "call.wav", "vidéo réunion/clip 1.mp4"]
    for key in keys:
        transcript = read(out / f"{key}.json")
        assert transcript["schema_version"] == 2 and transcript["language"] == "en"
        assert transcript["segments"] and transcript["duration"] > 1
        assert set(transcript) >= {"segments", "word_segments", "language", "duration"}
        for ext in ("srt", "vtt", "txt", "tsv"):
            assert (out / f"{key}.{ext}").stat().st_size > 0
        manifest = read(out / f"{key}.manifest.json")
        assert manifest["status"] == "succeeded"
        assert manifest["input"]["key"] == key
        assert manifest["input"]["size"] == (corpus / key).stat().st_size
        assert manifest["input"]["fingerprint"].startswith("sha256:")
        assert manifest["settings_hash"].startswith("sha256:")
        assert manifest["language"] == "en" and manifest["audio_seconds"] > 1
        assert set(manifest["timings"]) >= {"decode", "vad", "asr", "write"}
        assert manifest["device"] == "cpu" and manifest["compute_type"] == "int8" and manifest["batch_size"] == 16
        assert manifest["model"] == tiny_en
        assert manifest["versions"]["whisperx"].startswith("3.8")
        assert manifest["run_id"] and manifest["started_at"] <= manifest["finished_at"]
    assert "meeting on friday" in (out / "a/x.wav.txt").read_text().lower()
    assert (out / "a/x.wav.srt").read_text().startswith("1\n00:00:")
    report = reports(out)[-1]
    assert report["counts"] == {"succeeded": 5, "skipped": 0, "failed": 0, "claimed_elsewhere": 0}
    assert report["audio_seconds"] > 40 and report["realtime_factor"] > 0
    assert "5 succeeded, 0 skipped, 0 failed" in result.stderr
    assert not list(out.rglob(".*.tmp"))


def test_rerun_skips_done_files_without_loading_a_model(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    out = tmp_path / "out"
    assert cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*").exit_code == 0
    again = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*")
    assert again.exit_code == 0
    assert "0 succeeded, 2 skipped, 0 failed" in again.stderr
    assert "models loaded" not in again.stderr
    assert reports(out)[-1]["model_load_seconds"] is None

    # A touched but unchanged file is still done (content fingerprint); a changed one is redone.
    os.utime(corpus / "a/x.wav")
    shutil.copy(corpus / "call.wav", corpus / "a/x.mp3")
    third = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*")
    assert "1 succeeded, 1 skipped, 0 failed" in third.stderr
    assert read(out / "a/x.mp3.json")["duration"] == pytest.approx(30.0, abs=0.1)

    # A changed setting redoes everything it shapes; --force redoes all.
    fourth = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*", "--formats", "srt")
    assert "2 succeeded, 0 skipped" in fourth.stderr
    fifth = cli(
        "run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*", "--formats", "srt", "--force"
    )
    assert "2 succeeded, 0 skipped" in fifth.stderr


def test_dry_run_prints_pending_keys_only(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    out = tmp_path / "out"
    dry = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.splitlines() == ["a/x.mp3", "a/x.wav", "b/x.wav", "call.wav", "vidéo réunion/clip 1.mp4"]
    assert not out.exists()
    cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "b/*", "--include", "call.wav")
    dry = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--dry-run")
    assert dry.stdout.splitlines() == ["a/x.mp3", "a/x.wav", "vidéo réunion/clip 1.mp4"]


def make_bad_files(root: Path) -> dict[str, str]:
    """key -> the reason its manifest must give."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.mp3").write_text("meeting notes, not audio\n" * 50)
    good = speak(ENGLISH, root / "good.wav")
    (root / "cut.wav").write_bytes(good.read_bytes()[:30_000])
    video_without_audio(root / "screen.mp4", seconds=1)
    return {
        "empty.wav": "empty file",
        "notes.mp3": "not a readable audio or video file",
        "cut.wav": "truncated",
        "screen.mp4": "no audio track",
    }


def test_bad_files_fail_alone_with_reasons_and_are_retried(cli, tmp_path: Path, tiny_en: str) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    bad = make_bad_files(source)
    result = cli("run", source, "--out", out, "--model", tiny_en, "--no-align")
    assert result.exit_code == 1
    assert read(out / "good.wav.manifest.json")["status"] == "succeeded"
    for key, reason in bad.items():
        manifest = read(out / f"{key}.manifest.json")
        assert manifest["status"] == "failed"
        assert manifest["error"]["type"] == "AudioDecodeError"
        assert reason in manifest["error"]["message"]
        assert not (out / f"{key}.json").exists()
        assert f"failed {key}: AudioDecodeError" in result.stderr
    assert reports(out)[-1]["counts"] == {"succeeded": 1, "skipped": 0, "failed": 4, "claimed_elsewhere": 0}

    # Failed files are retried on the next run; fixed ones then succeed.
    shutil.copy(source / "good.wav", source / "empty.wav")
    again = cli("run", source, "--out", out, "--model", tiny_en, "--no-align")
    assert again.exit_code == 1
    assert "1 succeeded, 1 skipped, 3 failed" in again.stderr


def test_outputs_without_a_succeeded_manifest_are_not_done(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    out = tmp_path / "out"
    cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*")
    (out / "a/x.wav.manifest.json").unlink()  # as if the run died before the manifest
    (out / "a/x.mp3.manifest.json").write_text('{"status": "succ')  # a torn write by another tool
    result = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", "--include", "a/*")
    assert "2 succeeded, 0 skipped" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--batch-size", "0"], 2, "batch_size"),
        (["--language", "klingon"], 2, "language: unknown language"),
        (["--model", "/no/such/model"], 3, "model folder not found"),
        (["--device", "cuda"], 3, "device cuda was asked for but CUDA cannot run here"),
    ],
)
def test_usage_and_environment_errors_stop_before_any_work(
    cli, corpus: Path, tmp_path: Path, tiny_en: str, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "out"
    result = cli("run", corpus, "--out", out, "--model", tiny_en, "--no-align", *args)
    assert result.exit_code == code
    assert message in result.stderr
    assert not list(out.rglob("*.manifest.json")) if out.exists() else True


def test_unwritable_dest_and_missing_source_exit_3(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("run", corpus, "--out", blocker / "out", "--model", tiny_en, "--no-align")
    assert result.exit_code == 3 and "DEST is not writable" in result.stderr
    result = cli("run", tmp_path / "nowhere", "--out", tmp_path / "out", "--model", tiny_en, "--no-align")
    assert result.exit_code == 3 and "SOURCE is not a readable folder" in result.stderr


def test_missing_source_argument_and_unknown_config_key_exit_2(cli, tmp_path: Path) -> None:
    assert cli("run", "--out", tmp_path).exit_code == 2
    config = tmp_path / "job.toml"
    config.write_text('modle = "tiny"\n')
    result = cli("run", tmp_path, "--out", tmp_path / "o", "--config", config)
    assert result.exit_code == 2 and "modle: unknown config key" in result.stderr


def test_config_file_and_environment_drive_a_real_run(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        f'source = "{corpus}"\nout = "{tmp_path / "out"}"\nmodel = "{tiny_en}"\nformats = ["srt"]\n'
        'include = ["call.wav"]\nalign = false\n'
    )
    result = cli("run", "--config", config, env={"WHISPERX_BATCH_FORMATS": "vtt"})
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out/call.wav.vtt").exists() and not (tmp_path / "out/call.wav.srt").exists()


def test_json_logs_carry_run_id_and_key(cli, corpus: Path, tmp_path: Path, tiny_en: str) -> None:
    result = cli(
        "run",
        corpus,
        "--out",
        tmp_path / "out",
        "--model",
        tiny_en,
        "--no-align",
        "--include",
        "b/*",
        "--log-format",
        "json",
    )
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    run_id = reports(tmp_path / "out")[-1]["run_id"]
    file_lines = [line for line in lines if line["key"] == "b/x.wav"]
    assert file_lines and all(line["run_id"] == run_id for line in file_lines)


def test_secrets_never_reach_logs_manifests_or_reports(cli, tmp_path: Path, tiny_en: str) -> None:
    token, aws = "hf_" + "Q" * 34, "s3cr3t/Key+Value" * 2
    source, out = tmp_path / "in", tmp_path / "out"
    make_bad_files(source)
    env = {"HF_TOKEN": token, "AWS_SECRET_ACCESS_KEY": aws}
    result = cli("run", source, "--out", out, "--model", tiny_en, "--no-align", "--log-format", "json", env=env)
    texts = [result.stdout, result.stderr] + [p.read_text() for p in out.rglob("*.json")]
    assert not any(token in text or aws in text for text in texts)


def test_python_dash_m_and_console_script_run_as_real_processes(
    cli_process, tmp_path: Path, tiny_en: str, speech_formats: dict[str, Path]
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(speech_formats["opus"], source / "memo.opus")
    done = cli_process("run", source, "--out", tmp_path / "out", "--model", tiny_en, "--no-align", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "1 succeeded" in done.stderr and "INFO" not in done.stderr
    script = Path(sys.executable).with_name("whisperx-batch")
    help_text = subprocess.run([script, "run", "--help"], capture_output=True, text=True, check=True).stdout
    for option in (
        "--model",
        "--language",
        "--device",
        "--compute-type",
        "--batch-size",
        "--vad-method",
        "--formats",
        "--force",
        "--dry-run",
        "--quiet",
        "--log-format",
        "--config",
    ):
        assert option in help_text


def test_a_killed_run_leaves_nothing_taken_for_done(
    cli_process, tmp_path: Path, tiny_en: str, sample_wav: Path
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for index in range(4):
        shutil.copy(sample_wav, source / f"call{index}.wav")
    command = [
        sys.executable,
        "-m",
        "batch",
        "run",
        str(source),
        "--out",
        str(out),
        "--model",
        tiny_en,
        "--no-align",
        "--quiet",
        "--batch-size",  # one chunk a batch, so files finish one at a time (a shared batch finishes them together)
        "1",
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name.removesuffix(".manifest.json") for p in out.glob("*.manifest.json")}
    assert 1 <= len(finished) < 4
    for key in finished:
        assert read(out / f"{key}.manifest.json")["status"] == "succeeded"
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0
    assert f"{4 - len(finished)} succeeded, {len(finished)} skipped, 0 failed" in rerun.stderr


def test_pyannote_telemetry_is_off_unless_the_user_opts_in(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYANNOTE_METRICS_ENABLED", raising=False)
    assert cli("run").exit_code == 2  # the root callback runs before any command
    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "0"
    monkeypatch.setenv("PYANNOTE_METRICS_ENABLED", "1")
    cli("run")
    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "1"


def test_the_command_line_turns_telemetry_off_without_loading_the_diarizer() -> None:
    """The root callback's set-up comes from batch.common: a command that stops at its settings (exit 2) has
    loaded no module of the diarization stage."""
    program = (
        "import os, sys; from typer.testing import CliRunner; from batch.cli.app import app; "
        "os.environ.pop('PYANNOTE_METRICS_ENABLED', None); code = CliRunner().invoke(app, ['run']).exit_code; "
        "diarize = [m for m in sys.modules if m.startswith('batch.engine.diarize')]; "
        "print(code, os.environ['PYANNOTE_METRICS_ENABLED'], diarize)"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "0", "[]"], done.stderr


def test_odd_local_names_and_dest_equal_to_source(
    cli, tmp_path: Path, tiny_en: str, speech_formats: dict[str, Path]
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    raw_name = os.fsdecode(b"caf\xe9 old share.mp3")  # not valid UTF-8, as on old file servers
    shutil.copy(speech_formats["mp3"], source / raw_name)
    out = tmp_path / "out"
    dry = cli("run", source, "--out", out, "--model", tiny_en, "--dry-run")
    assert dry.stdout_bytes == b"caf\xe9 old share.mp3\n"
    result = cli("run", source, "--out", out, "--model", tiny_en, "--no-align")
    assert result.exit_code == 0, result.stderr
    # Its outputs are named with the byte that is not UTF-8 escaped, so that every DEST can hold them (names.py).
    manifest = json.loads((out / "caf%E9 old share.mp3.manifest.json").read_bytes())
    assert manifest["status"] == "succeeded" and manifest["input"]["key"] == raw_name
    again = cli("run", source, "--out", out, "--model", tiny_en, "--no-align")
    assert "0 succeeded, 1 skipped" in again.stderr
    same = cli("run", source, "--out", source, "--model", tiny_en)
    assert same.exit_code == 2 and "DEST is SOURCE itself" in same.stderr


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("formats = 5\n", "formats"),
        ("align_model = true\n", "align_model"),
        ('s3_endpoint_url = "minio:9000"\n', "s3_endpoint_url"),
    ],
)
def test_odd_config_values_are_usage_errors_naming_the_key(cli, tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "job.toml"
    config.write_text(toml)
    result = cli("run", tmp_path, "--out", tmp_path / "out", "--config", config)
    assert result.exit_code == 2 and f"{key}:" in result.stderr
