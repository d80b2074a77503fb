"""A small protected backend: a real HTTP service on 127.0.0.1 with a fixed capacity.

It stands for the thing Dispatch protects (a connection pool, an EC2 service that
scales in minutes, a partner API): ``GET /work?ms=50`` holds a request for
``ms`` milliseconds and answers 200, unless more than ``capacity`` requests are
already in flight, in which case it answers 503 with ``Retry-After: 1`` at once
(an overload). It records every request, so the demo and the benchmarks can
report the peak concurrency it saw, the overloads, and the achieved rate.

``GET /stats`` returns the counters as JSON; ``POST /capacity?n=N`` changes the
capacity (the benchmark halves it mid-run); ``POST /reset`` clears the counters.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Backend", "BackendStats"]


@dataclass(slots=True)
class BackendStats:
    """What the backend saw: one row per request."""

    capacity: int
    served: int = 0
    overloads: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)  # epoch seconds, served requests only
    overload_times: list[float] = field(default_factory=list)

    def clear(self) -> None:
        """Forget every request seen (capacity and requests in flight stay)."""
        self.served = self.overloads = 0
        self.peak_in_flight = self.in_flight
        self.arrivals = []
        self.overload_times = []

    def reset(self) -> None:
        """Forget every request seen, including the peak (capacity and in flight stay)."""
        self.served = self.overloads = self.peak_in_flight = 0
        self.arrivals, self.overload_times = [], []

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "capacity": self.capacity,
            "served": self.served,
            "overloads": self.overloads,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "arrivals": self.arrivals,
            "overload_times": self.overload_times,
        }


class _Server(ThreadingHTTPServer):
    # A burst of hundreds of connections must queue, not be refused (the default is 5).
    request_queue_size = 1024
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    """One request to the backend; ``stats`` and ``lock`` are set per server."""

    stats: BackendStats
    lock: threading.Lock

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log line."""

    def _reply(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/stats":
            with self.lock:
                self._reply(200, self.stats.to_dict())
        elif url.path == "/work":
            query = urllib.parse.parse_qs(url.query)
            self._work(float(query.get("ms", ["50"])[0]) / 1000.0)
        else:
            self._reply(404, {"error": f"no such path {url.path}"})

    def _work(self, hold_s: float) -> None:
        """Hold the request ``hold_s`` seconds, or answer 503 at once when full."""
        stats, now = self.stats, time.time()
        with self.lock:
            overloaded = stats.in_flight >= stats.capacity
            if overloaded:
                stats.overloads += 1
                stats.overload_times.append(now)
            else:
                stats.in_flight += 1
                stats.served += 1
                stats.arrivals.append(now)
                stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        if overloaded:
            self._reply(503, {"error": "overloaded"}, {"Retry-After": "1"})
            return
        try:
            time.sleep(hold_s)
        finally:
            with self.lock:
                stats.in_flight -= 1
        self._reply(200, {"ok": True})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        with self.lock:
            if url.path == "/capacity":
                self.stats.capacity = max(1, int(query["n"][0]))
            elif url.path == "/reset":
                self.stats.reset()
            else:
                self._reply(404, {"error": f"no such path {url.path}"})
                return
            self._reply(200, self.stats.to_dict())


class Backend:
    """The service, running in a thread of this process: ``with Backend.start(capacity=4) as b``."""

    def __init__(self, server: ThreadingHTTPServer, stats: BackendStats, lock: threading.Lock):
        self._server = server
        self._stats = stats
        self._lock = lock
        self._thread = threading.Thread(target=server.serve_forever, name="backend", daemon=True)

    @classmethod
    def start(cls, *, capacity: int, port: int = 0) -> Backend:
        """Listen on 127.0.0.1 (a free port by default) and serve in a daemon thread."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        stats = BackendStats(capacity=capacity)
        lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"stats": stats, "lock": lock})
        server = _Server(("127.0.0.1", port), handler)
        server.daemon_threads = True
        backend = cls(server, stats, lock)
        backend._thread.start()
        return backend

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stats(self) -> BackendStats:
        """A copy of the counters now."""
        with self._lock:
            s = self._stats
            return BackendStats(
                capacity=s.capacity,
                served=s.served,
                overloads=s.overloads,
                in_flight=s.in_flight,
                peak_in_flight=s.peak_in_flight,
                arrivals=list(s.arrivals),
                overload_times=list(s.overload_times),
            )

    def reset(self) -> None:
        """Forget every request seen so far (the capacity stays)."""
        with self._lock:
            self._stats.clear()

    def set_capacity(self, capacity: int) -> None:
        """Change how many requests it serves at once."""
        with self._lock:
            self._stats.capacity = max(1, capacity)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
