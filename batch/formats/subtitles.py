"""Subtitles a person can read: cues of at most N lines of W columns, each shown at most D seconds.

whisperx's SRT/VTT writers lay aligned words out by width and line count, but they have no longest duration,
leave the spaces between words out of a line's width, and write a segment without timed words (here a whole
VAD chunk, up to 30 s and 300+ characters) as one cue. So the cues are laid out here, and whisperx's writers
write them (numbering, timestamps, the VTT header, the `[SPEAKER_00]: ` prefix).

Cue times come from the aligned words when there are any. A segment without timed words (`--no-align`, or no
alignment model for its language) has only its VAD chunk's start and end: Whisper reads chunks without
timestamps (whisperx's batched decoding), so the chunk's span is shared among its words in proportion to
their characters. A pause inside the chunk shifts those estimates; alignment gives the words' real times.

A cue holds one language. In VTT a cue in another language than the transcript's is wrapped in a `<lang xx>` span
(WebVTT's cue language span), so a player or a screen reader reads it in its language; SRT has no such markup.
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from batch.formats.transcript import Transcript, has_spaces
from batch.settings.options import CUE_SECONDS, LINE_COUNT, LINE_WIDTH

PAUSE_BREAK = 1.0  # seconds of silence between two words that end a cue: no text shown before it is said
SENTENCE_ENDS = (".", "?", "!", "…", "。", "？", "！")
# In a language written without spaces any character may start a line, except inside a run of Latin letters
# or digits (a name, a number); whitespace before a unit is kept.
_UNSPACED_UNIT = re.compile(r"\s*(?:[A-Za-z0-9]+(?:['’.,-][A-Za-z0-9]+)*|\S)")
_SPACED_UNIT = re.compile(r"\S+")


@dataclass(frozen=True)
class SubtitleOptions:
    max_line_width: int = LINE_WIDTH  # in columns: a full-width (CJK) character takes two
    max_line_count: int = LINE_COUNT
    max_cue_duration: float = CUE_SECONDS
    highlight_words: bool = False  # underline each word while it is said (aligned words only)


@dataclass(frozen=True)
class Token:
    """A unit a line may break before: a word, or a character in a language written without spaces."""

    text: str
    start: float
    end: float
    speaker: str | None
    aligned: bool  # timed by alignment, not estimated
    separator: str  # put before it when it follows another token on a line
    opens_segment: bool = False  # the first of its segment (a sentence when aligned): it starts a new cue
    language: str | None = None  # its segment's


@dataclass
class Cue:
    lines: list[list[Token]]
    speaker: str | None
    longest: float

    @property
    def language(self) -> str | None:
        return self.lines[0][0].language

    @property
    def tokens(self) -> list[Token]:
        return [token for line in self.lines for token in line]

    @property
    def start(self) -> float:
        return self.lines[0][0].start

    @property
    def end(self) -> float:
        return min(self.lines[-1][-1].end, self.start + self.longest)

    def text(self, underline: Token | None = None, escaped: bool = False) -> str:
        return "\n".join(line_text(line, underline, escaped) for line in self.lines)


def line_text(line: list[Token], underline: Token | None = None, escaped: bool = False) -> str:
    """The line as shown; `escaped`: `&`, `<` and `>` as WebVTT's character references, so that text (a person's
    `<script>`, Whisper's `a < b`) is shown as written and never read as cue markup."""
    texts = [html.escape(t.text, quote=False) if escaped else t.text for t in line]
    parts = [f"<u>{text}</u>" if t is underline else text for t, text in zip(line, texts, strict=True)]
    return parts[0] + "".join(t.separator + part for t, part in zip(line[1:], parts[1:], strict=True))


def columns(text: str) -> int:
    """The width `text` takes on screen: wide and full-width characters (CJK) take two columns."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def speaker_prefix(speaker: str | None) -> str:
    return f"[{speaker}]: " if speaker is not None else ""  # as whisperx's writers put it


# --- from segments to tokens -------------------------------------------------------------------------------


def tokens_of(segments: list[dict[str, Any]], language: str | None) -> list[Token]:
    """Every word of the transcript in order, with its time (aligned, or estimated within its segment) and its
    segment's language (else the transcript's)."""
    tokens: list[Token] = []
    for segment in segments:
        spoken = segment.get("language") or language
        pieces = [replace(piece, language=spoken) for piece in segment_tokens(segment, has_spaces(spoken))]
        if pieces:
            pieces[0] = replace(pieces[0], opens_segment=True)
        tokens += pieces
    return tokens


def segment_tokens(segment: dict[str, Any], spaced: bool) -> list[Token]:
    speaker, words = segment.get("speaker"), segment.get("words") or []
    if not any("start" in word for word in words):
        return split_piece(segment["text"], segment["start"], segment["end"], speaker, False, spaced)
    tokens: list[Token] = []
    cursor = segment["start"]
    for word in words:  # a word alignment could not time is shown with the word before it
        start, end = word.get("start", cursor), word.get("end", word.get("start", cursor))
        cursor = end
        tokens += split_piece(word["word"], start, end, word.get("speaker", speaker), "start" in word, spaced)
    return tokens


def split_piece(text: str, start: float, end: float, speaker: str | None, aligned: bool, spaced: bool) -> list[Token]:
    """`text` (spoken from `start` to `end`) in tokens, each timed in proportion to its characters."""
    text = text.strip()
    if not text:
        return []
    span = max(end - start, 0.0)
    units = (_SPACED_UNIT if spaced else _UNSPACED_UNIT).finditer(text)
    return [
        Token(
            unit.group().strip(),
            start + span * unit.start() / len(text),
            start + span * unit.end() / len(text),
            speaker,
            aligned,
            " " if spaced or unit.group()[0].isspace() else "",
        )
        for unit in units
    ]


# --- from tokens to cues -----------------------------------------------------------------------------------


def layout(tokens: list[Token], options: SubtitleOptions) -> list[Cue]:
    """Fill lines and cues word by word; a word wider than a line gets a line of its own."""
    cues: list[Cue] = []
    for token in tokens:
        cue = cues[-1] if cues else None
        if cue is None or starts_new_cue(cue, token, options.max_cue_duration):
            cues.append(Cue([[token]], token.speaker, options.max_cue_duration))
            continue
        line = cue.lines[-1]
        prefix = speaker_prefix(cue.speaker) if len(cue.lines) == 1 else ""
        if columns(prefix + line_text([*line, token])) <= options.max_line_width:
            line.append(token)
        elif len(cue.lines) < options.max_line_count and not line[-1].text.endswith(SENTENCE_ENDS):
            cue.lines.append([token])
        else:  # the cue is full, or a sentence ends where a new line would begin: a new sentence, a new cue
            cues.append(Cue([[token]], token.speaker, options.max_cue_duration))
    return cues


def starts_new_cue(cue: Cue, token: Token, longest: float) -> bool:
    last = cue.lines[-1][-1]
    return (
        token.opens_segment
        or token.speaker != cue.speaker
        or token.language != cue.language
        or token.end - cue.start > longest
        or token.start - last.end > PAUSE_BREAK
    )


def frames(cue: Cue, highlight_words: bool, escaped: bool = False) -> list[tuple[float, float, str]]:
    """The cue as (start, end, text); with highlighting, one frame per aligned word with that word underlined,
    and the plain text between them (whisperx's `--highlight_words` markup)."""
    aligned = [token for token in cue.tokens if token.aligned] if highlight_words else []
    if not aligned:
        return [(cue.start, cue.end, cue.text(escaped=escaped))]
    shown: list[tuple[float, float, str]] = []
    cursor = cue.start
    for token in aligned:
        start, end = max(token.start, cursor), min(token.end, cue.end)
        if start > cursor:
            shown.append((cursor, start, cue.text(escaped=escaped)))
        if end > start:
            shown.append((start, end, cue.text(token, escaped)))
            cursor = end
    if cursor < cue.end:
        shown.append((cursor, cue.end, cue.text(escaped=escaped)))
    return shown


def subtitles(transcript: Transcript, fmt: str, options: SubtitleOptions) -> str:
    """SRT or VTT text of the transcript, written by whisperx's writer from the cues laid out here."""
    from whisperx.utils import get_writer

    segments = []
    for cue in layout(tokens_of(list(transcript["segments"]), transcript["language"]), options):
        speaker = {"speaker": cue.speaker} if cue.speaker is not None else {}
        shown = frames(cue, options.highlight_words, escaped=fmt == "vtt")
        if fmt == "vtt" and cue.language and cue.language != transcript["language"]:
            shown = [(start, end, f"<lang {cue.language}>{text}</lang>") for start, end, text in shown]
        segments += [{"start": start, "end": end, "text": text, **speaker} for start, end, text in shown]
    buffer = io.StringIO()
    # Without "words" the writer writes each segment as one cue, as given: its own layout options stay off.
    writer_options = {"max_line_width": None, "max_line_count": None, "highlight_words": False}
    get_writer(fmt, "").write_result(
        {"segments": segments, "language": transcript["language"] or ""}, file=buffer, options=writer_options
    )
    return buffer.getvalue()
