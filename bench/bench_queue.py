"""The queue's overhead per file (issue 28): the same recordings, read from S3, done as a folder run over their
prefix and as a queue run fed one message per file, against moto's server on 127.0.0.1 (S3 and SQS).

A. `whisperx-batch run s3://bench/in/ --out s3://bench/a-N/` (the listing decides the files);
B. one `{"source": "s3://bench/in/KEY"}` message per file sent to a fresh queue, then
   `whisperx-batch run --queue URL --queue-idle IDLE --out s3://bench/b-N/`.

Both are bench/tools.py's runner setup (tiny.en int8 on the CPU, --threads 2, batch size 8, English, --no-align,
pyannote VAD). Each first runs once untimed (imports and model files in the page cache); then whole processes
are timed in the order A-B-B-A into fresh DEST prefixes. B ends once the queue has been empty for --queue-idle
seconds, counted from the last message received: files are fetched ahead, so that wait mostly passes while the
last files are in work, and what it adds is part of the queue's cost. The overhead per file is (B - A) / files.
WER is read from the transcripts each run wrote to S3 (a queue run's keys are the objects' keys: in/NAME).

Usage: python -m bench.bench_queue [--scale 0.3] [--idle 2] [--out out/bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.corpus import Corpus, ensure_corpus
from bench.score import wer_percent
from bench.tools import Setup, command, run_timed, texts, tiny_en

BUCKET = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.3, help="of the SHORT corpus (1.0: 30 recordings)")
    parser.add_argument("--idle", type=int, default=2, help="the queue run's --queue-idle seconds")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    try:
        corpus = ensure_corpus("short", scale=args.scale)
        results = measure(corpus, Setup(model=tiny_en()), args.idle, args.out / "runs" / "queue")
    finally:
        server.stop()
    table = render(corpus, results, args.idle)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queue.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "queue.md").write_text(table + "\n")


def measure(corpus: Corpus, setup: Setup, idle: int, folder: Path) -> dict[str, Any]:
    import boto3

    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    for path in corpus.paths:
        s3.upload_file(str(path), BUCKET, f"in/{path.name}")
    runs: dict[str, list[dict[str, float]]] = {"folder": [], "queue": []}
    for label in ["warm-folder", "warm-queue", "folder", "queue", "queue", "folder"]:
        kind = label.removeprefix("warm-")
        number = len(runs[kind]) + 1
        dest = f"s3://{BUCKET}/{label}-{number}/"
        if kind == "folder":
            argv = command("runner", setup, corpus, folder / "unused")
            argv[argv.index("run") + 1] = f"s3://{BUCKET}/in/"
        else:
            queue_url = sqs.create_queue(QueueName=f"{label}-{number}")["QueueUrl"]
            for path in corpus.paths:
                sqs.send_message(
                    QueueUrl=queue_url, MessageBody=json.dumps({"source": f"s3://{BUCKET}/in/{path.name}"})
                )
            argv = command("runner", setup, corpus, folder / "unused")
            argv[argv.index("run") + 1 : argv.index("run") + 2] = ["--queue", queue_url, "--queue-idle", str(idle)]
        argv[argv.index("--out") + 1] = dest
        seconds = run_timed(argv, folder / f"{label}-{number}.log", folder / f"{label}-{number}")
        local = download(s3, dest, folder / f"{label}-{number}")
        wer = wer_percent([r.text for r in corpus.recordings], texts("runner", keyed(corpus, kind), local))
        print(f"{label} {number}: {seconds:.1f} s, WER {wer:.1f} %", flush=True, file=sys.stderr)
        if not label.startswith("warm"):
            runs[kind].append({"seconds": seconds, "wer_percent": wer})
    return {
        "files": len(corpus.recordings),
        "audio_seconds": corpus.audio_seconds,
        "setup": dataclasses.asdict(setup),
        "runs": runs,
    }


def keyed(corpus: Corpus, kind: str) -> Corpus:
    """The corpus with each recording named by its key in DEST: a queue run keys files by their object keys."""
    if kind == "folder":
        return corpus
    named = tuple(dataclasses.replace(recording, name=f"in/{recording.name}") for recording in corpus.recordings)
    return dataclasses.replace(corpus, recordings=named)


def download(s3: Any, dest: str, folder: Path) -> Path:
    prefix = dest.removeprefix(f"s3://{BUCKET}/")
    folder.mkdir(parents=True, exist_ok=True)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            target = folder / item["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(BUCKET, item["Key"], str(target))
    return folder


def render(corpus: Corpus, results: dict[str, Any], idle: int) -> str:
    folder = statistics.mean(run["seconds"] for run in results["runs"]["folder"])
    queue = statistics.mean(run["seconds"] for run in results["runs"]["queue"])
    files = results["files"]
    overhead = (queue - folder) / files
    wer = {kind: results["runs"][kind][0]["wer_percent"] for kind in ("folder", "queue")}
    each = {kind: ", ".join(f"{run['seconds']:.1f}" for run in results["runs"][kind]) for kind in ("folder", "queue")}
    return "\n".join(
        [
            f"{corpus.describe()}, from S3 to S3 on moto's server, A-B-B-A, {time.strftime('%Y-%m-%d')}",
            "",
            "| run | wall (each) | mean | WER |",
            "|---|---:|---:|---:|",
            f"| folder: s3://bench/in/ | {each['folder']} s | {folder:.1f} s | {wer['folder']:.1f} % |",
            f"| queue: one message per file, --queue-idle {idle} | {each['queue']} s | {queue:.1f} s | "
            f"{wer['queue']:.1f} % |",
            "",
            f"Overhead of the queue per file: {overhead * 1000:+.0f} ms ({files} files).",
        ]
    )


if __name__ == "__main__":
    main()
