"""The chaos run, short: tasks through two dispatcher processes under AWS faults and SIGKILLs.

The same scenario as ``make chaos`` (bench.chaos), on the test's queue and table:
150 tasks and, among them, 5 groups of 6 children joined by a callback, 2 dispatchers,
5% of their AWS calls failing in every way the fault injector knows, 2 dispatchers
SIGKILLed mid-run and restarted. Judged from the DynamoDB records, the dead-letter
queue and the handlers' own ledger (where each callback records its group and the
results it received).
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.chaos.run import ChaosConfig, run_chaos
from dispatch.core.config import Settings
from tests.integration.conftest import queue_counts


def test_nothing_is_lost_or_rerun_after_success_under_faults_and_kills(
    aws_env: Settings, clients, tmp_path: Path
) -> None:
    """Given 150 tasks (some failing transiently, a few permanently) and 5 groups of 6
    children, 2 dispatchers, 5% of AWS calls failing and 2 SIGKILLs, when the queue has
    drained, then every task ended succeeded or dead-lettered with its reason, none was
    lost, no handler ran again after its success was recorded, no two executions of a
    task overlapped, and every group's callback ran once with its children's results in
    order."""
    config = ChaosConfig(
        tasks=150,
        dispatchers=2,
        kills=2,
        fault_rate=0.05,
        max_drain_s=90.0,
        seed=4,
        groups=5,
        group_size=6,
    )

    figures = run_chaos(config, settings=aws_env, env=dict(os.environ), workdir=tmp_path)

    assert figures["enqueued"] == 150 + 5 * 6
    assert figures["planned"]["child"] == 5 * 6
    assert figures["kills"] == 2
    assert figures["faults"] > 0
    assert figures["lost"] == 0, figures["lost_task_ids"]
    assert figures["rerun_after_success"] == 0
    assert figures["concurrent_executions"] == 0
    assert figures["repeated_without_crash"] == 0
    assert figures["succeeded"] + figures["dead"] == 150 + 5 * 6
    assert figures["dead"] == figures["planned"].get("permanent", 0)
    assert figures["dead_reasons"] == (
        {"permanent_error": figures["dead"]} if figures["dead"] else {}
    )
    assert figures["groups"] == 5
    assert figures["callbacks_run"] == 5
    assert figures["callbacks_lost"] == 0, figures["lost_callback_ids"]
    assert figures["callbacks_repeated"] == 0, figures["repeated_callbacks"]
    assert figures["callbacks_wrong_results"] == 0, figures["wrong_callbacks"]
    assert figures["groups_incomplete"] == 0
    assert queue_counts(clients, aws_env.queue_url) == {"visible": 0, "in_flight": 0, "delayed": 0}
