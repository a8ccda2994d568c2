"""Where the run's metrics go: a Prometheus text file (node_exporter's textfile collector) and a Pushgateway.

Both get the same registry (batch.run.metrics), when the run starts, every `interval` seconds on a thread of their
own (a file that takes an hour still shows progress), and once more when the run has ended. Neither can fail
the run: a text file that cannot be written or a Pushgateway that cannot be reached is one warning in the log,
and the transcripts go on being written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.exposition import basic_auth_handler, default_handler

from batch.common.errors import describe
from batch.settings.values import PushTarget

log = logging.getLogger(__name__)

PUSH_TIMEOUT_SECONDS = 10.0
FINAL_PUSH_TIMEOUT_SECONDS = 3.0  # when the grace period is over: the pod's SIGKILL is near


def push_handler(target: PushTarget) -> Callable[..., Callable[[], None]]:
    """prometheus_client's request handler for a target: HTTP basic auth when its URL gave credentials."""
    if target.username is None:
        return default_handler

    def with_basic_auth(**request: Any) -> Callable[[], None]:
        return basic_auth_handler(**request, username=target.username, password=target.password or "")

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
        push_to_gateway(
            self.pushgateway.url,
            job=self.job,
            registry=self.registry,
            grouping_key=self.grouping,
            timeout=timeout,
            handler=push_handler(self.pushgateway),
        )

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
