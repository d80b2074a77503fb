"""A loopback Lambda Invoke endpoint: the real Invoke REST API, served in this process.

``sam local`` needs Docker and moto's Lambda does too, so the local topology
invokes functions through this endpoint instead. It implements
``POST /2015-03-31/functions/{FunctionName}/invocations`` closely enough that
the unmodified boto3/aiobotocore Lambda client works against it (point
``AWS_ENDPOINT_URL_LAMBDA`` at :attr:`LocalLambda.endpoint_url`), and runs the
function's Python handler in-process, in a thread, with a Lambda-like context::

    with LocalLambda.start([LocalFunction("worker", dispatch_workers.lambda_handler.handler,
                                          timeout_s=60, reserved_concurrency=10)]) as lam:
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = lam.endpoint_url
        ...
        lam.invocations        # what ran, how it ended, how long it took

What it reproduces, because the invoker's behaviour depends on it:

* ``FunctionName`` as a name, a partial or full ARN, with a qualifier
  (``name:live``, ``?Qualifier=live``): ``$LATEST``, ``1`` or a known alias;
  anything else is ``ResourceNotFoundException`` (404);
* ``InvocationType``: ``RequestResponse`` (200, the handler's JSON result),
  ``Event`` (202 at once, the handler runs in the background), ``DryRun`` (204);
* a handler that raises, or returns what is not JSON, answers 200 with
  ``X-Amz-Function-Error: Unhandled`` and Lambda's error object
  (``errorMessage``, ``errorType``, ``stackTrace``);
* the function's timeout: 200, ``Unhandled``, ``errorType: Sandbox.Timedout``,
  "Task timed out after N seconds" (the handler's thread runs on, as Python
  cannot stop a thread);
* reserved concurrency: an invocation beyond it is refused with
  ``TooManyRequestsException`` (429, ``Reason:
  ReservedFunctionConcurrentInvocationLimitExceeded``);
* payload limits: a request over 6 MB (256 KB for ``Event``) is
  ``RequestTooLargeException`` (413); a response over 6 MB is
  ``Function.ResponseSizeTooLarge``; a body that is not JSON is
  ``InvalidRequestContentException`` (400);
* ``X-Amz-Log-Type: Tail`` returns the START/END/REPORT lines base64-encoded in
  ``X-Amz-Log-Result``, with the duration.

It listens on 127.0.0.1 only. Importing this module starts nothing.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

from dispatch.core import constants as c

__all__ = [
    "ACCOUNT_ID",
    "Invocation",
    "LocalContext",
    "LocalFunction",
    "LocalLambda",
    "function_arn",
]

HOST: Final = "127.0.0.1"  # loopback only: nothing here may listen beyond this machine
ACCOUNT_ID: Final = "123456789012"  # the account moto uses, so ARNs look alike
SYNC_PAYLOAD_LIMIT_BYTES: Final = 6 * 1024 * 1024
ASYNC_PAYLOAD_LIMIT_BYTES: Final = 256 * 1024
_INVOKE_PATH: Final = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
_ARN: Final = re.compile(
    r"^(?:arn:[\w-]+:lambda:[\w-]+:)?(?:\d{12}:)?(?:function:)?(?P<name>[\w-]+)(?::(?P<q>[\w$-]+))?$"
)

Handler = Callable[[Any, Any], Any]


@dataclass(frozen=True, slots=True)
class LocalFunction:
    """A function the endpoint serves: its name, Python handler and limits."""

    name: str
    handler: Handler
    timeout_s: float = 60.0
    memory_mb: int = 128
    reserved_concurrency: int | None = None
    aliases: frozenset[str] = frozenset({"live"})


@dataclass(frozen=True, slots=True)
class Invocation:
    """One invocation the endpoint answered (or refused)."""

    function: str
    qualifier: str | None
    invocation_type: str
    request_id: str
    status: int  # the HTTP status of the Invoke answer
    error: str | None  # the error code, or the function error type
    started_at: float  # epoch s
    duration_s: float
    request_bytes: int
    response_bytes: int = 0


def function_arn(name: str, *, qualifier: str | None = None, region: str = c.DEFAULT_REGION) -> str:
    """``arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]``."""
    arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


class LocalContext:
    """The Lambda context object a Python handler receives, with a real deadline."""

    def __init__(
        self,
        *,
        function_name: str,
        timeout_s: float,
        memory_mb: int = 128,
        request_id: str | None = None,
        invoked_function_arn: str | None = None,
        function_version: str = "$LATEST",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn or function_arn(function_name)
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/[{function_version}]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._clock = clock
        self._deadline = clock() + timeout_s
        self._lock = threading.Lock()

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> LocalContext:
        """Build from recorded context data (``tests/events/context.json``)."""
        values = {
            "function_name": data["function_name"],
            "timeout_s": data["timeout_s"],
            "memory_mb": int(data.get("memory_limit_in_mb", 128)),
            "request_id": data.get("aws_request_id"),
            "invoked_function_arn": data.get("invoked_function_arn"),
            "function_version": data.get("function_version", "$LATEST"),
        }
        values.update(overrides)
        return cls(**values)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the invocation's deadline (0 once passed)."""
        with self._lock:
            return max(0, int((self._deadline - self._clock()) * 1000))

    def expire_within(self, seconds: float) -> None:
        """Bring the deadline forward to at most ``seconds`` from now (a local shutdown)."""
        with self._lock:
            self._deadline = min(self._deadline, self._clock() + seconds)


@dataclass(slots=True)
class _Running:
    contexts: dict[str, LocalContext] = field(default_factory=dict)


class LocalLambda:
    """The endpoint, serving in threads of this process: use :meth:`start`."""

    def __init__(self, server: _Server, *, region: str) -> None:
        self._server = server
        self.region = region
        self._thread = threading.Thread(
            target=server.serve_forever, name="local-lambda", daemon=True
        )

    @classmethod
    def start(
        cls,
        functions: Iterable[LocalFunction] = (),
        *,
        port: int = 0,
        region: str = c.DEFAULT_REGION,
    ) -> LocalLambda:
        """Listen on 127.0.0.1 (a free port by default) and serve ``functions``."""
        server = _Server((HOST, port), _RequestHandler)
        server.region = region
        for function in functions:
            server.functions[function.name] = function
        endpoint = cls(server, region=region)
        endpoint._thread.start()
        return endpoint

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: what ``AWS_ENDPOINT_URL_LAMBDA`` should say."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def register(self, function: LocalFunction) -> None:
        """Serve ``function`` (replacing one of the same name)."""
        with self._server.lock:
            self._server.functions[function.name] = function

    def set_reserved_concurrency(self, name: str, limit: int | None) -> None:
        """Change a function's reserved concurrency (None: unbounded)."""
        with self._server.lock:
            function = self._server.functions[name]
            self._server.functions[name] = LocalFunction(
                name=function.name,
                handler=function.handler,
                timeout_s=function.timeout_s,
                memory_mb=function.memory_mb,
                reserved_concurrency=limit,
                aliases=function.aliases,
            )

    @property
    def invocations(self) -> list[Invocation]:
        """Every invocation answered so far, in the order they ended."""
        with self._server.lock:
            return list(self._server.invocations)

    def running(self, name: str | None = None) -> int:
        """Invocations running now (of one function, or all)."""
        with self._server.lock:
            return sum(
                len(r.contexts) for fn, r in self._server.running.items() if name in (None, fn)
            )

    def expire_running(self, within_s: float) -> None:
        """Bring every running invocation's deadline forward to ``within_s`` from now."""
        with self._server.lock:
            contexts = [ctx for r in self._server.running.values() for ctx in r.contexts.values()]
        for context in contexts:
            context.expire_within(within_s)

    def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait until no invocation runs; False if some still run after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        """Stop serving (invocations still running finish in their threads)."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.region: str = c.DEFAULT_REGION
        self.functions: dict[str, LocalFunction] = {}
        self.running: dict[str, _Running] = {}
        self.invocations: list[Invocation] = []
        self.lock = threading.Lock()


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK clients pool connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""

    def do_POST(self) -> None:
        """``POST /2015-03-31/functions/{name}/invocations``: Invoke."""
        started, clock = time.time(), time.monotonic()
        request_id = str(uuid.uuid4())
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        match = _INVOKE_PATH.match(url.path)
        if match is None:
            self._send(_error(404, "UnknownOperationException", f"no route for POST {url.path}"))
            return
        raw_name = urllib.parse.unquote(match.group("name"))
        query = urllib.parse.parse_qs(url.query)
        invocation_type = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        qualifiers = query.get("Qualifier") or []
        name, qualifier, answer = self._resolve(raw_name, qualifiers[0] if qualifiers else None)
        function = self.server.functions.get(name) if answer is None else None
        if answer is None and function is not None:
            answer = self._invoke(function, qualifier, invocation_type, body, request_id)
        elif answer is None:
            answer = _error(404, "ResourceNotFoundException", f"Function not found: {raw_name}")
        answer.headers.setdefault("x-amzn-RequestId", request_id)
        self._send(answer)
        with self.server.lock:
            self.server.invocations.append(
                Invocation(
                    function=name,
                    qualifier=qualifier,
                    invocation_type=invocation_type,
                    request_id=request_id,
                    status=answer.status,
                    error=answer.error,
                    started_at=started,
                    duration_s=time.monotonic() - clock,
                    request_bytes=len(body),
                    response_bytes=len(answer.body),
                )
            )

    def do_GET(self) -> None:
        """Only Invoke is served."""
        self._send(_error(404, "UnknownOperationException", f"no route for GET {self.path}"))

    # --- invoke ---------------------------------------------------------------------

    def _resolve(
        self, raw_name: str, query_qualifier: str | None
    ) -> tuple[str, str | None, _Answer | None]:
        match = _ARN.match(raw_name)
        if match is None:
            return (
                raw_name,
                None,
                _error(
                    400, "InvalidParameterValueException", f"invalid function name {raw_name!r}"
                ),
            )
        name, qualifier = match.group("name"), match.group("q")
        if qualifier and query_qualifier and qualifier != query_qualifier:
            return (
                name,
                qualifier,
                _error(
                    400,
                    "InvalidParameterValueException",
                    "the qualifiers in the ARN and query differ",
                ),
            )
        qualifier = qualifier or query_qualifier
        function = self.server.functions.get(name)
        if (
            function is not None
            and qualifier is not None
            and qualifier not in ("$LATEST", "1")
            and qualifier not in function.aliases
        ):
            return (
                name,
                qualifier,
                _error(404, "ResourceNotFoundException", f"Function not found: {raw_name}"),
            )
        return name, qualifier, None

    def _invoke(
        self,
        function: LocalFunction,
        qualifier: str | None,
        invocation_type: str,
        body: bytes,
        request_id: str,
    ) -> _Answer:
        event, refused = _parse_request(invocation_type, body)
        if refused is not None:
            return refused
        executed = "1" if qualifier and qualifier != "$LATEST" else "$LATEST"
        context = LocalContext(
            function_name=function.name,
            timeout_s=function.timeout_s,
            memory_mb=function.memory_mb,
            request_id=request_id,
            invoked_function_arn=function_arn(
                function.name, qualifier=qualifier, region=self.server.region
            ),
            function_version=executed,
        )
        if not self._admit(function, context):
            return _error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )
        if invocation_type == "Event":
            threading.Thread(
                target=self._run_and_finish,
                args=(function, event, context),
                name=f"local-lambda-event-{function.name}",
                daemon=True,
            ).start()
            return _Answer(202, error=None)
        answer = self._run_and_finish(function, event, context)
        answer.headers["X-Amz-Executed-Version"] = executed
        if (self.headers.get("X-Amz-Log-Type") or "") == "Tail":
            answer.headers["X-Amz-Log-Result"] = answer.headers.pop("_log")
        answer.headers.pop("_log", None)
        return answer

    def _admit(self, function: LocalFunction, context: LocalContext) -> bool:
        with self.server.lock:
            running = self.server.running.setdefault(function.name, _Running())
            limit = function.reserved_concurrency
            if limit is not None and len(running.contexts) >= limit:
                return False
            running.contexts[context.aws_request_id] = context
            return True

    def _run_and_finish(
        self, function: LocalFunction, event: Any, context: LocalContext
    ) -> _Answer:
        try:
            return _run(function, event, context)
        finally:
            with self.server.lock:
                self.server.running[function.name].contexts.pop(context.aws_request_id, None)

    def _send(self, answer: _Answer) -> None:
        try:
            self.send_response(answer.status)
            headers = {"Content-Type": "application/json", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if answer.body:
                self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            # The caller gave up (a released attempt, a client timeout): as in Lambda,
            # the function's answer is dropped.
            self.close_connection = True


def _parse_request(invocation_type: str, body: bytes) -> tuple[Any, _Answer | None]:
    """The event in ``body``, or the answer refusing the request."""
    if invocation_type not in ("RequestResponse", "Event", "DryRun"):
        return None, _error(
            400, "InvalidParameterValueException", f"InvocationType {invocation_type!r}"
        )
    limit = ASYNC_PAYLOAD_LIMIT_BYTES if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT_BYTES
    if len(body) > limit:
        return None, _error(
            413,
            "RequestTooLargeException",
            f"Request must be smaller than {limit} bytes for the {invocation_type} invocation type",
        )
    try:
        event = json.loads(body) if body.strip() else {}
    except ValueError:
        return None, _error(
            400, "InvalidRequestContentException", "Could not parse request body into json"
        )
    if invocation_type == "DryRun":
        return None, _Answer(204)
    return event, None


def _run(function: LocalFunction, event: Any, context: LocalContext) -> _Answer:
    """Run the handler in a thread, bounded by the function's timeout; Lambda's answer."""
    box: dict[str, Any] = {}
    clock = time.monotonic()

    def target() -> None:
        try:
            box["result"] = function.handler(event, context)
        except Exception as exc:  # noqa: BLE001 - a handler's crash is the function error Lambda reports
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"local-lambda-{function.name}", daemon=True)
    thread.start()
    thread.join(max(0.0, context.get_remaining_time_in_millis() / 1000.0))
    duration_s = time.monotonic() - clock
    log = _log_tail(context, duration_s, function.memory_mb)
    if thread.is_alive():
        return _function_error(
            "Sandbox.Timedout",
            f"RequestId: {context.aws_request_id} Error: Task timed out after "
            f"{function.timeout_s:.2f} seconds",
            log=log,
        )
    if "error" in box:
        exc: BaseException = box["error"]
        frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return _function_error(type(exc).__name__, str(exc), log=log, stack=frames)
    try:
        payload = json.dumps(box.get("result")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        return _function_error(
            "Runtime.MarshalError", f"Unable to marshal response: {exc}", log=log
        )
    if len(payload) > SYNC_PAYLOAD_LIMIT_BYTES:
        return _function_error(
            "Function.ResponseSizeTooLarge",
            f"Response payload size ({len(payload)} bytes) exceeded maximum allowed payload "
            f"size ({SYNC_PAYLOAD_LIMIT_BYTES} bytes).",
            log=log,
        )
    return _Answer(200, payload, {"_log": log})


def _function_error(
    error_type: str, message: str, *, log: str, stack: list[str] | None = None
) -> _Answer:
    body: dict[str, Any] = {"errorMessage": message, "errorType": error_type}
    if stack is not None:
        body["stackTrace"] = stack
    return _Answer(
        200,
        json.dumps(body).encode(),
        {"X-Amz-Function-Error": "Unhandled", "_log": log},
        error=error_type,
    )


def _error(status: int, code: str, message: str, **extra: str) -> _Answer:
    body = {"Type": "User", "message": message, **extra}
    return _Answer(status, json.dumps(body).encode(), {"x-amzn-ErrorType": code}, error=code)


def _log_tail(context: LocalContext, duration_s: float, memory_mb: int) -> str:
    ms = duration_s * 1000
    text = (
        f"START RequestId: {context.aws_request_id} Version: {context.function_version}\n"
        f"END RequestId: {context.aws_request_id}\n"
        f"REPORT RequestId: {context.aws_request_id}\tDuration: {ms:.2f} ms\t"
        f"Billed Duration: {math.ceil(ms)} ms\tMemory Size: {memory_mb} MB\n"
    )
    return base64.b64encode(text.encode()).decode()
