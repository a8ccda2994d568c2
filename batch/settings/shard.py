"""Static shards: many workers split one SOURCE by a stable hash of each key, with no coordination.

Worker I of N takes exactly the keys whose hash lands on I, so the shards are disjoint, together cover
every key, and do not depend on listing order, on the other workers, or on the run: a rerun of worker I
sees the same keys as before (files added since are spread over the shards like the rest).

The shard comes from `--shard I/N`, or else from the index the batch engine gives each worker:

- Kubernetes Indexed Job: `JOB_COMPLETION_INDEX`, and `WHISPERX_BATCH_SHARD_COUNT` set by the manifest
  (Kubernetes puts the index in the pod, never the completion count);
- AWS Batch array job: `AWS_BATCH_JOB_ARRAY_INDEX` and `AWS_BATCH_JOB_ARRAY_SIZE` (or, where the size is
  missing, `WHISPERX_BATCH_SHARD_COUNT`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

SHARD_COUNT_ENV_VAR = "WHISPERX_BATCH_SHARD_COUNT"
KUBERNETES_INDEX_ENV_VAR = "JOB_COMPLETION_INDEX"
AWS_BATCH_INDEX_ENV_VAR = "AWS_BATCH_JOB_ARRAY_INDEX"
AWS_BATCH_SIZE_ENV_VAR = "AWS_BATCH_JOB_ARRAY_SIZE"

_SHARD_SPEC = re.compile(r"\s*([+-]?[0-9]+)\s*/\s*([+-]?[0-9]+)\s*")
_WHOLE_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count` (0-based): owns the keys whose stable hash modulo `count` is `index`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count must be 1 or more, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index must be from 0 to {self.count - 1} (0-based) for {self.count} shards, not {self.index}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` (e.g. `0/4` ... `3/4`) -> Shard; a ValueError that says what is wrong otherwise."""
        match = _SHARD_SPEC.fullmatch(text)
        if not match:
            raise ValueError(f"shard {text!r}: expected I/N, a 0-based index and a count, such as 0/4")
        return cls(index=int(match[1]), count=int(match[2]))

    def owns(self, key: str) -> bool:
        """Whether this worker takes `key` (the input's path relative to SOURCE)."""
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard, from 0 to count - 1, that owns `key`, the same on every machine, Python and release.

    The first 8 bytes of the key's BLAKE2b digest, as an unsigned integer, modulo `count`. Python's
    hash() would not do: it is salted per process. Keys that are not valid UTF-8 on disk (os.fsdecode
    leaves them as lone surrogates) hash as their original bytes.
    """
    if count < 1:
        raise ValueError(f"shard count must be 1 or more, not {count}")
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_from_environment(environ: Mapping[str, str]) -> Shard | None:
    """The shard a batch engine assigned to this worker, or None when no engine variable is set.

    Kubernetes Indexed Jobs set `JOB_COMPLETION_INDEX` but expose the completion count nowhere in the
    pod, so the manifest passes it as `WHISPERX_BATCH_SHARD_COUNT`. AWS Batch array children get
    `AWS_BATCH_JOB_ARRAY_INDEX` and `AWS_BATCH_JOB_ARRAY_SIZE`. An index without a count, a count
    without an index, disagreeing counts, or indexes from two engines raise ValueError naming the
    variables, since guessing would make workers overlap or leave keys to nobody.
    """
    kubernetes_index = _read_whole_number(environ, KUBERNETES_INDEX_ENV_VAR)
    aws_index = _read_whole_number(environ, AWS_BATCH_INDEX_ENV_VAR)
    configured_count = _read_whole_number(environ, SHARD_COUNT_ENV_VAR)

    if kubernetes_index is not None and aws_index is not None:
        raise ValueError(
            f"both {KUBERNETES_INDEX_ENV_VAR} and {AWS_BATCH_INDEX_ENV_VAR} are set; "
            "give the shard explicitly with --shard I/N (WHISPERX_BATCH_SHARD)"
        )
    if kubernetes_index is not None:
        return _engine_shard(KUBERNETES_INDEX_ENV_VAR, kubernetes_index, SHARD_COUNT_ENV_VAR, configured_count)
    if aws_index is not None:
        engine_count = _read_whole_number(environ, AWS_BATCH_SIZE_ENV_VAR)
        if engine_count is None:
            return _engine_shard(AWS_BATCH_INDEX_ENV_VAR, aws_index, SHARD_COUNT_ENV_VAR, configured_count)
        if configured_count is not None and configured_count != engine_count:
            raise ValueError(
                f"{AWS_BATCH_SIZE_ENV_VAR}={engine_count} and {SHARD_COUNT_ENV_VAR}={configured_count} disagree; "
                f"remove {SHARD_COUNT_ENV_VAR} (AWS Batch gives the array size itself)"
            )
        return _engine_shard(AWS_BATCH_INDEX_ENV_VAR, aws_index, AWS_BATCH_SIZE_ENV_VAR, engine_count)
    if configured_count is not None:
        raise ValueError(
            f"{SHARD_COUNT_ENV_VAR} is set but no shard index is: expected {KUBERNETES_INDEX_ENV_VAR} "
            f"(a Kubernetes Job with completionMode: Indexed) or {AWS_BATCH_INDEX_ENV_VAR} (an AWS Batch array "
            "job), or give the shard with --shard I/N"
        )
    return None


def resolve_shard(configured: str | None, environ: Mapping[str, str]) -> Shard | None:
    """The shard to run: `--shard` (or WHISPERX_BATCH_SHARD) when given, else the engine's; None for all keys."""
    if configured is not None and configured.strip():
        return Shard.parse(configured)
    return shard_from_environment(environ)


def _engine_shard(index_name: str, index: int, count_name: str, count: int | None) -> Shard:
    if count is None:
        raise ValueError(
            f"{index_name}={index} is set but the shard count is not: set {count_name} to the number of workers"
            + (" (spec.completions of the Indexed Job)" if index_name == KUBERNETES_INDEX_ENV_VAR else "")
        )
    if count < 1:
        raise ValueError(f"{count_name}={count}: the shard count must be 1 or more")
    if index >= count:
        raise ValueError(f"{index_name}={index} is out of range for {count_name}={count} (indexes are 0-based)")
    return Shard(index=index, count=count)


def _read_whole_number(environ: Mapping[str, str], name: str) -> int | None:
    """A variable holding a whole number 0 or more; None when unset or empty (templates leave blanks)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise ValueError(f"{name}={raw!r} is not a whole number 0 or more")
    return int(raw)
