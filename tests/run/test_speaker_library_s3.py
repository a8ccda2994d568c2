"""A speaker library on S3 (moto's server on 127.0.0.1, real boto3), with Resemblyzer at the encoder seam: written
with conditional writes, so an enrolment that lands between another's read and write is kept, not overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from batch.run.speakers.calibrate import calibrate
from batch.run.speakers.enrol import Enroller, enrolment_vad
from batch.run.speakers.store import LibraryPlace
from batch.storage.s3 import make_client
from tests.voices import build_voices, resemblyzer


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_voices(tmp_path_factory.mktemp("voices"))


def test_an_enrolment_that_lands_meanwhile_is_kept(s3_endpoint: str, voices: Path) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="voices")
    url = "s3://voices/team/speakers.json"
    enroller = Enroller(resemblyzer(), enrolment_vad("cpu"))
    enroller.enrol(LibraryPlace.at(url, s3_endpoint), [("alice", voices / "alice" / "alice_1.wav")])

    # Just before this enrolment's write leaves, another machine's enrolment of bob lands (at the HTTP seam)
    client = make_client(s3_endpoint)
    writes: list[int] = []

    def another_enrolment_first(request: Any, **_: Any) -> None:
        writes.append(1)
        if len(writes) == 1:
            enroller.enrol(LibraryPlace.at(url, s3_endpoint), [("bob", voices / "bob" / "bob_1.wav")])

    client.meta.events.register("before-send.s3.PutObject", another_enrolment_first)
    outcomes = enroller.enrol(LibraryPlace.at(url, client=client), [("carol", voices / "carol" / "carol_1.wav")])
    assert [outcome.status for outcome in outcomes] == ["enrolled"]
    assert len(writes) == 2  # the first write was refused (412: the library had changed), the second made on bob's
    library = LibraryPlace.at(url, s3_endpoint).load()
    assert sorted(library.names) == ["alice", "bob", "carol"]

    enroller.enrol(LibraryPlace.at(url, s3_endpoint), [("carol", voices / "carol" / "carol_2.wav")])
    calibration = calibrate(LibraryPlace.at(url, s3_endpoint))
    assert LibraryPlace.at(url, s3_endpoint).load().threshold == calibration.threshold
