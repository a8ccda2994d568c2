"""Where the run's metrics go: a Prometheus text file (node_exporter's textfile collector) and a Pushgateway.

Both get the same registry (batch.metrics), when the run starts, every `interval` seconds on a thread of their
own (a file that takes an hour still shows progress), and once more when the run has ended. Neither can fail
the run: a text file that cannot be written or a Pushgateway that cannot be reached is one warning in the log,
and the transcripts go on being written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.exposition import basic_auth_handler, default_handler

from batch.errors import describe

log = logging.getLogger(__name__)

PUSH_TIMEOUT_SECONDS = 10.0
FINAL_PUSH_TIMEOUT_SECONDS = 3.0  # when the grace period is over: the pod's SIGKILL is near


@dataclass(frozen=True)
class PushTarget:
    """A Pushgateway URL; credentials given in it (`https://user:pass@host`) are sent as HTTP basic auth and
    kept out of `url`, the form that is safe to show."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> PushTarget:
        """`http(s)://[user:pass@]host[:port][/path]`, or `host:port` (http); a ValueError that does not
        repeat the text (it may hold a password) otherwise."""
        raw = text.strip()
        parts = urlsplit(raw if "://" in raw else "http://" + raw)
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError("the port is not a number") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL with a host, such as http://pushgateway:9091")
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), parts.query, ""))
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(url, username, password)

    @property
    def full_url(self) -> str:
        """The URL as given, credentials included: what the settings keep."""
        if self.username is None:
            return self.url
        scheme, _, rest = self.url.partition("://")
        secret = f":{self.password}" if self.password is not None else ""
        return f"{scheme}://{self.username}{secret}@{rest}"

    def handler(self) -> Callable[..., Callable[[], None]]:
        if self.username is None:
            return default_handler

        def with_basic_auth(**request: Any) -> Callable[[], None]:
            return basic_auth_handler(**request, username=self.username, password=self.password or "")

        return with_basic_auth


class MetricsExporter:
    """Exports one registry to a text file and/or a Pushgateway, on a thread while the run goes, and at its end.

    The push replaces the whole group (`job`, plus `grouping` such as the shard) each time (HTTP PUT): what the
    Pushgateway shows is always one run's set, never a mix of two.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        textfile: str | None = None,
        pushgateway: PushTarget | None = None,
        job: str = "whisperx_batch",
        grouping: Mapping[str, str] | None = None,
        interval: float = 30.0,
    ):
        self.registry, self.textfile, self.pushgateway = registry, textfile, pushgateway
        self.job, self.grouping, self.interval = job, dict(grouping or {}), interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def __enter__(self) -> MetricsExporter:
        self._thread = threading.Thread(target=self._export_until_stopped, name="metrics", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.export()  # the final figures: exit code, end time

    def _export_until_stopped(self) -> None:
        while True:
            self.export()
            if self._stop.wait(self.interval):
                return

    def export(self, timeout: float = PUSH_TIMEOUT_SECONDS) -> None:
        """Write the text file and push, now; a failure is a warning (once per target and run), never raised."""
        if self.textfile is not None:
            self._guarded(f"cannot write the metrics file {self.textfile}", self._write_textfile)
        if self.pushgateway is not None:
            self._guarded(f"cannot push metrics to the Pushgateway at {self.pushgateway.url}", self._push, timeout)

    def _write_textfile(self) -> None:
        assert self.textfile is not None
        write_to_textfile(self.textfile, self.registry)  # a temporary file beside it, then a rename: atomic

    def _push(self, timeout: float) -> None:
        assert self.pushgateway is not None
        push_to_gateway(self.pushgateway.url, job=self.job, registry=self.registry, grouping_key=self.grouping,
                        timeout=timeout, handler=self.pushgateway.handler())  # fmt: skip

    def _guarded(self, what: str, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:
            if what not in self._warned:
                self._warned.add(what)
                log.warning("metrics: %s (%s); the run goes on", what, _reason(exc))
            else:
                log.debug("metrics: %s again (%s)", what, _reason(exc))


def _reason(exc: BaseException) -> str:
    """Why an export failed, in one line: urllib wraps the socket's error in `reason`."""
    reason = getattr(exc, "reason", None)
    return describe(reason if isinstance(reason, BaseException) else exc)["message"]
