"""The CLI against the embedded local AWS: `enqueue --group` on a FIFO queue, a quiet
idle dispatcher, a stopped dispatcher no longer live, and what the demo leaves you with."""

from __future__ import annotations

import io
import json
import os
import re
import time
from typing import Any

from rich.console import Console
from structlog.testing import capture_logs

from dispatch import task
from dispatch.core import constants as c
from dispatch.core.config import Endpoint, Settings
from dispatch.local.demo import run_demo
from dispatch.loop.activity import TaskActivity
from dispatch.loop.publish import Publisher
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients, sync_client
from dispatch.tasks.registry import Registry
from dispatch.throttle.limits import ThrottleSnapshot
from dispatch.throttle.status import read_dispatchers
from tests.integration.conftest import dispatch_cli, drain

RECEIPT = json.dumps({"order_id": "7", "email": "a@example.com"})


def test_enqueue_group_reaches_sqs_as_the_message_group_id(
    aws_env: Settings, clients: SyncClients
) -> None:
    """Given a FIFO queue, when `dispatch enqueue TASK --group customer-7` runs, then the
    message on the queue carries MessageGroupId customer-7."""
    fifo_url = clients.sqs.create_queue(
        QueueName="polish-tasks.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    env = {**os.environ, c.ENV_QUEUE_URL: fifo_url}

    sent = dispatch_cli(
        "enqueue", "send_receipt", "--tasks", "dispatch.local.example.app",
        "--args", RECEIPT, "--group", "customer-7", "--json",
        env=env,
    )  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    (task_id,) = json.loads(sent.stdout)
    answer = clients.sqs.receive_message(
        QueueUrl=fifo_url, MessageSystemAttributeNames=["MessageGroupId"], WaitTimeSeconds=1
    )
    (message,) = answer["Messages"]
    assert message["Attributes"]["MessageGroupId"] == "customer-7"
    assert json.loads(message["Body"])["id"] == task_id


def _snapshot(*, started: int, in_flight: int = 0) -> ThrottleSnapshot:
    return ThrottleSnapshot(
        name="polish-api",
        configured_rate_per_s=5.0,
        effective_rate_per_s=5.0,
        tokens=1.0,
        in_flight=in_flight,
        max_concurrency=2,
        peak_in_flight=in_flight,
        started=started,
        waits=0,
        wait_total_s=0.0,
        backpressure_signals=0,
    )


def _publisher(aio: Any, settings: Settings, state: dict[str, Any], owner: str) -> Publisher:
    return Publisher(
        aio.dynamodb,
        table=settings.table,
        owner=owner,
        snapshots=lambda: (state["snapshot"],),
        lined_up=lambda: {},
        activity=state["activity"],
        metrics=None,
        clock=time.time,
    )


def _info_states(logs: list[dict[str, Any]]) -> int:
    """How many throttle_state lines were logged at info."""
    return sum(
        1 for line in logs if line["event"] == "throttle_state" and line["log_level"] == "info"
    )


async def test_an_idle_dispatcher_logs_no_throttle_state_at_info(
    aws_env: Settings, aio_clients: Any
) -> None:
    """Given a dispatcher's publisher, when it publishes while its resource is idle, then
    no throttle_state line is logged at info; after tasks start on the resource, one is;
    once it is idle again, none is."""
    state = {"snapshot": _snapshot(started=0), "activity": TaskActivity(clock=time.time)}
    publisher = _publisher(aio_clients, aws_env, state, owner="idle-dispatcher")

    with capture_logs() as idle:
        await publisher.publish()
        await publisher.publish()
    state["snapshot"] = _snapshot(started=3, in_flight=1)
    with capture_logs() as busy:
        await publisher.publish()
    state["snapshot"] = _snapshot(started=3)
    with capture_logs() as idle_again:
        await publisher.publish()

    assert _info_states(idle) == 0
    assert _info_states(busy) == 1
    assert _info_states(idle_again) == 0


async def test_a_retired_dispatcher_is_no_longer_live(aws_env: Settings, aio_clients: Any) -> None:
    """Given a dispatcher that published a report (it is live), when it retires on a clean
    stop, then its report is still read (its figures are what just ran) but marked
    stopped: it is no longer live."""
    activity = TaskActivity(clock=time.time)
    activity.count("ping", "Succeeded")
    state = {"snapshot": _snapshot(started=1), "activity": activity}
    publisher = _publisher(aio_clients, aws_env, state, owner="retiring-dispatcher")
    dynamodb = sync_client("dynamodb", Endpoint.from_env())

    await publisher.publish()
    (before,) = read_dispatchers(dynamodb, aws_env.table, now=time.time())
    await publisher.retire()
    (after,) = read_dispatchers(dynamodb, aws_env.table, now=time.time())

    assert before.owner == after.owner == "retiring-dispatcher"
    assert before.live and before.stopped_at is None
    assert not after.live and after.stopped_at is not None
    assert after.activity["tasks"]["ping"]["succeeded"] == 1


async def test_status_and_top_do_not_count_a_dispatcher_that_has_exited(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a dispatcher that ran tasks and exited (drained the queue), when `dispatch
    status --json` and `dispatch top --once --json` run right after, then neither counts
    a live dispatcher, while top still shows what it just ran."""

    @task(registry=registry)
    def ping(n: int) -> int:
        return n

    queue.enqueue_many([ping.message(n) for n in range(3)])
    stats = await drain(aws_env, registry)
    assert stats.succeeded == 3

    status = dispatch_cli("status", "--json")
    top = dispatch_cli("top", "--once", "--json")

    assert status.returncode == 0, status.stderr
    assert top.returncode == 0, top.stderr
    frame = json.loads(top.stdout)
    assert frame["dispatchers"] == 0
    assert [(row["task"], row["succeeded"]) for row in frame["tasks"]] == [("ping", 3)]
    assert json.loads(status.stdout)["dispatchers"] == 0


def test_demo_ends_with_next_steps() -> None:
    """Given a bare environment, when `dispatch demo` runs, then its output ends with what
    to try next: dispatch dev, --keep, and the docs pages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DISPATCH_"))}

    demo = dispatch_cli("demo", "--orders", "5", env=env)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    _, after = demo.stdout.split("Next steps")
    for words in ("dispatch dev", "dispatch demo --keep", "docs/local.md", "docs/operations.md"):
        assert words in after, demo.stdout


def test_demo_keep_leaves_the_local_aws_up_with_its_dead_letters() -> None:
    """Given `dispatch demo --keep`, when the summary is printed, then it prints export
    lines and, while it waits, the dead-letter queue they name is reachable and holds the
    demo's dead letters."""
    out = io.StringIO()
    seen: dict[str, int] = {}

    def explore() -> None:  # what the user does in another terminal before Ctrl-C
        exports = dict(re.findall(r"export (\w+)=(\S+)", out.getvalue()))
        endpoint = Endpoint(region=exports[c.ENV_REGION], endpoint_url=exports[c.ENV_ENDPOINT_URL])
        sqs = sync_client("sqs", endpoint)
        attributes = sqs.get_queue_attributes(
            QueueUrl=exports[c.ENV_DLQ_URL], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        seen["dead"] = int(attributes["ApproximateNumberOfMessages"])

    result = run_demo(orders=5, console=Console(file=out, width=200), keep=True, wait=explore)

    assert result.ok, out.getvalue()
    assert seen["dead"] == result.stats.dead > 0
    assert "Ctrl-C" in out.getvalue()
