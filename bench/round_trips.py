"""The drain comparison again, with the network's round trips put back.

On loopback a request's round trip is the emulator's own work, a millisecond or
two, and that flatters the baseline consumer, which waits for every answer before
it sends the next request (2.1 round trips per task, one after the other), while
it costs a dispatcher, which keeps many requests out at once, nothing. Here a
second emulator holds every request (``--round-trip-ms`` of
:mod:`dispatch.local.server`) for about what the network to AWS takes:

* SQS 20 ms: the SQS Developer Guide's own example of an in-region client's
  average request latency ("Increasing throughput using horizontal scaling and
  action batching": 20 ms, so about 50 requests a second per thread);
* DynamoDB 5 ms: DynamoDB's "single-digit millisecond" requests.

Everything else is the throughput section's method: the same no-op tasks, full
state tracking and lean, one dispatcher with in-process workers and default
options, against the baseline's loop, in rounds whose order rotates, and the
median of the per-round ratios. The baseline's messages are put on the queue with
uncounted SendMessageBatch calls (its producer is measured in the throughput
section; here only the drain is compared).
"""

from __future__ import annotations

import json
import statistics
from typing import Any, Final

from bench.baseline import drain_baseline
from bench.stage import Stage
from bench.throughput import Phase, drain, enqueue

__all__ = ["ROUND_TRIP_MS", "run_round_trips"]

ROUND_TRIP_MS: Final = {"sqs": 20.0, "dynamodb": 5.0}
KINDS: Final = ("dispatch", "lean", "baseline")


def run_round_trips(tasks: int, *, rounds: int) -> dict[str, Any]:
    """Drain ``tasks`` no-ops per kind per round on an emulator holding each request."""
    timeout_s = 60.0 + tasks / 5  # the baseline manages about 40 tasks a second here
    drains: dict[str, list[Phase]] = {kind: [] for kind in KINDS}
    with Stage.start(round_trip_ms=ROUND_TRIP_MS) as stage:
        for n in range(rounds):
            for kind in KINDS[n % len(KINDS) :] + KINDS[: n % len(KINDS)]:
                settings = stage.fresh(f"rt-{kind}-{n}")
                if kind == "baseline":
                    _fill(stage, settings.queue_url, tasks)
                    drained = drain_baseline(stage, settings, tasks, timeout_s=timeout_s)
                else:
                    enqueue(stage, settings, tasks, lean=kind == "lean")
                    drained, _ = drain(stage, settings, tasks, timeout_s=timeout_s)
                if drained.done < tasks:
                    raise RuntimeError(
                        f"round trips, {kind}: drained {drained.done} of {tasks} tasks "
                        f"in {timeout_s:g} s"
                    )
                drains[kind].append(drained)
    per_s = {kind: [p.per_s for p in phases] for kind, phases in drains.items()}
    ratios = {
        kind: [d / b for d, b in zip(per_s[kind], per_s["baseline"], strict=True)]
        for kind in ("dispatch", "lean")
    }
    return {
        "round_trip_ms": dict(ROUND_TRIP_MS),
        "tasks": tasks,
        "rounds": rounds,
        "drain_tasks_per_s": {
            kind: round(statistics.median(values), 1) for kind, values in per_s.items()
        },
        "drain_tasks_per_s_by_round": {
            kind: [round(v, 1) for v in values] for kind, values in per_s.items()
        },
        "drain_ratio": round(statistics.median(ratios["dispatch"]), 3),
        "drain_ratios": [round(r, 3) for r in ratios["dispatch"]],
        "lean_drain_ratio": round(statistics.median(ratios["lean"]), 3),
        "lean_drain_ratios": [round(r, 3) for r in ratios["lean"]],
        "requests_per_task": {
            kind: round(sum(phases[-1].requests.values()) / tasks, 3)
            for kind, phases in drains.items()
        },
        "cpu": {kind: phases[-1].cpu.to_json() for kind, phases in drains.items()},
    }


def _fill(stage: Stage, queue_url: str, tasks: int) -> None:
    """Put the baseline's ``tasks`` messages on the queue, ten per uncounted request."""
    sqs: Any = stage.admin.sqs
    bodies = [json.dumps({"n": n}) for n in range(tasks)]
    for start in range(0, tasks, 10):
        entries = [
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])
        ]
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if answer.get("Failed"):
            raise RuntimeError(f"round trips: the emulator refused {answer['Failed']}")
