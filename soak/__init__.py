"""The fault-injection soak (issue 34): scenarios drawn from a seed over the modes (folder, S3 prefix, queue), one
process or `--workers 2`, claims or shards, played against the real command line with moto's S3 and SQS behind a
fault-injecting proxy, then checked against the invariants of `soak.checks`. See docs/reliability.md.

Not part of the installed package: run it from the project's root (`make soak`, `python -m soak`).
"""
