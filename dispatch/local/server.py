"""The embedded local AWS as a process: moto's server, patched, on 127.0.0.1 only.

Run it as ``python -m dispatch.local.server [--port N]`` (port 0, the default,
picks a free port). :class:`dispatch.local.emulator.LocalAWS` starts it for you.

Contract with whoever starts it:

* it prints exactly one line on stdout, ``DISPATCH-LOCAL-AWS READY http://127.0.0.1:<port>``,
  once the socket accepts connections; everything it prints afterwards goes to stderr;
* stdin is its lifeline: when stdin reaches end-of-file (the parent closed it or
  died) the server shuts down, so it never outlives the process that started it
  (unless stdin is a terminal, where Ctrl-C does that job);
* SIGTERM and SIGINT shut it down cleanly (exit status 0).

``--round-trip-ms SERVICE=MS`` (repeatable, e.g. ``sqs=20 dynamodb=5``) holds every
request to that service for MS milliseconds before moto sees it, to stand in for
the network between a client and AWS: on loopback a request's round trip is the
emulator's work alone, which flatters a client that waits for each answer before
sending the next. The service is read from the request's SigV4 credential scope;
requests without one (the emulator's own ``/moto-api``) are never held. The wait
sleeps in the request's own thread, so held requests do not queue behind each
other, and costs no CPU.

moto is imported only inside :func:`main`, so importing this module (for
:data:`READY_PREFIX`) stays cheap and needs no optional dependency.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final

HOST: Final = "127.0.0.1"  # loopback only: nothing here may listen beyond this machine
READY_PREFIX: Final = "DISPATCH-LOCAL-AWS READY"
_MAX_ROUND_TRIP_MS: Final = 10_000.0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stdin closes or a SIGTERM/SIGINT arrives; return the exit status."""
    args = _parse_args(argv)
    # werkzeug logs every request at INFO on stderr; at a few hundred requests a
    # second that is noise, and it costs time in the request threads. Errors stay.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    if not args.stock_moto:
        from dispatch.local import moto_patches

        try:
            moto_patches.apply()
        except RuntimeError as exc:
            print(f"dispatch.local.server: {exc}", file=sys.stderr)
            return 2

    server = _make_server(args.port, round_trips_s=args.round_trip_s)
    port = int(server.server_port)
    # moto builds some URLs (Lambda's view of the endpoint) from MOTO_PORT, as its
    # own server entry point does.
    os.environ["MOTO_PORT"] = str(port)

    stop = threading.Event()
    _stop_on_signals(stop)
    _stop_on_stdin_eof(stop)
    serving = threading.Thread(target=server.serve_forever, name="local-aws-http", daemon=True)
    serving.start()

    # The socket is bound and listening since _make_server: connections queue in
    # the backlog until serve_forever picks them up, so READY is true now.
    print(f"{READY_PREFIX} http://{HOST}:{port}", flush=True)
    _detach_stdout()

    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dispatch.local.server",
        description="Dispatch's embedded local AWS (moto server, patched) on 127.0.0.1.",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1 (default 0: pick a free one)"
    )
    parser.add_argument(
        "--stock-moto",
        action="store_true",
        help="do not apply dispatch.local.moto_patches (to reproduce moto's own behaviour)",
    )
    parser.add_argument(
        "--round-trip-ms",
        action="append",
        default=[],
        metavar="SERVICE=MS",
        help="hold every request to SERVICE (its SigV4 name: sqs, dynamodb, ...) for MS "
        "milliseconds, standing in for the network to AWS (repeatable)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port (0 to 65535)")
    try:
        args.round_trip_s = parse_round_trips(args.round_trip_ms)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def parse_round_trips(specs: Sequence[str]) -> dict[str, float]:
    """``["sqs=20", "dynamodb=5"]`` -> ``{"sqs": 0.02, "dynamodb": 0.005}`` (seconds).

    Raises ValueError naming the first spec that is not ``SERVICE=MS`` with MS a
    number from 0 to 10,000.
    """
    round_trips: dict[str, float] = {}
    for spec in specs:
        service, sep, ms = spec.partition("=")
        try:
            value = float(ms) if sep and service.strip() else -1.0
        except ValueError:
            value = -1.0
        if not 0 <= value <= _MAX_ROUND_TRIP_MS:
            raise ValueError(
                f"--round-trip-ms {spec!r}: expected SERVICE=MS with MS from 0 to "
                f"{_MAX_ROUND_TRIP_MS:g}, e.g. sqs=20"
            )
        round_trips[service.strip().lower()] = value / 1000
    return round_trips


def request_service(environ: dict[str, Any]) -> str | None:
    """The AWS service a request is signed for (SigV4 credential scope), or None."""
    authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
    _, found, rest = authorization.partition("Credential=")
    if not found:
        return None
    scope = rest.split(",", 1)[0].split("/")
    # AKID/date/region/service/aws4_request
    return scope[3].lower() if len(scope) >= 5 else None


def _held(app: Any, round_trips_s: dict[str, float]) -> Any:
    """``app``, with each request to a service in ``round_trips_s`` held that long first."""

    def held_app(environ: dict[str, Any], start_response: Any) -> Any:
        service = request_service(environ)
        if service is not None:
            delay_s = round_trips_s.get(service, 0.0)
            if delay_s > 0:
                time.sleep(delay_s)
        return app(environ, start_response)

    return held_app


def _make_server(
    port: int, *, round_trips_s: dict[str, float] | None = None
) -> Any:  # werkzeug's BaseWSGIServer (untyped here)
    """moto's WSGI app in werkzeug's threaded server, bound to loopback only."""
    # Imported here so that importing this module (for READY_PREFIX) needs no moto.
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    # The same app and request handler as moto's ThreadedMotoServer, built here so
    # the host is ours to choose (ThreadedMotoServer defaults to 0.0.0.0) and so
    # it prints nothing on stdout.
    app: Any = DomainDispatcherApplication(create_backend_app)
    if round_trips_s and any(round_trips_s.values()):
        app = _held(app, round_trips_s)
    return make_server(HOST, port, app, threaded=True, request_handler=MotoRequestHandler)


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _stop_on_stdin_eof(stop: threading.Event) -> None:
    stdin = sys.stdin
    # A terminal never reaches EOF by itself (and reading it from a background
    # job would stop the process with SIGTTIN); there, Ctrl-C is the way out.
    if stdin is None or stdin.isatty():
        return

    def watch() -> None:
        try:
            while stdin.buffer.read(65536):
                pass  # whatever the parent writes is ignored; only EOF matters
        finally:
            stop.set()

    threading.Thread(target=watch, name="local-aws-lifeline", daemon=True).start()


def _detach_stdout() -> None:
    """Send anything printed after READY to stderr.

    The parent stops reading stdout after the READY line; if moto (or a library
    it calls) printed enough afterwards, a full pipe would block a request
    thread. stderr is the parent's to drain (LocalAWS gives it a file).
    """
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
