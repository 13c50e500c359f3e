"""Prometheus metrics of the calexpress services and their HTTP endpoint.

All metrics live in a dedicated `REGISTRY` (not prometheus_client's global one)
with the names fixed in ``docs/architecture.md``.  `MetricsServer` serves
``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (every readiness
check passes: broker and object store reachable) on one port, loopback by default.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "CACHE_REQUESTS",
    "CCD_QUALITY",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "DEFAULT_METRICS_PORT",
    "END_TO_END_LATENCY",
    "EVENTS",
    "INFLIGHT",
    "ASSIGNED_PARTITIONS",
    "LAST_CCD_TIMESTAMP",
    "METRIC_NAMES",
    "OUTCOMES",
    "REGISTRY",
    "RETRIES",
    "STAGE_DURATION",
    "MetricsServer",
]

log = logging.getLogger(__name__)

#: Default port of the metrics/health endpoint.
DEFAULT_METRICS_PORT = 9102

#: The registry holding every calexpress metric.
REGISTRY = CollectorRegistry(auto_describe=True)

#: Allowed values of the ``outcome`` label of `EVENTS`.
OUTCOMES = ("processed", "duplicate", "failed", "retried", "dead_lettered")

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)

STAGE_DURATION = Histogram(
    "stage_duration_seconds",
    "Wall time of one CCD in a stage (read, process, write)",
    ["stage"],
    namespace="calexpress",
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
EVENTS = Counter(
    "events",
    "Input events handled, by outcome (processed, duplicate, failed, retried, dead_lettered)",
    ["stage", "outcome"],
    namespace="calexpress",
    registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "end_to_end_latency_seconds",
    "Time from observation (or announce when unknown) to the event emitted by the stage",
    ["stage"],
    namespace="calexpress",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "inflight", "CCDs being processed now", ["stage"], namespace="calexpress", registry=REGISTRY
)
ASSIGNED_PARTITIONS = Gauge(
    "assigned_partitions",
    "Input-topic partitions assigned to this consumer (changes on every rebalance)",
    ["stage"],
    namespace="calexpress",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "consumer_lag",
    "Messages behind the partition end (high watermark from fetch responses)",
    ["stage", "topic", "partition"],
    namespace="calexpress",
    registry=REGISTRY,
)
RETRIES = Counter(
    "retries", "Retries after transient errors", ["stage"], namespace="calexpress", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "dead_letters",
    "Events sent to the dead-letter topic",
    ["stage", "error_class"],
    namespace="calexpress",
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "cache_requests",
    "Warm-cache lookups (calibrations, reference catalogs, cameras)",
    ["stage", "cache", "result"],
    namespace="calexpress",
    registry=REGISTRY,
)
CCD_QUALITY = Gauge(
    "ccd_quality",
    "Quality summary of the last calibrated CCD",
    ["quality"],
    namespace="calexpress",
    registry=REGISTRY,
)
LAST_CCD_TIMESTAMP = Gauge(
    "last_ccd_timestamp_seconds",
    "Unix time of the last CCD finished by the stage",
    ["stage"],
    namespace="calexpress",
    registry=REGISTRY,
)

#: Exposed metric family names (as in architecture.md; counters get ``_total`` on exposition).
METRIC_NAMES = (
    "calexpress_stage_duration_seconds",
    "calexpress_events_total",
    "calexpress_end_to_end_latency_seconds",
    "calexpress_inflight",
    "calexpress_assigned_partitions",
    "calexpress_consumer_lag",
    "calexpress_retries_total",
    "calexpress_dead_letters_total",
    "calexpress_cache_requests_total",
    "calexpress_ccd_quality",
    "calexpress_last_ccd_timestamp_seconds",
)


def init_stage_metrics(stage: str) -> None:
    """Create every labelled child of a stage at zero so dashboards see them at once."""
    for outcome in OUTCOMES:
        EVENTS.labels(stage=stage, outcome=outcome)
    RETRIES.labels(stage=stage)
    INFLIGHT.labels(stage=stage).set(0)
    STAGE_DURATION.labels(stage=stage)
    END_TO_END_LATENCY.labels(stage=stage)


class MetricsServer:
    """HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread.

    Parameters
    ----------
    port : `int`
        TCP port; 0 picks a free one (read it back from `port`).
    host : `str`
        Bind address, loopback by default.
    readiness_checks : `dict` [`str`, callable], optional
        Name -> function returning True when the dependency is reachable (may
        raise).  ``/readyz`` answers 200 only when all return True, else 503,
        with a JSON body naming each check's result.
    registry : `CollectorRegistry`, optional
        Registry to expose; `REGISTRY` by default.
    """

    def __init__(
        self,
        port: int = DEFAULT_METRICS_PORT,
        host: str = "127.0.0.1",
        readiness_checks: dict[str, Callable[[], bool]] | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.readiness_checks = dict(readiness_checks or {})
        self.registry = registry
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server_ref.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ok, results = server_ref.check_ready()
                    self._send(200 if ok else 503, json.dumps(results).encode() + b"\n", "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def check_ready(self) -> tuple[bool, dict[str, str]]:
        """Run the readiness checks; return (all ok, name -> "ok" or the error)."""
        results: dict[str, str] = {}
        ok = True
        for name, check in self.readiness_checks.items():
            try:
                good = bool(check())
                results[name] = "ok" if good else "unreachable"
            except Exception as exc:  # a failing check is a "not ready" answer
                good = False
                results[name] = f"{type(exc).__name__}: {exc}"[:200]
            ok = ok and good
        return ok, results

    def start(self) -> MetricsServer:
        """Start serving in a daemon thread; return self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop the server and close its socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
