"""Tasks for tests/integration/test_graceful_stop.py: one that holds until the test lets go.

`dispatch run --tasks tests.integration.graceful_tasks` imports this module into the
default registry of the dispatcher process under test (never into the test process,
which declares a twin of the same name in its own registry to enqueue it).

The test and the handler speak through files in a folder the test owns: the handler
writes ``started-<n>`` when it begins, waits for ``release`` and writes
``finished-<n>`` just before it returns.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dispatch import Retry, task

HOLD_TIMEOUT_S = 60.0
"""Long enough for any test to signal the dispatcher and then let the handler go."""


def hold_until_released(folder: str, n: int) -> int:
    """Mark the start, wait for the test's ``release`` file, mark the finish; return n."""
    here = Path(folder)
    (here / f"started-{n}").touch()
    deadline = time.monotonic() + HOLD_TIMEOUT_S
    while not (here / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{here / 'release'} never appeared")
        threading.Event().wait(0.02)
    (here / f"finished-{n}").touch()
    return n


@task(name="hold", timeout_s=HOLD_TIMEOUT_S, retry=Retry(max_attempts=1))
def hold(folder: str, n: int) -> int:
    """Runs until the test writes ``release`` into ``folder``."""
    return hold_until_released(folder, n)


@task(name="quick", timeout_s=5)
def quick(n: int) -> int:
    """Returns at once."""
    return n
