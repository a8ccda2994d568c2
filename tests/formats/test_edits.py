"""A person's decisions on a transcript (batch.formats.edits), and what every text format makes of typed text.

Constructed transcripts, shaped as a run writes them (aligned sentences with words, a diarized file); the CLI
tests (tests/cli/test_corrections.py) apply decisions to transcripts a real run wrote.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re

import pytest

from batch.formats.edits import Edit, EditDoesNotFit, Span, apply_edits
from batch.formats.subtitles import SubtitleOptions
from batch.formats.transcript import Segment, build_transcript
from batch.run.outputs import render


def words(text: str, start: float, step: float = 0.4, speaker: str | None = None) -> list[dict]:
    made = []
    for index, word in enumerate(text.split()):
        timed = {"word": word, "start": round(start + index * step, 3), "end": round(start + (index + 1) * step, 3)}
        made.append({**timed, "score": 0.9, **({"speaker": speaker} if speaker else {})})
    return made


def sentence(text: str, start: float, speaker: str | None = None) -> Segment:
    spoken = words(text, start, speaker=speaker)
    segment: Segment = {"start": spoken[0]["start"], "end": spoken[-1]["end"], "text": text, "avg_logprob": -0.2}
    segment["words"] = spoken  # type: ignore[typeddict-item]
    return {**segment, "speaker": speaker} if speaker else segment  # type: ignore[return-value]


# Two sentences of one VAD chunk (0.5-4.5 s as the guard judged it), then another chunk's sentence.
FIRST, SECOND, THIRD = "Thank you for calling.", "Please hold the line.", "How can I help you today?"
DROPPED = [{"start": 9.0, "end": 11.5, "text": " I'll see you next time.", "reasons": ["known_phrase"]}]
DROPPED[0]["signals"] = {"avg_logprob": -1.3, "no_speech_prob": 0.8}


def transcript(speakers: bool = False):  # type: ignore[no-untyped-def]
    a, b = ("agent", "caller") if speakers else (None, None)
    segments = [sentence(FIRST, 0.5, a), sentence(SECOND, 2.2, a), sentence(THIRD, 5.0, b)]
    turns = [{"start": 0.5, "end": 4.5, "speaker": "agent"}, {"start": 5.0, "end": 12.0, "speaker": "caller"}]
    return build_transcript("en", 0.99, 12.0, segments, turns if speakers else None)


def test_an_edit_replaces_the_text_and_the_words_leave_with_it() -> None:
    before = transcript()
    kept = copy.deepcopy(before)
    after = apply_edits(before, [Edit("edit", Span(0.5, 2.1, FIRST), "Thanks for calling us.")], [])
    assert before == kept  # the transcript given is left as it was
    edited = after["segments"][0]
    assert edited == {"start": 0.5, "end": 2.1, "text": "Thanks for calling us."}  # no words, no scores: typed
    assert after["segments"][1:] == before["segments"][1:]
    assert [w["word"] for w in after["word_segments"]] == SECOND.split() + THIRD.split()


def test_a_chunk_named_as_the_guard_judged_it_removes_its_sentences() -> None:
    chunk = Span(0.5, 4.5, f" {FIRST}  {SECOND}")  # the VAD chunk's span and text, which alignment split in two
    after = apply_edits(transcript(), [Edit("remove", chunk)], [])
    assert [s["text"] for s in after["segments"]] == [THIRD]
    assert [w["word"] for w in after["word_segments"]] == THIRD.split()


def test_a_dropped_segment_is_restored_in_time_order_with_its_speaker() -> None:
    after = apply_edits(transcript(speakers=True), [Edit("keep", Span(9.0, 11.5, "I'll see you next time."))], DROPPED)
    restored = after["segments"][-1]
    assert restored == {
        "start": 9.0,
        "end": 11.5,
        "text": " I'll see you next time.",
        "avg_logprob": -1.3,
        "language": "en",
        "speaker": "caller",
    }
    assert after["speakers"] == ["agent", "caller"] and after["speaker_turns"] == transcript(True)["speaker_turns"]
    between = {"start": 4.6, "end": 4.9, "text": "Hm.", "reasons": ["too_fast"]}
    earlier = apply_edits(transcript(), [Edit("keep", Span(4.6, 4.9, "Hm."))], [*DROPPED, between])
    assert [s["text"] for s in earlier["segments"]] == [FIRST, SECOND, "Hm.", THIRD]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (
            Edit("edit", Span(0.5, 2.1, "Thank you for call."), "x"),
            "no segment 0.500-2.100 s reading 'Thank you for call.'",
        ),
        (Edit("remove", Span(0.6, 2.1, FIRST)), "no segment 0.600-2.100 s"),
        (Edit("remove", Span(0.5, 4.5, f"{FIRST} {THIRD}")), "no segment 0.500-4.500 s"),  # not what lies there
        (Edit("keep", Span(9.0, 11.5, "See you next time.")), "no dropped segment 9.000-11.500 s"),
        (Edit("edit", Span(0.5, 2.1, FIRST), " \n\t"), "an edit to no text"),
    ],
)
def test_a_decision_that_does_not_fit_is_refused_with_what_is_missing(edit: Edit, said: str) -> None:
    with pytest.raises(EditDoesNotFit, match=re.escape(said)):
        apply_edits(transcript(), [edit], DROPPED)


def test_two_decisions_on_one_segment_and_a_restore_made_twice_are_refused() -> None:
    both = [Edit("remove", Span(0.5, 4.5, f"{FIRST} {SECOND}")), Edit("edit", Span(2.2, 3.8, SECOND), "Hold on.")]
    with pytest.raises(EditDoesNotFit, match="two decisions name the segment at 2.200 s"):
        apply_edits(transcript(), both, [])
    keep = Edit("keep", Span(9.0, 11.5, "I'll see you next time."))
    restored = apply_edits(transcript(), [keep], DROPPED)
    with pytest.raises(EditDoesNotFit, match="in the transcript already"):
        apply_edits(restored, [keep], DROPPED)


TYPED = 'Call me at <script>alert("x")</script> & 5 --> 6\nor\tlater'


def test_typed_text_is_data_in_json_and_breaks_no_text_format() -> None:
    after = apply_edits(transcript(speakers=True), [Edit("edit", Span(5.0, 7.4, THIRD), TYPED)], [])
    one_line = 'Call me at <script>alert("x")</script> & 5 --> 6 or later'
    assert after["segments"][-1]["text"] == one_line  # one line, as every segment; nothing escaped in the JSON
    assert json.loads(render(after, "json"))["segments"][-1]["text"] == one_line
    options = SubtitleOptions(max_line_width=20)
    srt, vtt = (render(after, fmt, "a.wav", options).decode() for fmt in ("srt", "vtt"))
    for text, timing in (
        (srt, r"\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d"),
        (vtt, r"\d\d:\d\d\.\d\d\d --> \d\d:\d\d\.\d\d\d"),
    ):
        blocks = [block.splitlines() for block in text.strip().split("\n\n") if block != "WEBVTT"]
        for block in blocks:  # every cue: (a number,) one timing line, then text lines that hold no timing arrow
            timings = [line for line in block if "-->" in line]
            assert len(timings) == 1 and re.fullmatch(timing, timings[0]), block
    assert "<script>" not in vtt and '&lt;script&gt;alert("x")&lt;/script&gt;' in vtt.replace("\n", " ")
    assert "&amp;" in vtt and " & " not in vtt  # WebVTT: & and < only as character references
    assert "<script>" in srt.replace("\n", " ")  # SRT has no escapes: shown as typed
    txt = render(after, "txt").decode().splitlines()
    assert txt[-1] == "[[caller]]" + one_line or txt[-1].endswith(one_line)
    rows = list(csv.reader(io.StringIO(render(after, "tsv").decode()), delimiter="\t"))
    assert all(len(row) == 3 for row in rows) and rows[-1][2] == one_line
    turns = json.loads(render(after, "turns"))
    assert turns[-1]["text"] == one_line and turns[-1]["speaker_id"] == "caller"


def test_an_edited_or_restored_segment_keeps_its_language() -> None:
    """A person's text keeps the language its segment was said in (the VTT's <lang> span and the turns read it); a
    restored segment says the file's language where the guard's entry names none."""
    before = transcript()
    before["segments"][2].update(language="es", language_probability=0.91)
    before["segments"][2]["other_language"] = {"language": "es", "probability": 0.91}
    after = apply_edits(
        before,
        [
            Edit("edit", Span(5.0, 7.4, THIRD), "¿En qué puedo ayudarle?"),
            Edit("keep", Span(9.0, 11.5, DROPPED[0]["text"])),
        ],
        DROPPED,
    )
    edited, restored = after["segments"][2], after["segments"][3]
    assert edited["text"] == "¿En qué puedo ayudarle?" and edited["language"] == "es"
    assert edited["other_language"] == {"language": "es", "probability": 0.91}
    assert restored["language"] == "en"
