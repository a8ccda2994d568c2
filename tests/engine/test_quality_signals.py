"""The hallucination guard's signals, judgement and actions, on texts and figures (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batch.engine.quality.guard import QualityOptions, Reading, guard, merge_records, recheck_aligned
from batch.engine.quality.judge import SegmentSignals, judge
from batch.engine.quality.phrases import PhraseBag, bundled_phrases, read_phrases
from batch.engine.quality.signals import (
    VadView,
    aligned_score,
    compression_ratio,
    cut_loop,
    find_loop,
    mean_score_within,
    ngram_repetition,
    normalise,
    repeats_neighbour,
    speech_seconds_within,
    speech_share,
    words_per_second,
)
from batch.engine.quality.summary import confidence, summarize

LOOPED = "We're in the rest of the end of the year. We're in the rest of the end of the end of the end of the end."
SPEECH = "Could you send me the file before the meeting tomorrow morning? Please, I need to review it."


def test_normalise_drops_case_and_punctuation_but_keeps_apostrophes() -> None:
    assert normalise("  Thank you, VERY much!  ") == "thank you very much"
    assert normalise("I\u2019ll see you next time.") == "i'll see you next time"


def test_compression_ratio_is_faster_whispers() -> None:
    assert compression_ratio("") == 0.0
    assert compression_ratio(SPEECH) < 1.5
    assert compression_ratio("the end of the " * 20) > 2.4


def test_a_loop_is_found_and_cut_to_its_first_occurrence() -> None:
    loop = find_loop(LOOPED)
    assert loop is not None and (loop.size, loop.repeats) == (3, 4)
    assert cut_loop(LOOPED, loop) == "We're in the rest of the end of the year. We're in the rest of the end."


@pytest.mark.parametrize(
    "text",
    [SPEECH, "No, no, no, I said no.", "I'm sorry, I'm sorry, I'm sorry.", "Yes. Yes. Yes."],
)
def test_short_repetitions_people_say_are_not_loops(text: str) -> None:
    assert find_loop(text) is None


def test_four_times_the_same_two_words_is_a_loop() -> None:
    text = "I'm sorry, I'm sorry, I'm sorry, I'm sorry"
    loop = find_loop(text)
    assert loop is not None and cut_loop(text, loop) == "I'm sorry,"


def test_repeated_ngrams_count_copies_with_small_changes() -> None:
    near_copies = "We're in the rest of the area. We're on the rest of the area. We're on the rest of the area."
    assert ngram_repetition(near_copies) >= 0.4
    assert ngram_repetition(SPEECH) == 0.0
    assert ngram_repetition("too short") == 0.0


def test_a_segment_repeating_its_neighbour() -> None:
    assert repeats_neighbour("Thank you for watching the video.", "thank you for watching the video")
    assert repeats_neighbour("see you in the next video", "And we will see you in the next video.")
    assert not repeats_neighbour("Yes.", "Yes.")  # too short to mean anything
    assert not repeats_neighbour(SPEECH, None)


def test_words_per_second() -> None:
    assert words_per_second("one two three four", 2.0) == 2.0
    assert words_per_second("one", 0.0) == 0.0


def test_what_the_vad_saw_in_a_chunk() -> None:
    regions = [(0.0, 1.0), (2.0, 4.0), (5.0, 6.0)]
    assert speech_seconds_within(regions, 0.5, 5.5) == pytest.approx(3.0)
    middles = np.arange(0, 10, 0.5)
    scores = np.where(middles < 5, 0.9, 0.1)
    assert mean_score_within(scores, middles, 0.0, 4.5) == pytest.approx(0.9)
    assert mean_score_within(scores, middles, 20.0, 21.0) is None
    assert speech_share(VadView(2.0), 4.0) == 0.5
    assert speech_share(None, 4.0) is None


def test_aligned_score_is_the_mean_of_scored_words() -> None:
    assert aligned_score([{"word": "a", "score": 0.2}, {"word": "b", "score": 0.4}, {"word": "7"}]) == 0.3
    assert aligned_score([{"word": "7"}]) is None


def test_the_bundled_bag_holds_phrases_found_on_non_speech() -> None:
    phrases = bundled_phrases("en")
    assert "thank you" in phrases and all(phrase == normalise(phrase) for phrase in phrases)
    assert bundled_phrases("xx") == frozenset()


def test_a_phrase_matches_whole_or_as_most_of_a_segment(tmp_path: Path) -> None:
    bag = PhraseBag()
    assert bag.matches("Thank you.", "en") and bag.matches("Thank you very much!", "en")
    assert not bag.matches("Thank you for calling the support line today.", "en")  # "thank you" is too short
    own = tmp_path / "phrases.txt"
    own.write_text("# mine\nSubtitles by the Amara.org community  # a classic\n")
    assert read_phrases(own.read_text()) == {"subtitles by the amara org community"}
    assert PhraseBag.with_file(str(own)).matches("Subtitles by the Amara.org community", "de")


def signals(text: str = SPEECH, **changes: object) -> SegmentSignals:
    figures: dict[str, object] = {
        "text": text,
        "seconds": 5.0,
        "avg_logprob": -0.2,
        "no_speech_prob": 0.05,
        "compression_ratio": compression_ratio(text),
        "ngram_repetition": ngram_repetition(text),
        "loop": find_loop(text),
        "words_per_second": words_per_second(text, 5.0),
        "speech_share": 0.95,
        "vad_score": 0.95,
        "known_phrase": PhraseBag().matches(text, "en"),
        "repeats_neighbour": False,
    }
    return SegmentSignals(**{**figures, **changes})  # type: ignore[arg-type]


def test_clear_speech_is_kept_without_doubt() -> None:
    verdict = judge(signals())
    assert not verdict.hallucinated and not verdict.review and verdict.reasons == ()


def test_a_person_who_says_thank_you_keeps_it() -> None:
    verdict = judge(signals("Thank you."))
    assert not verdict.hallucinated and verdict.reasons == ("known_phrase",) and verdict.review


def test_a_known_phrase_over_weak_audio_is_a_hallucination() -> None:
    verdict = judge(signals("Thank you.", no_speech_prob=0.4))
    assert verdict.hallucinated and set(verdict.reasons) == {"no_speech_probability", "known_phrase"}


def test_two_weak_acoustic_signals_are_a_hallucination_one_is_not() -> None:
    assert judge(signals(no_speech_prob=0.45, avg_logprob=-0.8)).hallucinated
    assert judge(signals(avg_logprob=-0.8, speech_share=0.3)).hallucinated
    one = judge(signals(avg_logprob=-0.8))
    assert not one.hallucinated and not one.review
    strong = judge(signals(no_speech_prob=0.7))
    assert not strong.hallucinated and strong.review  # a strong figure alone: kept, for review


def test_a_loop_over_weak_audio_is_dropped_in_speech_it_is_cut() -> None:
    assert judge(signals(LOOPED, no_speech_prob=0.4)).hallucinated
    verdict = judge(signals(LOOPED))
    assert not verdict.hallucinated and verdict.loop is not None


def test_too_many_words_a_second() -> None:
    fast = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    assert "too_fast" in judge(signals(fast, seconds=1.0, words_per_second=14.0)).reasons


def reading(text: str, start: float, nsp: float = 0.05, lp: float = -0.2) -> Reading:
    return Reading(start, start + 5.0, text, lp, nsp, VadView(4.8, 0.9))


READINGS = [reading(SPEECH, 0.0), reading("Thank you.", 5.0, nsp=0.45, lp=-0.9), reading(LOOPED, 10.0)]


def no_better(indices: list[int]) -> list[Reading]:
    return [READINGS[index] for index in indices]


def test_drop_reads_a_hallucination_again_then_drops_it_and_cuts_loops() -> None:
    asked: list[list[int]] = []

    def reread(indices: list[int]) -> list[Reading]:
        asked.append(indices)
        return [reading("Thanks.", 5.0, nsp=0.8, lp=-1.5) for _ in indices]

    kept, record = guard(READINGS, QualityOptions("drop"), "en", reread)
    assert asked == [[1]] and record.reread == 1 and record.recovered == 0
    assert [r.text for r in kept] == [
        SPEECH,
        "",
        "We're in the rest of the end of the year. We're in the rest of the end.",
    ]
    assert [{k: v for k, v in entry.items() if k != "signals"} for entry in record.dropped] == [
        {
            "start": 5.0,
            "end": 10.0,
            "text": "Thank you.",
            "reasons": ["no_speech_probability", "low_log_probability", "known_phrase"],
        }
    ]
    assert record.dropped[0]["signals"]["no_speech_prob"] == 0.45
    assert record.cut[0]["text"] == LOOPED and record.cut[0]["kept"] == kept[2].text
    assert record.speech_seconds == pytest.approx(14.4)


def test_what_whisper_itself_finds_silent_is_not_read_again() -> None:
    """faster-whisper's silence rule (no-speech probability above 0.6, log-probability below -1.0)."""

    def reread(indices: list[int]) -> list[Reading]:
        raise AssertionError("nothing to read again")

    kept, record = guard([reading("Thank you.", 0.0, nsp=0.8, lp=-1.4)], QualityOptions("drop"), "en", reread)
    assert kept[0].text == "" and record.reread == 0 and len(record.dropped) == 1


def test_a_segment_read_well_the_second_time_keeps_its_new_text_and_the_first_on_record() -> None:
    better = reading("Hello there, how are you?", 5.0)
    kept, record = guard(READINGS, QualityOptions("drop"), "en", lambda indices: [better])
    assert kept[1] == better and record.recovered == 1 and not record.dropped
    assert [{k: v for k, v in entry.items() if k != "signals"} for entry in record.replaced] == [
        {
            "start": 5.0,
            "end": 10.0,
            "text": "Thank you.",
            "reasons": ["no_speech_probability", "low_log_probability", "known_phrase"],
            "kept": "Hello there, how are you?",
        }
    ]
    assert record.replaced[0]["signals"]["no_speech_prob"] == 0.45
    assert record.to_dict()["replaced"] == record.replaced


def test_a_second_reading_of_nothing_drops_the_segment_on_record() -> None:
    """Whisper reads the chunk as silent at a hotter temperature (--no-speech-threshold): not a recovery."""
    kept, record = guard(READINGS, QualityOptions("drop"), "en", lambda indices: [reading(" ", 5.0, lp=-1.2)])
    assert kept[1].text == "" and record.reread == 1 and record.recovered == 0 and not record.replaced
    assert [entry["text"] for entry in record.dropped] == ["Thank you."]


def test_flag_changes_no_text_and_reads_nothing_again() -> None:
    def reread(indices: list[int]) -> list[Reading]:
        raise AssertionError("flag reads nothing again")

    kept, record = guard(READINGS, QualityOptions("flag"), "en", reread)
    assert kept == READINGS and [entry["text"] for entry in record.flagged] == ["Thank you."]
    assert not record.dropped and not record.cut and [entry["text"] for entry in record.doubtful] == [LOOPED]


def test_channels_records_merge_in_time_order() -> None:
    _, first = guard(READINGS, QualityOptions("drop"), "en", no_better)
    alone = [reading("Thank you.", 1.0, nsp=0.5, lp=-1.2)]
    _, second = guard(alone, QualityOptions("drop"), "en", lambda indices: [alone[index] for index in indices])
    merged = merge_records([first.to_dict(), None, second.to_dict()])
    assert merged is not None and [entry["start"] for entry in merged["dropped"]] == [1.0, 5.0]
    assert merged["reread"] == 2 and merge_records([None]) is None


def test_the_summary_says_why_a_file_is_for_review() -> None:
    _, record = guard(READINGS, QualityOptions("drop"), "en", no_better)
    segments = [{"start": 0.0, "end": 5.0, "text": SPEECH, "avg_logprob": -0.2}]
    summary = summarize(record.to_dict(), segments, "de", 0.31, speakers=1, min_speakers=2)
    assert summary["review"] and summary["reasons"] == ["low_language_probability", "fewer_speakers_than_asked"]
    assert summary["confidence"] == pytest.approx(0.819, abs=1e-3) and len(summary["dropped"]) == 1
    _, empty = guard([], QualityOptions("drop"), "en", no_better)
    assert summarize(empty.to_dict(), [], None, None)["reasons"] == ["no_speech_found"]
    aligned = [{**segments[0], "words": [{"word": "could", "score": 0.05}]}]
    assert summarize(record.to_dict(), aligned, "en", None)["reasons"] == ["text_poorly_aligned"]


def test_confidence_weighs_segments_by_their_characters() -> None:
    assert confidence([]) is None
    segments = [{"text": "a" * 30, "avg_logprob": -0.1}, {"text": "b" * 10, "avg_logprob": -0.5}]
    assert confidence(segments) == pytest.approx(np.exp(-0.2), abs=1e-3)


def aligned(start: float, end: float, text: str, score: float) -> dict:
    return {"start": start, "end": end, "text": text, "words": [{"word": w, "score": score} for w in text.split()]}


@pytest.mark.parametrize("mode", ["drop", "flag"])
def test_a_doubtful_segment_that_aligns_poorly_has_two_signals_against_it(mode: str) -> None:
    doubt = {"start": 5.0, "end": 10.0, "text": "Right. Thanks for watching.", "reasons": ["low_log_probability"]}
    quality = {"doubtful": [doubt], "dropped": [], "flagged": []}
    segments = [
        aligned(0.5, 4.0, "Clear speech here.", 0.05),  # poorly aligned but not doubtful: kept (a review reason)
        aligned(5.2, 6.0, "Right.", 0.8),
        aligned(6.1, 9.5, "Thanks for watching.", 0.1),
    ]
    kept = recheck_aligned(segments, quality, mode)  # type: ignore[arg-type]
    if mode == "drop":
        assert [s["text"] for s in kept] == ["Clear speech here.", "Right."]
        assert quality["dropped"] == [
            {
                "start": 6.1,
                "end": 9.5,
                "text": "Thanks for watching.",
                "reasons": ["low_log_probability", "poorly_aligned"],
            }
        ]
    else:
        assert kept == segments and quality["flagged"][0]["text"] == "Thanks for watching."
    assert quality["doubtful"] == [doubt]  # "Right." is still there
    unaligned = [{"start": 6.1, "end": 9.5, "text": "Thanks for watching."}]
    assert recheck_aligned(unaligned, {"doubtful": [doubt], "dropped": [], "flagged": []}, "drop") == unaligned
