"""The hallucination guard's table (issue 27): words written where nobody speaks, WER on speech, and its cost.

Contenders, with bench/tools.py's commands (Whisper tiny.en int8 on the CPU, 2 threads, batch size 8, English,
--no-align, pyannote VAD onset 0.5 offset 0.363):
- cli: the whisperx command line given all files at once;
- off: `whisperx-batch run --hallucinations off` (whisperx's output);
- drop: `whisperx-batch run --hallucinations drop` (the default).

1. NON-SPEECH: bench/nonspeech.py's set at seed 2 (the phrase bag was built on seeds 1, 3, 5, 7, 9): the words each
   writes, the files left with text, and of those the ones drop's manifests mark for review.
2. Speech: SHORT and MIXED (bench/corpus.py, at the scales given) and MUSIC (SHORT's first recordings with
   chords before them, and chords under them at a fifth of the speech's level): WER of off and drop against the
   references (bench/score.py), and the segments drop took out (every one of them is real speech here).
3. Wall time of off and drop on SHORT and MIXED, whole processes from start to exit, in the order
   off-drop-drop-off (A-B-B-A), into a fresh DEST each time; the guard's cost is drop's mean over off's. Beside it
   the same ratio of CPU seconds (the process and its children, from wait4: steadier on a shared machine), and the
   guard's own stage seconds from drop's last run report (judging and second readings).

Markdown on stdout and in OUT/hallucinations.md, raw figures in OUT/hallucinations.json.

Usage: python -m bench.bench_hallucinations [--short-scale 0.3] [--mixed-scale 0.3] [--no-cli] [--out out/bench]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.corpus import Corpus, Recording
from bench.measure import add_common_arguments, common_corpora, fmt, machine, mean, say
from bench.nonspeech import chords, make_set
from bench.score import wer_percent
from bench.tools import Measured, Setup, command, run_measured, run_report, texts, tiny_en

MUSIC_FILES = 8  # SHORT recordings given music before and under them


def runner(setup: Setup, corpus: Corpus, out: Path, mode: str) -> list[str]:
    return [*command("runner", setup, corpus, out), "--hallucinations", mode]


def run(tool: str, setup: Setup, corpus: Corpus, folder: Path, timeout: float) -> tuple[Measured, Path]:
    out = folder / f"{corpus.name}-{tool}"
    argv = command("cli", setup, corpus, out) if tool == "cli" else runner(setup, corpus, out, tool)
    return run_measured(argv, folder / f"{corpus.name}-{tool}.log", out, timeout), out


def non_speech_corpus(folder: Path) -> Corpus:
    made = make_set(folder / "audio", seed=2)
    return Corpus("nonspeech", folder / "audio", tuple(Recording(path.name, 0.0, "") for path in made))


def music_corpus(short: Corpus, folder: Path) -> Corpus:
    """Speech with chords before it (4 s) and under it (at a fifth of its level), as hold music does."""
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    recordings = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        music = chords(work / "music.wav", random.Random(4), seconds=30)
        for index, recording in enumerate(short.recordings[:MUSIC_FILES]):
            speech = work / f"speech{index}.wav"
            subprocess.run(
                ["ffmpeg", "-loglevel", "error", "-y", "-i", str(short.folder / recording.name), "-ar", "16000",
                 "-ac", "1", str(speech)], check=True,
            )  # fmt: skip
            before, under = audio / f"before{index}.wav", audio / f"under{index}.wav"
            lead = work / f"lead{index}.wav"
            subprocess.run(["sox", str(music), str(lead), "trim", "0", "4"], check=True)
            subprocess.run(["sox", str(lead), str(speech), str(before)], check=True)
            subprocess.run(["sox", "-m", "-v", "1", str(speech), "-v", "0.2", str(music), str(under), "trim", "0",
                            str(recording.seconds)], check=True)  # fmt: skip
            recordings += [Recording(before.name, recording.seconds + 4, recording.text),
                           Recording(under.name, recording.seconds, recording.text)]  # fmt: skip
    return Corpus("music", audio, tuple(recordings))


def words(transcripts: list[str]) -> int:
    return sum(len(text.split()) for text in transcripts)


def quality_of(out: Path, key: str) -> dict[str, Any]:
    path = out / f"{key}.manifest.json"
    return (json.loads(path.read_text()).get("quality") or {}) if path.is_file() else {}


def non_speech_table(corpus: Corpus, setup: Setup, folder: Path, timeout: float, cli: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for tool in (["cli"] if cli else []) + ["off", "drop"]:
        measured, out = run(tool, setup, corpus, folder, timeout)
        written = texts("cli" if tool == "cli" else "runner", corpus, out)
        with_text = [r.name for r, text in zip(corpus.recordings, written, strict=True) if text.strip()]
        results[tool] = {
            "words": words(written),
            "files_with_text": with_text,
            "reviewed": [name for name in with_text if quality_of(out, name).get("review")],
            "texts": dict(zip([r.name for r in corpus.recordings], written, strict=True)),
            "seconds": round(measured.seconds, 2),
        }
        say(f"  {corpus.name} {tool}: {results[tool]['words']} words on {len(with_text)} files")
    return results


def speech_table(corpus: Corpus, setup: Setup, folder: Path, timeout: float, timed: bool) -> dict[str, Any]:
    references = [r.text for r in corpus.recordings]
    order = ["off", "drop", "drop", "off"] if timed else ["off", "drop"]
    results: dict[str, Any] = {mode: {"seconds": [], "cpu_seconds": []} for mode in ("off", "drop")}
    for mode in order:
        measured, out = run(mode, setup, corpus, folder, timeout)
        seconds = measured.seconds
        results[mode]["seconds"].append(round(seconds, 2))
        results[mode]["cpu_seconds"].append(round(measured.cpu_seconds or 0.0, 2))
        results[mode]["guard_seconds"] = (run_report(out).get("stage_seconds") or {}).get("quality", 0.0)
        results[mode]["wer_percent"] = round(wer_percent(references, texts("runner", corpus, out)), 2)
        quality = (run_report(out).get("quality") or {}) if mode == "drop" else {}
        if mode == "drop":
            results[mode]["segments_dropped"] = quality.get("segments_dropped", 0)
            results[mode]["segments_cut"] = quality.get("segments_cut", 0)
            results[mode]["files_to_review"] = quality.get("files_to_review", 0)
        say(f"  {corpus.name} {mode}: {seconds:.1f} s, WER {results[mode]['wer_percent']}")
    return results


def render(setup: Setup, non_speech: dict[str, Any], speech: dict[str, dict[str, Any]], files: int) -> str:
    lines = [
        "# hallucinations",
        "",
        f"{setup.describe()}. Machine: {machine()}.",
        "",
        f"Non-speech (bench/nonspeech.py, seed 2: {files} recordings in which no word is said):",
        "",
        "| tool | words written | files with text | of those, marked for review |",
        "|---|---|---|---|",
    ]
    names = {"cli": "whisperx CLI", "off": "whisperx-batch --hallucinations off", "drop": "whisperx-batch (drop)"}
    for tool, result in non_speech.items():
        reviewed = f"{len(result['reviewed'])}" if tool == "drop" else "n/a"
        lines.append(f"| {names[tool]} | {result['words']} | {len(result['files_with_text'])} | {reviewed} |")
    baseline = non_speech.get("cli") or non_speech["off"]
    if baseline["words"]:
        fewer = 100 * (1 - non_speech["drop"]["words"] / baseline["words"])
        lines += ["", f"drop writes {fewer:.0f} % fewer words than the {'CLI' if 'cli' in non_speech else 'off run'}."]
    lines += [
        "",
        "Speech (WER in percent against the references; segments dropped are real speech lost):",
        "",
        "| corpus | WER off | WER drop | segments dropped | loops cut | files to review | wall off (s) | "
        "wall drop (s) | drop / off wall | drop / off CPU | guard stage (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in speech.items():
        off, drop = result["off"], result["drop"]
        ratio = mean(drop["seconds"]) / mean(off["seconds"])  # type: ignore[operator]
        cpu = mean(drop["cpu_seconds"]) / mean(off["cpu_seconds"])  # type: ignore[operator]
        lines.append(
            f"| {name} | {off['wer_percent']} | {drop['wer_percent']} | {drop['segments_dropped']} | "
            f"{drop['segments_cut']} | {drop['files_to_review']} | {' / '.join(map(str, off['seconds']))} | "
            f"{' / '.join(map(str, drop['seconds']))} | {fmt(ratio, '{:.3f}')} | {fmt(cpu, '{:.3f}')} | "
            f"{drop['guard_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "ignored: speech runs are A-B-B-A")
    parser.add_argument("--no-cli", action="store_true", help="leave the whisperx command line out")
    args = parser.parse_args()
    setup = Setup(args.model or tiny_en(), threads=args.threads, batch_size=args.batch_size)
    folder = args.out / "hallucinations"
    folder.mkdir(parents=True, exist_ok=True)
    non_speech = non_speech_corpus(folder / "nonspeech")
    say("non-speech")
    results: dict[str, Any] = {
        "nonspeech": non_speech_table(non_speech, setup, folder, args.run_timeout, not args.no_cli)
    }
    corpora = common_corpora(args)
    short = next(corpus for corpus in corpora if corpus.name == "short")
    speech: dict[str, dict[str, Any]] = {}
    for corpus in [*corpora, music_corpus(short, folder / "music")]:
        say(corpus.name)
        speech[corpus.name] = speech_table(corpus, setup, folder, args.run_timeout, timed=corpus.name != "music")
    results["speech"] = speech
    table = render(setup, results["nonspeech"], speech, len(non_speech.recordings))
    (args.out / "hallucinations.md").write_text(table)
    (args.out / "hallucinations.json").write_text(json.dumps(results, indent=2))
    print(table)


if __name__ == "__main__":
    main()
