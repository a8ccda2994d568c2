"""Speech that left no text (batch.engine.quality.coverage): the seconds counted and the rule for review, on spans
and records (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from batch.engine.quality.coverage import (
    SPEECH_WITHOUT_TEXT_MIN_SECONDS,
    SPEECH_WITHOUT_TEXT_MIN_SHARE,
    speech_left_no_text,
    speech_without_text,
)
from batch.engine.quality.guard import QualityRecord, merge_records
from batch.engine.quality.summary import summarize
from batch.engine.vad.speech import SpeechChunk, _chunks


def test_an_empty_transcript_leaves_all_its_speech_without_text() -> None:
    assert speech_without_text([(0.4, 4.0), (4.6, 9.5)], []) == pytest.approx(8.5)


def test_a_kept_segment_covers_the_speech_under_it_and_no_more() -> None:
    speech = [(0.0, 6.0), (7.0, 16.0)]  # the agent's English, then the caller's Spanish
    assert speech_without_text(speech, [(0.0, 6.0)]) == pytest.approx(9.0)
    assert speech_without_text(speech, [(0.0, 16.0)]) == 0.0
    # sentences timed by their words (alignment): the pause between them, inside one VAD region, counts
    assert speech_without_text([(0.0, 10.0)], [(0.2, 4.0), (4.5, 9.9)]) == pytest.approx(0.2 + 0.5 + 0.1)
    # overlapping and unordered spans on either side are merged first
    assert speech_without_text([(5.0, 8.0), (0.0, 4.0), (3.0, 6.0)], [(7.0, 9.0), (1.0, 2.0), (1.5, 2.5)]) == (
        pytest.approx(8.0 - 1.5 - 1.0)
    )


def test_the_rule_wants_both_seconds_and_a_share() -> None:
    least, share = SPEECH_WITHOUT_TEXT_MIN_SECONDS, SPEECH_WITHOUT_TEXT_MIN_SHARE
    assert speech_left_no_text(8.5, 8.5)  # the call: 8.5 s of clear speech, an empty transcript
    assert speech_left_no_text(9.0, 15.0)  # partly empty: the Spanish half of a call
    assert speech_left_no_text(least, least / share)  # both at their thresholds
    assert not speech_left_no_text(least - 0.01, least - 0.01)  # a cough, a laugh: too short, however empty
    assert not speech_left_no_text(least * 2, least * 2 / share + 1.0)  # too small a share
    assert not speech_left_no_text(6.0, 2700.0)  # an hour's meeting with a stretch of laughter nobody wrote down
    assert not speech_left_no_text(0.0, 0.0)


def record(speech: float, without_text: float) -> dict:
    return QualityRecord(speech_seconds=speech, speech_without_text_seconds=without_text).to_dict()


def test_the_summary_gives_the_seconds_and_the_reason() -> None:
    spoken = [{"start": 0.0, "end": 6.0, "text": "Hello, thank you for calling.", "avg_logprob": -0.2}]
    empty = summarize(record(8.5, 8.5), [], "en", None)
    assert empty["reasons"] == ["speech_without_text"] and empty["review"]
    assert empty["speech_without_text_seconds"] == 8.5
    partly = summarize(record(15.0, 9.0), spoken, "en", None)
    assert partly["reasons"] == ["speech_without_text"] and partly["speech_without_text_seconds"] == 9.0
    written = summarize(record(6.0, 0.2), spoken, "en", None)
    assert written["reasons"] == [] and not written["review"] and written["speech_without_text_seconds"] == 0.2
    silent = summarize(record(0.0, 0.0), [], None, None)
    assert silent["reasons"] == ["no_speech_found"] and silent["speech_without_text_seconds"] == 0.0


def test_channels_add_up_their_speech_without_text() -> None:
    merged = merge_records([record(8.0, 7.5), None, record(6.0, 0.0)])
    assert merged is not None
    assert merged["speech_seconds"] == 14.0 and merged["speech_without_text_seconds"] == 7.5
    assert summarize(merged, [], "en", None)["reasons"] == ["speech_without_text"]


def test_a_chunk_keeps_the_vad_regions_inside_it() -> None:
    audio = np.zeros(16_000 * 10, dtype=np.float32)
    regions = [(0.5, 2.0), (2.5, 4.0), (6.0, 10.02)]  # pyannote may stamp past the last sample
    chunks = _chunks([{"start": 0.5, "end": 4.0}, {"start": 6.0, "end": 10.02}], audio, regions)
    assert [chunk.regions for chunk in chunks] == [((0.5, 2.0), (2.5, 4.0)), ((6.0, 10.0),)]
    assert SpeechChunk(1.0, 3.0).speech_regions == ((1.0, 3.0),)  # made without regions: speech end to end
