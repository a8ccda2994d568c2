"""Whose fault an error is (batch.common.errors.is_file_problem): the one place that decides whether a file gets a
failed manifest, or none because the fault lies outside it (issue 34 #1)."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from batch.common.errors import AudioDecodeError, EnvironmentFault, ForeignError, WorkerDied, is_file_problem


def client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        AudioDecodeError("no audio track (the file holds: video)"),
        AudioDecodeError("empty file"),
        WorkerDied("the file was being transcribed when a worker died, twice"),
        client_error("NoSuchKey", 404),  # deleted since it was announced
        client_error("404", 404),  # a HEAD of an object that is gone
        FileNotFoundError(errno.ENOENT, "No such file or directory"),  # a local file removed after the listing
        ForeignError("AudioDecodeError", "no audio stream", file_problem=True),
    ],
    ids=lambda error: type(error).__name__ + ":" + str(error)[:30],
)
def test_the_files_own_faults(error: Exception) -> None:
    assert is_file_problem(error)


@pytest.mark.parametrize(
    "error",
    [
        client_error("AccessDenied", 403),  # a bucket policy, a missing kms:Decrypt
        client_error("KMS.DisabledException", 400),
        client_error("SlowDown", 503),
        client_error("503", 503),
        client_error("TooManyRequests", 429),
        client_error("InternalError", 500),
        client_error("RequestTimeout", 400),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EIO, "Input/output error"),
        PermissionError(errno.EACCES, "Permission denied"),
        TimeoutError("timed out"),
        MemoryError(),
        EnvironmentFault("alignment model 'x' could not be loaded"),
        RuntimeError("CUDA error: an illegal memory access"),  # nobody foresaw it: not taken for the file's
        ForeignError("RuntimeError", "CUDA error", file_problem=False),
        None,
    ],
    ids=lambda error: type(error).__name__ + ":" + str(error)[:30],
)
def test_faults_outside_the_file(error: Exception | None) -> None:
    assert not is_file_problem(error)
