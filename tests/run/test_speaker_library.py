"""The speaker library with a real pretrained encoder (Resemblyzer) at the seam, on real voices: pyannote's
sample.wav's two people and an espeak-ng voice. Enrol, list, remove, version, refusals, calibrate, S3, damage."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from batch.engine.speakers.encoder import EncoderIdentity
from batch.run.speakers.calibrate import calibrate
from batch.run.speakers.enrol import Enroller, enrolment_vad, folder_samples
from batch.run.speakers.library import LibraryProblem, decode_library
from batch.run.speakers.store import LibraryPlace
from tests.voices import build_voices, decoded, resemblyzer, write_wav

SAMPLE_RATE = 16_000


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_voices(tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="module")
def odd_samples(voices: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("odd")
    alice = decoded(voices / "alice" / "alice_1.wav")
    carol = decoded(voices / "carol" / "carol_1.wav")
    carol *= np.sqrt(np.mean(alice**2) / np.mean(carol**2))  # as loud as alice, as two people on one recording
    return {
        "short": write_wav(folder / "short.wav", alice[: 2 * SAMPLE_RATE]),
        "silent": write_wav(folder / "silent.wav", np.zeros(5 * SAMPLE_RATE, dtype=np.float32)),
        "two_voices": write_wav(folder / "two_voices.wav", np.concatenate([alice, carol])),
        "taking_turns": write_wav(folder / "taking_turns.wav", np.concatenate(turns_of(alice, carol))),
        "not_audio": (folder / "notes.wav").write_bytes(b"not audio at all") and folder / "notes.wav",
    }


def turns_of(first: np.ndarray, second: np.ndarray, seconds: float = 2.5) -> list[np.ndarray]:
    """The two voices taking turns of `seconds` each: first, second, first, second."""
    step = int(seconds * SAMPLE_RATE)
    return [voice[start : start + step] for start in (0, step) for voice in (first, second)]


@pytest.fixture(scope="module")
def enroller() -> Enroller:
    return Enroller(resemblyzer(), enrolment_vad("cpu"))


def test_enrol_list_remove_and_version(enroller: Enroller, voices: Path, tmp_path: Path) -> None:
    place = LibraryPlace.at(str(tmp_path / "speakers.json"))
    outcomes = enroller.enrol(place, folder_samples(voices))
    assert [(o.name, o.status) for o in outcomes] == [
        (n, "enrolled") for n in ("alice",) * 2 + ("bob",) * 2 + ("carol",) * 2
    ]
    library = place.load()
    assert sorted(library.names) == ["alice", "bob", "carol"]
    assert library.encoder == EncoderIdentity("resemblyzer/VoiceEncoder", "0.1.4", 256, "l2")
    first = library.version

    # The file is a person's: indented JSON, one line per vector, the version written in it
    text = (tmp_path / "speakers.json").read_text()
    document = json.loads(text)
    assert document["version"] == first and document["names"]["alice"]["samples"][0]["source"].endswith("alice_1.wav")
    assert len([line for line in text.splitlines() if line.strip().startswith('"embedding"')]) == 6

    # Enrolling the same file again changes nothing
    again = enroller.enrol(place, [("alice", voices / "alice" / "alice_1.wav")])
    assert again[0].status == "already_enrolled" and place.load().version == first

    removed = place.update(lambda current: current.without("alice", str(voices / "alice" / "alice_1.wav")))
    assert removed == 1 and len(place.load().names["alice"]) == 1 and place.load().version != first
    place.update(lambda current: current.without("bob"))
    assert sorted(place.load().names) == ["alice", "carol"]
    with pytest.raises(LibraryProblem, match="no name 'dave'"):
        place.update(lambda current: current.without("dave"))


def test_refusals_name_their_reason_and_the_rest_is_enrolled(
    enroller: Enroller, voices: Path, odd_samples: dict[str, Path], tmp_path: Path
) -> None:
    place = LibraryPlace.at(str(tmp_path / "speakers.json"))
    samples = [("alice", voices / "alice" / "alice_1.wav"), *(("alice", path) for path in odd_samples.values())]
    outcomes = {Path(o.source).stem: o for o in enroller.enrol(place, samples)}
    assert outcomes["alice_1"].status == "enrolled"
    assert outcomes["short"].reason.startswith("too short: 2.0 s")
    assert outcomes["silent"].reason.startswith("silent in 5.0 s")
    assert outcomes["two_voices"].reason.startswith("two voices")
    assert outcomes["taking_turns"].reason.startswith("two voices")
    assert "cannot decode" in outcomes["notes"].reason or "not a readable" in outcomes["notes"].reason
    assert [len(samples) for samples in place.load().names.values()] == [1]


def test_calibrate_measures_a_threshold_and_flags_two_names_of_one_voice(
    enroller: Enroller, voices: Path, tmp_path: Path
) -> None:
    place = LibraryPlace.at(str(tmp_path / "speakers.json"))
    enroller.enrol(place, folder_samples(voices))
    calibration = calibrate(place, 0.01)
    threshold = calibration.threshold
    assert np.isfinite(threshold.equal_error_rate) and 0 <= threshold.equal_error_rate <= 0.5
    assert threshold.same_pairs == 3 and threshold.different_pairs == 12
    assert calibration.look_alikes == []
    library = place.load()
    assert library.threshold == threshold and library.calibration_is_current()
    assert library.version == calibration.version

    # alice's voice under a second name: calibrate says so
    enroller.enrol(place, [("alicia", voices / "alice" / "alice_2.wav")])
    place.update(lambda current: current.without("alice", str(voices / "alice" / "alice_2.wav")))
    assert not place.load().calibration_is_current()
    again = calibrate(place, 0.01)
    assert [(pair.first, pair.second) for pair in again.look_alikes] == [("alice", "alicia")]


def test_a_damaged_library_or_one_of_another_encoder_is_refused(
    enroller: Enroller, voices: Path, tmp_path: Path
) -> None:
    path = tmp_path / "speakers.json"
    place = LibraryPlace.at(str(path))
    enroller.enrol(place, [("carol", voices / "carol" / "carol_1.wav")])
    good = path.read_text()

    path.write_text(good[: len(good) // 2])
    with pytest.raises(LibraryProblem, match="is damaged: not JSON"):
        place.load()
    document = json.loads(good)
    document["names"]["carol"]["samples"][0]["embedding"] = [0.5] * 3
    path.write_text(json.dumps(document))
    with pytest.raises(LibraryProblem, match=r"shape \(3,\), not \(256,\)"):
        place.load()
    document["names"] = ["carol"]  # valid JSON of another shape
    path.write_text(json.dumps(document))
    with pytest.raises(LibraryProblem, match="is damaged: AttributeError"):
        place.load()

    for field, value in (("dimension", 192), ("name", "pyannote/WeSpeakerResNet34")):
        document = json.loads(good)
        document["encoder"][field] = value
        if field == "dimension":  # a library of a 192-dimension encoder (ECAPA's)
            for sample in document["names"]["carol"]["samples"]:
                sample["embedding"] = sample["embedding"][:192]
        path.write_text(json.dumps(document))
        with pytest.raises(LibraryProblem, match=f"another speaker encoder \\({field}"):
            enroller.enrol(place, [("carol", voices / "carol" / "carol_2.wav")])
        assert json.loads(path.read_text())["encoder"][field] == value  # nothing written


def test_the_version_follows_the_content_not_the_file(enroller: Enroller, voices: Path, tmp_path: Path) -> None:
    place = LibraryPlace.at(str(tmp_path / "speakers.json"))
    enroller.enrol(place, [("carol", voices / "carol" / "carol_1.wav")])
    data = (tmp_path / "speakers.json").read_bytes()
    library = decode_library(data, "x")
    assert decode_library(library.encode(), "x").version == library.version
    assert library.encode() == data  # written back, it is the same file: a diff shows only what changed


def test_two_enrolments_at_once_both_land(enroller: Enroller, voices: Path, tmp_path: Path) -> None:
    place = LibraryPlace.at(str(tmp_path / "speakers.json"))
    names = ("alice", "bob", "carol")
    threads = [
        threading.Thread(target=enroller.enrol, args=(place, [(name, voices / name / f"{name}_1.wav")]))
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(place.load().names) == list(names)
