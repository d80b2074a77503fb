"""A dispatcher killed mid-attempt: the task comes back, finishes elsewhere, never stays running.

The dispatcher under test is a real process (bench.chaos.dispatcher) SIGKILLed
while its handler is blocked on a file this test controls; no sleeps decide
anything: every wait polls a condition under a deadline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.chaos import tasks
from bench.chaos.run import ChaosConfig, Fleet, read_ledger
from dispatch.core.config import Settings
from dispatch.producer.enqueue import Queue
from dispatch.store.state import Status, SyncStateStore
from tests.integration.conftest import drain, queue_counts


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def test_a_task_whose_dispatcher_was_killed_mid_attempt_is_finished_by_another(
    aws_env: Settings, clients, tmp_path: Path, monkeypatch
) -> None:
    """Given a dispatcher process running a task whose handler is blocked, when that
    process is SIGKILLed, then the record is left running under a lease, and once
    the message's visibility and the lease have run out another dispatcher claims
    it as attempt 2 and finishes it: the record ends succeeded, not running, and the
    handler's ledger shows the killed execution and the finished one."""
    monkeypatch.setenv(tasks.ENV_LEDGER_DIR, str(tmp_path))
    release = tmp_path / "release"
    queue = Queue(aws_env)
    try:
        task_id = queue.enqueue(tasks.hold.message(str(release)))
    finally:
        queue.close()
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    config = ChaosConfig(visibility_s=3, lease_grace_s=1.0, max_in_flight=4)

    with Fleet(env=dict(os.environ), workdir=tmp_path, config=config) as fleet:
        victim = fleet.start()
        wait_for(
            lambda: task_id in read_ledger(tmp_path),
            timeout_s=60,
            what="the handler to start in the dispatcher process",
        )
        killed_pid = fleet.kill_one_process(victim)

    held = store.get(task_id)
    assert held is not None
    assert (held.status, held.attempts) == (Status.RUNNING, 1)
    assert held.lease_until is not None

    release.touch()
    stats = await drain(aws_env, tasks.registry)

    final = store.get(task_id)
    assert final is not None
    assert (final.status, final.attempts, final.result) == (Status.SUCCEEDED, 2, str(release))
    assert final.lease_until is None
    assert stats.succeeded == 1
    executions = read_ledger(tmp_path)[task_id]
    assert [(e.pid, e.attempt, e.outcome) for e in executions] == [
        (killed_pid, 1, None),
        (os.getpid(), 2, "ok"),
    ]
    assert executions[1].started_at >= held.lease_until
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}
