"""Start, synchronise and collect dispatcher processes (:mod:`bench.drainer`).

:class:`Fleet` is a context manager: whatever happens inside the block (an error,
Ctrl-C, a timeout), its exit closes every child's stdin (their signal to stop),
waits a bounded time, then terminates, kills and reaps what is left. Every wait
has a bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

from bench.drainer import GO_LINE
from bench.processes import close_lifelines, stop_all

__all__ = ["REPO_ROOT", "Fleet", "FleetError"]

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_STOP_WAIT_S: Final = 15.0
_KILL_WAIT_S: Final = 5.0
_LOG_TAIL_BYTES: Final = 2_000


class FleetError(Exception):
    """A dispatcher process failed to start, or did not finish in time."""


class Fleet:
    """``count`` dispatcher processes against the queue the environment names."""

    def __init__(self, count: int, *, until_empty: bool, max_run_s: float) -> None:
        self.count = count
        self._until_empty = until_empty
        self._max_run_s = max_run_s
        self._workdir = tempfile.TemporaryDirectory(prefix="bench-fleet-")
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        root = Path(self._workdir.name)
        for n in range(self.count):
            log = (root / f"drainer-{n}.log").open("wb")
            self._logs.append(log)
            command = [
                sys.executable,
                "-m",
                "bench.drainer",
                "--ready",
                str(root / f"ready-{n}"),
                "--result",
                str(root / f"result-{n}.json"),
                "--max-run-s",
                str(self._max_run_s),
            ]
            if self._until_empty:
                command.append("--until-empty")
            self._processes.append(
                subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and our module
                    command,
                    cwd=REPO_ROOT,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stop_all(self._processes, grace_s=_STOP_WAIT_S, term_wait_s=_KILL_WAIT_S)
        for log in self._logs:
            log.close()
        self._workdir.cleanup()

    @property
    def pids(self) -> dict[str, int]:
        """``{"dispatcher-0": pid, ...}``."""
        return {f"dispatcher-{n}": p.pid for n, p in enumerate(self._processes)}

    def wait_ready(self, *, timeout_s: float) -> None:
        """Return once every process has built and checked its clients."""
        root = Path(self._workdir.name)
        deadline = time.monotonic() + timeout_s
        while not all((root / f"ready-{n}").exists() for n in range(self.count)):
            for n, process in enumerate(self._processes):
                if process.poll() is not None:
                    raise FleetError(f"dispatcher {n} exited early:\n{self._tail(n)}")
            if time.monotonic() > deadline:
                raise FleetError(f"dispatchers not ready within {timeout_s:g} s")
            time.sleep(0.05)

    def go(self) -> None:
        """Start every dispatcher's loop at once."""
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.write(f"{GO_LINE}\n".encode())
            process.stdin.flush()

    def stop(self) -> None:
        """Ask every dispatcher to stop (end-of-file on its stdin)."""
        close_lifelines(self._processes)

    def wait(self, *, timeout_s: float) -> list[dict[str, Any]]:
        """Wait for every process to exit; their result files, in start order."""
        deadline = time.monotonic() + timeout_s
        for n, process in enumerate(self._processes):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise FleetError(f"dispatcher {n} still running after {timeout_s:g} s") from None
        results = []
        for n in range(self.count):
            path = Path(self._workdir.name) / f"result-{n}.json"
            if not path.exists():
                raise FleetError(f"dispatcher {n} wrote no result:\n{self._tail(n)}")
            result = json.loads(path.read_text())
            if result.get("error"):
                raise FleetError(f"dispatcher {n} failed: {result['error']}\n{self._tail(n)}")
            results.append(result)
        return results

    def _tail(self, n: int) -> str:
        self._logs[n].flush()
        path = Path(self._workdir.name) / f"drainer-{n}.log"
        data = path.read_bytes()[-_LOG_TAIL_BYTES:]
        return data.decode("utf-8", "replace").strip() or "(no output)"
