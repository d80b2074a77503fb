"""The `dispatch` command run as a user runs it: a subprocess against the emulator."""

from __future__ import annotations

import json
import os

from dispatch.config import Settings
from tests.integration.conftest import dispatch_cli


def test_init_creates_resources_idempotently_and_prints_json(aws_env: Settings) -> None:
    """Given an endpoint, when `dispatch init --prefix shop --json` runs twice, then both
    runs exit 0 and print the same queue_url, dlq_url and table, which exist."""
    first = dispatch_cli("init", "--prefix", "shop", "--json")
    second = dispatch_cli("init", "--prefix", "shop", "--json")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    values = json.loads(first.stdout)
    assert values == json.loads(second.stdout)
    assert set(values) == {"queue_url", "dlq_url", "table"}
    assert values["queue_url"].endswith("/shop-tasks") and values["table"] == "shop-state"

    exports = dispatch_cli("init", "--prefix", "shop")
    assert f"export DISPATCH_QUEUE_URL={values['queue_url']}" in exports.stdout


def test_enqueue_run_and_status_from_the_shell(aws_env: Settings) -> None:
    """Given the example tasks, when a task is enqueued with `dispatch enqueue`, the loop
    runs with `dispatch run --until-empty`, and `dispatch status ID --json` is asked, then
    the status goes from queued to succeeded and run reports one success."""
    enqueued = dispatch_cli(
        "enqueue", "send_receipt", "--tasks", "examples.app",
        "--args", '{"order_id": "7", "email": "a@example.com"}',
    )  # fmt: skip
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()

    before = dispatch_cli("status", task_id, "--json")
    assert json.loads(before.stdout)["status"] == "queued"

    ran = dispatch_cli("run", "--tasks", "examples.app", "--until-empty")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1])["succeeded"] == 1

    after = json.loads(dispatch_cli("status", task_id, "--json").stdout)
    assert after["status"] == "succeeded"
    assert after["result"] == {"order_id": "7", "to": "a@example.com"}

    depth = json.loads(dispatch_cli("status", "--json").stdout)
    assert depth["queue"] == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_errors_are_one_clear_line_with_a_reliable_exit_code(aws_env: Settings) -> None:
    """Given mistakes a user makes, when the CLI runs, then each prints what is wrong and
    exits with the documented code: 3 configuration, 4 not found, 1 other, 2 usage."""
    no_queue = {k: v for k, v in os.environ.items() if k != "DISPATCH_QUEUE_URL"}
    missing = dispatch_cli("status", env=no_queue)
    assert missing.returncode == 3
    assert "DISPATCH_QUEUE_URL" in missing.stderr

    unknown_id = dispatch_cli("status", "no-such-task")
    assert unknown_id.returncode == 4
    assert "no-such-task" in unknown_id.stderr

    typo = dispatch_cli("enqueue", "chrage", "--tasks", "examples.app")
    assert typo.returncode == 1
    assert "unknown task 'chrage'" in typo.stderr and "charge" in typo.stderr

    bad_args = dispatch_cli("enqueue", "charge", "--tasks", "examples.app", "--args", "{oops")
    assert bad_args.returncode == 2
    assert "--args" in bad_args.stderr

    no_module = dispatch_cli("run", "--tasks", "no_such_module", "--until-empty")
    assert no_module.returncode == 3
    assert "no_such_module" in no_module.stderr


def test_demo_runs_end_to_end_and_accounts_for_every_task() -> None:
    """Given a bare environment, when `dispatch demo --orders 20` runs, then it starts its
    own local AWS, exits 0, and its summary shows successes, retries, dead letters with
    reasons and requests per task."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DISPATCH_"))}
    demo = dispatch_cli("demo", "--orders", "20", env=env)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "Every task accounted for" in out
    for words in ("succeeded", "retries", "dead-lettered", "reason: permanent_error", "per task"):
        assert words in out
