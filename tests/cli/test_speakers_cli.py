"""`whisperx-batch speakers enroll|list|remove|calibrate` through the real command line, with the production encoder
loaded by the real path (community-1's WeSpeakerResNet34 at full size, random weights: the plumbing, not the
naming, which tests/run/test_speaker_library.py tests with a pretrained encoder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.voices import build_voices, decoded, write_wav


@pytest.fixture(scope="module")
def community_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.models import build_diarization_pipeline

    folder = tmp_path_factory.mktemp("community-1")
    build_diarization_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_voices(tmp_path_factory.mktemp("voices"))


def test_enrol_list_calibrate_remove(cli, community_1: Path, voices: Path, tmp_path: Path) -> None:  # noqa: ANN001
    library = tmp_path / "speakers.json"
    model = ["--diarize-model", str(community_1), "--device", "cpu"]
    carol = [voices / "carol" / "carol_1.wav", voices / "carol" / "carol_2.wav"]
    result = cli("speakers", "enroll", library, "--name", "carol", *carol, *model)
    assert result.exit_code == 0, result.output
    assert result.output.count(": enrolled") == 2

    short = write_wav(tmp_path / "short.wav", decoded(carol[0])[:16_000])
    folder = tmp_path / "from"
    for name in ("alice", "bob", "carol"):  # FOLDER/NAME/*.wav, one sample each (carol's enrolled above)
        (folder / name).mkdir(parents=True)
        shutil.copy(voices / name / f"{name}_1.wav", folder / name)
    result = cli("speakers", "enroll", library, "--from", folder, *model, "--json")
    assert result.exit_code == 0, result.output
    statuses = [(s["name"], s["status"]) for s in json.loads(result.output)["samples"]]
    assert statuses == [("alice", "enrolled"), ("bob", "enrolled"), ("carol", "already_enrolled")]

    result = cli("speakers", "enroll", library, "--name", "dave", short, *model)
    assert result.exit_code == 1 and "refused (too short: 1.0 s" in result.output

    listed = json.loads(cli("speakers", "list", library, "--json").output)
    assert [(n["name"], n["samples"]) for n in listed["names"]] == [("alice", 1), ("bob", 1), ("carol", 2)]
    assert listed["encoder"]["name"] == "pyannote/WeSpeakerResNet34" and listed["encoder"]["dimension"] == 256
    assert listed["threshold"] is None and listed["default_threshold"] == 0.66

    result = cli("speakers", "calibrate", library, "--false-name-rate", "0.05", "--json")
    assert result.exit_code in (0, 1), result.output  # random weights: any voice may look like any other
    calibrated = json.loads(result.output)
    assert np.isfinite(calibrated["threshold"]["equal_error_rate"]) and calibrated["threshold"]["same_pairs"] == 1
    text = cli("speakers", "list", library).output
    assert f"version {calibrated['version']}" in text and "calibrated" in text

    result = cli("speakers", "remove", library, "bob")
    assert result.exit_code == 0 and "bob: 1 sample removed" in result.output
    after = json.loads(cli("speakers", "list", library, "--json").output)
    assert [n["name"] for n in after["names"]] == ["alice", "carol"] and after["version"] != calibrated["version"]
    assert "samples changed since: calibrate again" in cli("speakers", "list", library).output


def test_a_damaged_or_foreign_library_is_one_line_and_exit_2(
    cli, community_1: Path, voices: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    library = tmp_path / "speakers.json"
    model = ["--diarize-model", str(community_1), "--device", "cpu"]
    sample = voices / "carol" / "carol_1.wav"
    assert cli("speakers", "enroll", library, "--name", "carol", sample, *model).exit_code == 0
    good = library.read_text()

    document = json.loads(good)
    document["encoder"]["revision"] = "sha256:0123"
    library.write_text(json.dumps(document))
    result = cli("speakers", "enroll", library, "--name", "carol", voices / "carol" / "carol_2.wav", *model)
    assert result.exit_code == 2 and "another speaker encoder (revision" in result.output
    assert "Traceback" not in result.output

    library.write_text(good[:100])
    for args in (
        ("list", library),
        ("calibrate", library),
        ("remove", library, "carol"),
        ("enroll", library, "--name", "x", sample),
    ):
        result = cli("speakers", *args)
        assert result.exit_code == 2, (args, result.output)
        assert "is damaged: not JSON" in result.output and "Traceback" not in result.output
    assert library.read_text() == good[:100]  # left as it was
