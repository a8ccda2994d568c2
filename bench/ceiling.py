"""The in-process ceiling: whisperx loaded once in one process, all audio decoded first, then
`model.transcribe(audio, batch_size=B, language=L)` per file; only that loop is timed.

No runner can beat it with the same model and batch size while it transcribes files one by one, so it tells
how much of a tool's wall time is start-up, decoding and waiting. Writes OUT/STEM.json per file (segments, as
the whisperx command line does) and OUT/_ceiling.json with load_seconds, decode_seconds and
transcribe_seconds. Run by bench/compare.py; by hand:
python -m bench.ceiling FILE... --model DIR --out DIR [--device cpu --compute-type int8 --threads 2 --batch-size 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--language", default="en")
    parser.add_argument("--vad-onset", type=float, default=0.5)
    parser.add_argument("--vad-offset", type=float, default=0.363)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The allocator setting the runner's command line makes (freed buffers reused, not faulted in again): without
    # it this bound would be slower than the runner on the CPU, and no bound.
    from batch.common.runtime import reuse_freed_memory

    reuse_freed_memory()

    started = time.perf_counter()
    import torch
    import whisperx

    if args.threads:
        torch.set_num_threads(args.threads)
    model = whisperx.load_model(
        args.model,
        args.device,
        compute_type=args.compute_type,
        language=args.language,
        vad_method="pyannote",
        vad_options={"chunk_size": 30, "vad_onset": args.vad_onset, "vad_offset": args.vad_offset},
        local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1",
        threads=args.threads or 4,
    )
    loaded = time.perf_counter()
    audios = [whisperx.load_audio(str(path)) for path in args.files]
    decoded = time.perf_counter()
    results = []
    with contextlib.redirect_stdout(io.StringIO()):  # whisperx prints every segment
        for audio in audios:
            results.append(model.transcribe(audio, batch_size=args.batch_size, language=args.language))
    finished = time.perf_counter()

    args.out.mkdir(parents=True, exist_ok=True)
    for path, result in zip(args.files, results, strict=True):
        (args.out / f"{path.stem}.json").write_text(json.dumps({"segments": result["segments"]}))
    timings = {
        "load_seconds": round(loaded - started, 3),
        "decode_seconds": round(decoded - loaded, 3),
        "transcribe_seconds": round(finished - decoded, 3),
    }
    (args.out / "_ceiling.json").write_text(json.dumps(timings) + "\n")
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
