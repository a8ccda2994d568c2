"""Decoding in a process of its own: a file that crashes FFmpeg (a decoder bug, a crafted file), runs out of memory
or hangs takes down one short-lived child, never the run, and a child past its deadline is killed.

A small server process (`python -m batch.engine.decoder FD`, started on first use, one per `IsolatedDecoder`)
has numpy and PyAV loaded and forks a child per file. The request carries the file's descriptor and one end of a
socket pair of its own; the child decodes (`batch.engine.audio.decode`, the same function, the same samples) and
sends the samples back on it, then exits. The server is single-threaded, so forking it is safe; the run's own
process has threads and is never forked. When a child dies, the server sends its exit status on the request's
socket. A file whose child dies is decoded again in a fresh one; a second death fails the file alone
(`DecoderDied`): a file that kills its decoder twice is the cause, not the machine.

The server and its children ignore SIGINT and SIGTERM (systemd signals every process of a unit; the run decides
when to stop), and the server exits when the run's end of its socket closes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import BinaryIO

import numpy as np

from batch.common.errors import DecoderDied, FileFailure, ForeignError
from batch.engine.audio import decode
from batch.engine.pipeline import Deadline

log = logging.getLogger(__name__)

REAP_SECONDS = 0.2  # how often the server looks for children that exited


@dataclass(frozen=True)
class _Request:
    split_channels: bool
    max_seconds: float | None


class IsolatedDecoder:
    """`decode` as `batch.engine.audio.decode` does it, in a child process. Thread-safe; `close` ends the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: subprocess.Popen[bytes] | None = None
        self._requests: socket.socket | None = None

    def decode(
        self,
        stream: BinaryIO,
        split_channels: bool = False,
        max_seconds: float | None = None,
        deadline: Deadline | None = None,
    ) -> np.ndarray:
        """The file's samples. Raises what decode raises (AudioDecodeError, AudioTooLong), FileTimeout past
        `deadline`, and DecoderDied when two children in a row died on the file. A stream that is no file
        (an in-memory one) is decoded in this process."""
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return decode(stream, split_channels, max_seconds)
        deaths: list[str] = []
        while True:
            result = self._decode_once(fd, _Request(split_channels, max_seconds), deadline)
            if not isinstance(result, str):
                return result
            deaths.append(result)
            if len(deaths) == 2:
                raise DecoderDied(
                    f"decoding killed its process twice ({deaths[0]}; then {deaths[1]}): the file fails so that it "
                    "cannot take down more"
                )
            log.warning("the decoder %s; decoding the file again in a fresh process", result)

    def close(self) -> None:
        with self._lock:
            if self._requests is not None:
                self._requests.close()
                self._requests = None
            if self._server is not None:
                try:
                    self._server.wait(5)
                except subprocess.TimeoutExpired:
                    self._server.kill()
                    self._server.wait()
                self._server = None

    # --- one child -----------------------------------------------------------------------------------------------

    def _decode_once(self, fd: int, request: _Request, deadline: Deadline | None) -> np.ndarray | str:
        """The samples, or why the child died."""
        ours, theirs = socket.socketpair()
        with ours:
            try:
                self._send(request, fd, theirs)
            finally:
                theirs.close()
            with Connection(os.dup(ours.fileno())) as reply:
                try:
                    return _read_reply(reply, deadline)
                except (EOFError, OSError):
                    return "ended without a result"

    def _send(self, request: _Request, fd: int, reply: socket.socket) -> None:
        """The request to the server, started (again) if it is not running."""
        with self._lock:
            for attempt in range(2):
                requests = self._running_server(restart=attempt > 0)
                try:
                    socket.send_fds(requests, [pickle.dumps(request)], [fd, reply.fileno()])
                    return
                except OSError:
                    if attempt:
                        raise

    def _running_server(self, restart: bool) -> socket.socket:
        if self._requests is not None and not restart and self._server is not None and self._server.poll() is None:
            return self._requests
        if self._requests is not None:
            self._requests.close()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.kill()
            self._server.wait()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._server = subprocess.Popen(
                [sys.executable, "-m", "batch.engine.decoder", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                # this process's imports wherever they come from (a program may have extended sys.path)
                env={**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)},
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the run only, which decides
            )
        self._requests = ours
        return ours


def _read_reply(reply: Connection, deadline: Deadline | None) -> np.ndarray | str:
    """What the child says, its samples or its error, or what the server says of its death. Past the deadline the
    socket is closed unread, and the server kills the child."""
    while True:
        if not reply.poll(None if deadline is None else max(0.0, deadline.at - time.monotonic())):
            assert deadline is not None
            raise deadline.missed("in decode")
        kind, *payload = reply.recv()
        if kind == "samples":
            shape, dtype = payload
            samples = np.empty(shape, dtype=dtype)
            reply.recv_bytes_into(memoryview(samples).cast("B"))
            return samples
        elif kind == "error":
            raise _rebuilt(*payload)
        elif kind == "died":
            return str(payload[0])


def _rebuilt(type_name: str, message: str, file_problem: bool) -> Exception:
    from batch.common import errors

    known = getattr(errors, type_name, None)
    if isinstance(known, type) and issubclass(known, FileFailure):
        return known(message)
    return ForeignError(type_name, message, file_problem)


# --- the server's side ---------------------------------------------------------------------------------------


def serve(fd: int) -> None:
    """Fork a child per request until the run's end of the socket closes. A child whose requester stopped
    listening (its deadline passed, or the run is gone) is killed: it may be hung."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    requests = socket.socket(fileno=fd)
    children: dict[int, socket.socket | None] = {}  # pid -> its request's reply socket, None once abandoned
    while True:
        listening = {reply: pid for pid, reply in children.items() if reply is not None}
        ready, _, _ = select.select([requests, *listening], [], [], REAP_SECONDS)
        for reply in ready:
            if reply is not requests:  # the requester never writes: this is its end closing
                _kill(listening[reply])
                children[listening[reply]] = None
                reply.close()
        _reap(children)
        if requests not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(requests, 4096, 2)
        if not message:
            for pid in children:  # the run is gone: nobody will read what they decode
                _kill(pid)
            return
        if len(fds) != 2:
            for extra in fds:
                os.close(extra)
            continue
        source_fd, reply_fd = fds
        pid = os.fork()
        if pid == 0:
            requests.close()
            _child(pickle.loads(message), source_fd, reply_fd)  # never returns
        os.close(source_fd)
        children[pid] = socket.socket(fileno=reply_fd)


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _reap(children: dict[int, socket.socket | None]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = children.pop(pid, None)
        if reply is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            with contextlib.suppress(OSError), Connection(os.dup(reply.fileno())) as said:
                said.send(("died", _death(code)))
        reply.close()


_WHY = {
    signal.SIGKILL: " (the kernel's out-of-memory killer, or kill -9)",
    signal.SIGSEGV: " (a crash in native code)",
    signal.SIGABRT: " (a native library aborted)",
    signal.SIGBUS: " (a crash in native code)",
}


def _death(code: int) -> str:
    if code > 0:
        return f"exited with code {code}"
    try:
        number = signal.Signals(-code)
    except ValueError:
        return f"was killed by signal {-code}"
    return f"was killed by {number.name}{_WHY.get(number, '')}"


def _child(request: _Request, source_fd: int, reply_fd: int) -> None:
    from batch.common.errors import describe, is_file_problem

    code = 0
    try:
        with Connection(reply_fd) as reply:
            try:
                with os.fdopen(source_fd, "rb") as stream:
                    stream.seek(0)
                    samples = decode(stream, request.split_channels, request.max_seconds)
            except Exception as exc:
                record = describe(exc)
                reply.send(("error", record["type"], record["message"], is_file_problem(exc)))
            else:
                reply.send(("samples", samples.shape, samples.dtype.str))
                reply.send_bytes(memoryview(np.ascontiguousarray(samples)).cast("B"))
    except Exception:  # the run stopped listening: nothing to tell
        code = 1
    os._exit(code)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
