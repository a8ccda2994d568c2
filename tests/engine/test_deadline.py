"""The per-file deadline (file_timeout) inside the engine, on the real models: a file past it fails alone, its
reason naming the stage that ended past it, and the files beside it are transcribed as ever."""

from __future__ import annotations

import time
from pathlib import Path

from batch.common.errors import FileTimeout
from batch.engine.pipeline import Deadline, DecodedFile, Stopwatch
from tests.conftest import ENGLISH, speak
from tests.engine.test_engine import engine_for, load, run, text_of, words_of


def test_a_file_past_its_deadline_fails_alone_naming_the_stage(tiny_en: str, tmp_path: Path) -> None:
    audio = load(speak(ENGLISH, tmp_path / "memo.wav"))
    gone = Deadline(time.monotonic() - 1.0, 60.0)  # ran out while the file waited
    files = [
        DecodedFile("early.wav", audio, Stopwatch(), deadline=Deadline.after(3600.0)),
        DecodedFile("late.wav", audio, Stopwatch(), deadline=gone),
        DecodedFile("none.wav", audio, Stopwatch()),
    ]
    outcomes = run(engine_for(tiny_en), files)
    late = outcomes["late.wav"]
    assert isinstance(late.error, FileTimeout) and not late.transcribed
    assert str(late.error) == "past its deadline (file_timeout 60 s) in vad: stopped there"
    for key in ("early.wav", "none.wav"):
        assert outcomes[key].error is None and "before the meeting" in words_of(text_of(outcomes[key]))
