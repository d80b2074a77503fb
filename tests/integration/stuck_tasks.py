"""Tasks for tests/integration/test_stuck_handlers.py: one stuck for ever, one quick.

`dispatch run --tasks tests.integration.stuck_tasks` imports this module into the
default registry of the dispatcher process under test (never into the test process).
"""

from __future__ import annotations

import threading

from dispatch import Retry, task

STUCK_TIMEOUT_S = 1.0


@task(timeout_s=STUCK_TIMEOUT_S, retry=Retry(max_attempts=1))
def stuck_for_ever() -> None:
    """Blocks for ever, as a handler waiting on a socket that never answers."""
    threading.Event().wait()


@task(timeout_s=5)
def greet(name: str) -> str:
    """Returns at once."""
    return f"hello {name}"
