"""Stopping the child processes a benchmark starts: one sequence for all of them.

Every child reads its stdin as a lifeline (end-of-file means "stop"). Stopping
closes it, waits a bounded time, sends SIGTERM to what is still running, waits
again, then SIGKILLs and reaps whatever is left: however a run ends, no child
outlives it and every wait has a bound.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Sequence

__all__ = ["close_lifelines", "kill", "send", "stop_all"]


def close_lifelines(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Close each child's stdin: its signal to stop."""
    for process in processes:
        if process.stdin is not None:
            with contextlib.suppress(OSError):  # a broken pipe: the child is gone
                process.stdin.close()


def send(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to a child still running."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # exited between poll and signal
            process.send_signal(sig)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child and reap it."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def stop_all(
    processes: Sequence[subprocess.Popen[bytes]],
    *,
    grace_s: float,
    term_wait_s: float | None,
) -> list[int]:
    """Stop and reap every child; the indices of those that had to be SIGKILLed.

    Lifelines closed, then up to ``grace_s`` in all for the children to exit by
    themselves; SIGTERM to the rest and up to ``term_wait_s`` more (no SIGTERM
    when it is None); SIGKILL for what still runs.
    """
    close_lifelines(processes)
    _wait_all(processes, grace_s)
    if term_wait_s is not None:
        for process in processes:
            send(process, signal.SIGTERM)
        _wait_all(processes, term_wait_s)
    killed = [k for k, process in enumerate(processes) if process.poll() is None]
    for k in killed:
        kill(processes[k])
    return killed


def _wait_all(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
