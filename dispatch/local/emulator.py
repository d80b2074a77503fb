"""LocalAWS: the embedded local AWS (patched moto server) in a child process.

::

    with LocalAWS.start() as aws:
        os.environ.update(aws.env())      # or pass aws.endpoint_url to your clients
        ...
        aws.reset()                       # forget every queue, table and message

The emulator runs in its own process (``python -m dispatch.local.server``) so
that its request threads never compete with the caller's for the GIL, and so
that its state can be thrown away by stopping it. Its stdin is a pipe held by
this process: if this process dies, the emulator sees end-of-file and exits.

Importing this module starts nothing and makes no network call.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import dispatch
from dispatch.core import constants as c
from dispatch.core.errors import AWSError, DispatchError
from dispatch.local.server import HOST, READY_PREFIX

# moto accepts any credentials; these only have to exist so that botocore signs
# requests instead of searching for real ones (and so that real ones are never sent).
_DUMMY_ACCESS_KEY_ID: Final = "testing"
_DUMMY_SECRET_ACCESS_KEY: Final = "testing"  # noqa: S105 - a placeholder moto ignores, not a secret
_STDERR_TAIL_BYTES: Final = 4_000


class LocalAWS:
    """A running embedded local AWS (SQS, DynamoDB and friends) on 127.0.0.1.

    Create it with :meth:`start`; stop it with :meth:`stop` or a ``with`` block.
    """

    region: Final[str] = c.DEFAULT_REGION

    def __init__(
        self, *, process: subprocess.Popen[bytes], endpoint_url: str, stderr: IO[bytes]
    ) -> None:
        """Wrap an already started server process (use :meth:`start` instead)."""
        self._process = process
        self._endpoint_url = endpoint_url
        self._stderr = stderr

    @classmethod
    def start(
        cls,
        *,
        port: int = 0,
        startup_timeout_s: float = 30.0,
        patch_moto: bool = True,
        round_trip_ms: Mapping[str, float] | None = None,
        python: str | None = None,
    ) -> LocalAWS:
        """Start the emulator process and return once it accepts connections.

        ``port=0`` picks a free port. ``patch_moto=False`` runs moto without
        :mod:`dispatch.local.moto_patches` (only to reproduce moto's own bugs).
        ``round_trip_ms`` (e.g. ``{"sqs": 20, "dynamodb": 5}``) holds each request
        to those services that long, standing in for the network to AWS
        (``--round-trip-ms`` in :mod:`dispatch.local.server`).
        ``python`` is the interpreter that runs the server (default: this one); give
        the one of a virtual environment where ``dispatch-aws[local]`` is installed
        to keep its pinned moto out of this environment (docs/testing.md).
        Raises :class:`~dispatch.core.errors.DispatchError` with the child's stderr if
        it does not report ready within ``startup_timeout_s``.
        """
        command = [python or sys.executable, "-m", "dispatch.local.server", "--port", str(port)]
        if not patch_moto:
            command.append("--stock-moto")
        for service, ms in (round_trip_ms or {}).items():
            command += ["--round-trip-ms", f"{service}={ms:g}"]
        # stderr goes to a file, not a pipe: nobody reads it while all is well,
        # and a full pipe would block the server's request threads. The LocalAWS
        # owns the file and closes it in stop().
        stderr = tempfile.TemporaryFile(prefix="dispatch-local-aws-", suffix=".log")  # noqa: SIM115
        try:
            process = subprocess.Popen(  # noqa: S603 - fixed argv: a Python interpreter and our module
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=_child_env(),
                # A session of its own: Ctrl-C in a terminal reaches only the
                # parent, which can then finish its own shutdown against a still
                # running emulator before it stops it.
                start_new_session=True,
            )
        except OSError as exc:
            stderr.close()
            raise DispatchError(f"could not start the local AWS ({command!r}): {exc}") from exc

        try:
            endpoint_url = _read_ready_line(process, timeout_s=startup_timeout_s)
        except DispatchError as exc:
            _terminate(process, timeout_s=5.0)
            _close_pipes(process)
            detail = _tail(stderr)
            stderr.close()
            raise DispatchError(f"{exc}; its stderr ends with:\n{detail}") from None
        return cls(process=process, endpoint_url=endpoint_url, stderr=stderr)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: the endpoint for every AWS client."""
        return self._endpoint_url

    @property
    def pid(self) -> int:
        """The emulator's process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """True until the emulator process has exited."""
        return self._process.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3, aiobotocore and Dispatch at the emulator."""
        return {
            c.ENV_ENDPOINT_URL: self._endpoint_url,
            c.ENV_REGION: self.region,
            c.ENV_DEFAULT_REGION: self.region,
            "AWS_ACCESS_KEY_ID": _DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": _DUMMY_SECRET_ACCESS_KEY,
        }

    def client(self, service: str, **config: Any) -> Any:
        """A boto3 client on the emulator that makes one attempt per call (an emulator
        error is seen, not retried away); ``config``: more ``botocore.config.Config``
        options (``max_pool_connections``, ``parameter_validation``)."""
        import boto3
        from botocore.config import Config

        make: Any = boto3.client  # typed per service name; ours is any
        return make(
            service,
            endpoint_url=self._endpoint_url,
            region_name=self.region,
            aws_access_key_id=_DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=_DUMMY_SECRET_ACCESS_KEY,
            config=Config(retries={"total_max_attempts": 1}, **config),
        )

    def reset(self, *, timeout_s: float = 10.0) -> None:
        """Forget every resource and message (moto's ``POST /moto-api/reset``)."""
        # The URL is our own loopback endpoint (http://127.0.0.1:<port>), never user input.
        url = f"{self._endpoint_url}/moto-api/reset"
        request = urllib.request.Request(url, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise AWSError(
                f"could not reset the local AWS at {self._endpoint_url}: {exc}",
                operation="moto-api/reset",
            ) from exc

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the emulator and wait for it to exit (idempotent).

        Closing its stdin is the polite request; SIGTERM, then SIGKILL, follow if
        it is still running after ``timeout_s``.
        """
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(OSError):  # already gone: the pipe is broken
                self._process.stdin.close()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _terminate(self._process, timeout_s=timeout_s)
        _close_pipes(self._process)
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self._process.returncode}"
        return f"LocalAWS({self._endpoint_url}, pid={self.pid}, {state})"


def _child_env() -> dict[str, str]:
    """The child's environment: ours, plus the source checkout on its path if we run from one.

    ``-m dispatch.local.server`` must import the same ``dispatch`` as this
    process. Installed, it does; run from a checkout that is not installed (or
    with only the test runner's path tweaks), the checkout's root has to be on
    the child's PYTHONPATH. An installed package's site-packages is never added
    there, where it would come before the standard library.
    """
    env = dict(os.environ)
    root = Path(dispatch.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def _read_ready_line(process: subprocess.Popen[bytes], *, timeout_s: float) -> str:
    """Wait for the READY line on the child's stdout; return the endpoint it names."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        # A thread rather than select(): portable, and readline() may block.
        try:
            for raw in stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(READY_PREFIX):
                    lines.put(line)
                    return
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the child is being stopped
        lines.put(None)

    threading.Thread(target=read, name="local-aws-ready", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise DispatchError(
            f"the local AWS (pid {process.pid}) did not report ready within {timeout_s:g} s"
        ) from None
    if line is None:
        code = process.wait(timeout=5.0)
        raise DispatchError(f"the local AWS exited with status {code} before it was ready")
    endpoint_url = line.removeprefix(READY_PREFIX).strip()
    if not endpoint_url.startswith(f"http://{HOST}:"):
        raise DispatchError(f"the local AWS reported an unexpected endpoint: {line!r}")
    return endpoint_url


def _terminate(process: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None and not pipe.closed:
            with contextlib.suppress(OSError):  # a broken pipe: the child is gone anyway
                pipe.close()


def _tail(stderr: IO[bytes]) -> str:
    stderr.flush()
    size = stderr.seek(0, os.SEEK_END)
    stderr.seek(max(0, size - _STDERR_TAIL_BYTES))
    text = stderr.read().decode("utf-8", "replace").strip()
    return text or "(nothing)"


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (SDKs and handlers read ``os.environ``),
    then restore what was there before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
