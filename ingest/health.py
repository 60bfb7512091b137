"""The ingester's own HTTP endpoint: ``/health`` (JSON, 200 or 503) and ``/metrics`` (Prometheus).

A small threaded HTTP server beside the event loop; it only reads the ingester's state, through the
:class:`IngestStatus` protocol (the ingester imports this module, not the other way round).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.metrics import IngestMetrics


class IngestStatus(Protocol):
    """What ``/health`` and ``/metrics`` read of an ingester."""

    @property
    def mqtt_connected(self) -> bool: ...
    @property
    def backlog(self) -> int: ...
    @property
    def db_ok(self) -> bool: ...
    @property
    def committed_batches(self) -> int: ...
    @property
    def last_commit_at(self) -> float | None: ...
    @property
    def metrics(self) -> IngestMetrics: ...


def health(ingester: IngestStatus, now: float) -> tuple[int, dict[str, object]]:
    """Healthy while the broker connection is up and the last database write did not fail. ``now`` is
    ``time.time()`` of the request."""
    last = ingester.last_commit_at
    body: dict[str, object] = {
        "mqtt_connected": ingester.mqtt_connected,
        "database_ok": ingester.db_ok,
        "backlog": ingester.backlog,
        "batches": ingester.committed_batches,
        "last_commit_age_s": None if last is None else round(now - last, 3),
    }
    ok = ingester.mqtt_connected and ingester.db_ok
    body["status"] = "ok" if ok else "unavailable"
    return (200 if ok else 503), body


class HealthServer:
    def __init__(self, ingester: IngestStatus, port: int, host: str = "0.0.0.0") -> None:
        ing = ingester

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    status, ctype, data = 200, CONTENT_TYPE_LATEST, generate_latest(ing.metrics.registry)
                elif self.path.split("?")[0] == "/health":
                    status, payload = health(ing, time.time())
                    ctype, data = "application/json", json.dumps(payload).encode()
                else:
                    status, ctype, data = 404, "text/plain", b"not found\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingest-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
