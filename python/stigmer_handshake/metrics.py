"""The process's metrics: Prometheus (OpenMetrics) text, a parsed snapshot, and an HTTP endpoint.

    server = hs.serve_metrics(port=9464)        # GET http://127.0.0.1:9464/metrics
    snapshot = await hs.metrics_snapshot()      # {"stigmer_handshake_settled_total{kind=...}": 3.0, ...}

Metrics: ``stigmer_handshake_settled_total{kind,outcome}``, ``stigmer_handshake_delivery_duration_seconds``
(histogram, from the settle's commit to the acknowledged RPC), ``stigmer_handshake_pending{age}`` (gauge,
read from the store at each scrape), ``stigmer_handshake_errors_total{type}``,
``stigmer_handshake_heartbeats_total``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stigmer_handshake._core import InvalidInput

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def parse(text: str) -> dict[str, float]:
    """Each sample of an OpenMetrics text as ``{"name{labels}": value}``; comments are left out."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class MetricsServer:
    """Serves ``GET /metrics`` from a daemon thread until ``close()``; ``port=0`` picks a free port."""

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise InvalidInput(f"the metrics port must be 0 to 65535 (0: any free port), not {port}")
        if not host:
            raise InvalidInput("the metrics host must not be empty (0.0.0.0 serves every interface)")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "metrics are at /metrics")
                    return
                try:
                    body = render().encode()
                except Exception as err:  # the store may be down: say so, keep serving
                    self.send_error(503, f"metrics unavailable: {err}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except (OSError, ValueError, TypeError) as err:
            raise InvalidInput(f"cannot serve metrics on {host}:{port}: {err}") from None
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="stigmer-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
