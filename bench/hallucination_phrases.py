"""Build the bag of known hallucinations (batch/engine/quality/phrases/LANG.txt) by running Whisper on non-speech.

Every model given reads the non-speech sets of bench/nonspeech.py (seeds 1, 3, 5, 7 and 9 by default; the benchmark
measures on seed 2) as the runner reads them: the pyannote VAD's chunks, beam search of 5 at temperature 0.
Each text it writes at least MIN_COUNT times, of at most MAX_WORDS words and not a loop, becomes a phrase (lower
case, no punctuation).
Phrases already in the file are kept; the file's header says how it was built.

    python -m bench.hallucination_phrases --model tiny.en=DIR --model base=DIR [--language en] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from bench.nonspeech import make_set

MAX_WORDS = 10
MIN_COUNT = 2  # a phrase is kept when written this many times (files, seeds, models): a stock phrase, not noise
PHRASES = Path(__file__).resolve().parent.parent / "batch" / "engine" / "quality" / "phrases"
HEADER = """\
# Known hallucinations of Whisper in {language}: texts it wrote on recordings where nobody speaks.
# Built by bench/hallucination_phrases.py: {models} read the non-speech sets of bench/nonspeech.py
# (seeds {seeds}: music, chords, tones, ringing, DTMF, hum, noise, reversed and crowd speech) through the
# pyannote VAD at temperature 0; every text written at least {min_count} times, of at most {max_words} words,
# not a loop, normalised (lower case, no punctuation). A phrase counts only where the acoustic signals are weak too
# (batch/engine/quality/judge.py). Add your own with --hallucination-phrases FILE (one phrase a line).
"""


def texts_of(model: str, folder: Path, language: str) -> list[str]:
    from batch.engine.asr.recognizer import Chunk, load_recognizer
    from batch.engine.audio import SAMPLE_RATE, decode
    from batch.engine.vad.speech import VadOptions, load_vad

    vad = load_vad(VadOptions(), "cpu")
    recognizer = load_recognizer(model, "cpu", "int8", 2, None, True)
    prompt_language = language if recognizer.multilingual else None
    texts = []
    for path in sorted(folder.glob("*.wav")):
        with path.open("rb") as stream:
            audio = decode(stream)
        chunks = [
            Chunk(audio[int(c.start * SAMPLE_RATE) : int(c.end * SAMPLE_RATE)], prompt_language)
            for c in vad.speech_chunks(audio)
        ]
        for read in recognizer.recognize(chunks):
            print(f"  {path.name}: {read.text.strip()!r} (avg_logprob {read.avg_logprob})")
            texts.append(read.text)
    return texts


def phrases_of(texts: list[str]) -> Counter[str]:
    from batch.engine.quality.signals import find_loop, normalise

    found: Counter[str] = Counter()
    for text in texts:
        phrase = normalise(text)
        if phrase and len(phrase.split()) <= MAX_WORDS and find_loop(text) is None:
            found[phrase] += 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of a CTranslate2 Whisper model")
    parser.add_argument("--language", default="en")
    parser.add_argument("--seeds", default="1,3,5,7,9")
    parser.add_argument("--write", action="store_true", help="write the phrases file (else only print)")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    found: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            folder = make_set(Path(scratch) / f"seed{seed}", seed)[0].parent
            for entry in args.model:
                name, _, path = entry.partition("=")
                print(f"{name} on seed {seed}:")
                found += phrases_of(texts_of(path, folder, args.language))
    target = PHRASES / f"{args.language}.txt"
    known = (
        [line for line in target.read_text().splitlines() if line and not line.startswith("#")]
        if target.exists()
        else []
    )
    phrases = sorted(set(known) | {phrase for phrase, count in found.items() if count >= MIN_COUNT})
    print(f"{len(found)} phrases found, {len(phrases)} in the bag")
    if args.write:
        names = " and ".join(entry.partition("=")[0] for entry in args.model)
        header = HEADER.format(
            language=args.language, models=names, seeds=args.seeds, max_words=MAX_WORDS, min_count=MIN_COUNT
        )
        target.write_text(header + "".join(f"{phrase}\n" for phrase in phrases))


if __name__ == "__main__":
    main()
