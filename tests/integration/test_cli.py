"""The `dispatch` command run as a user runs it: a subprocess against the emulator."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import click
import pytest
from botocore.exceptions import ClientError

from dispatch import PermanentError, Retry, task
from dispatch.core.config import Settings
from dispatch.core.errors import DispatchError
from dispatch.ops.cli import _enqueue_in_chunks
from dispatch.producer.enqueue import Queue
from dispatch.store.aws import SyncClients
from dispatch.store.state import Status, SyncStateStore
from dispatch.tasks.registry import Registry
from tests.integration.conftest import REPO, dispatch_cli, drain, queue_counts


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
        "enqueue", "send_receipt", "--tasks", "dispatch.local.example.app",
        "--args", '{"order_id": "7", "email": "a@example.com"}',
    )  # fmt: skip
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()

    before = dispatch_cli("status", task_id, "--json")
    assert json.loads(before.stdout)["status"] == "queued"

    ran = dispatch_cli("run", "--tasks", "dispatch.local.example.app", "--until-empty")
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

    typo = dispatch_cli("enqueue", "chrage", "--tasks", "dispatch.local.example.app")
    assert typo.returncode == 1
    assert "unknown task 'chrage'" in typo.stderr and "charge" in typo.stderr

    bad_args = dispatch_cli(
        "enqueue", "charge", "--tasks", "dispatch.local.example.app", "--args", "{oops"
    )
    assert bad_args.returncode == 2
    assert "--args" in bad_args.stderr

    no_module = dispatch_cli("run", "--tasks", "no_such_module", "--until-empty")
    assert no_module.returncode == 3
    assert "no_such_module" in no_module.stderr


def test_run_applies_the_deployment_resource_limits(aws_env: Settings) -> None:
    """`dispatch run` reads DISPATCH_RESOURCE_LIMITS as the Lambda dispatcher does (the
    service mode sets it): a limit for a resource no task uses is refused before
    anything is received, naming the variable and the resources the tasks use; a
    valid one runs."""
    typo = {**os.environ, "DISPATCH_RESOURCE_LIMITS": '{"warehouse": {"rate_per_s": 5}}'}
    refused = dispatch_cli(
        "run", "--tasks", "dispatch.local.example.app", "--until-empty", env=typo
    )
    limited = {**os.environ, "DISPATCH_RESOURCE_LIMITS": '{"warehouse-api": {"rate_per_s": 5}}'}
    ran = dispatch_cli("run", "--tasks", "dispatch.local.example.app", "--until-empty", env=limited)

    assert refused.returncode == 3, refused.stderr
    assert "DISPATCH_RESOURCE_LIMITS" in refused.stderr and "warehouse-api" in refused.stderr
    assert ran.returncode == 0, ran.stderr


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


# --- every read command speaks JSON; every command has --help ----------------------------------

READ_COMMANDS = (
    ("status",),
    ("task",),
    ("dlq", "list"),
    ("dlq", "show"),
    ("cron", "next"),
    ("top",),
)


async def test_every_read_command_prints_parseable_json(
    aws_env: Settings, registry: Registry, queue: Queue
) -> None:
    """Given a succeeded task and a dead one, when each read command runs with --json as a
    subprocess, then each exits 0 and prints exactly one JSON document on stdout (no
    progress, no logs), whose content matches the tasks."""

    @task(registry=registry, retry=Retry(max_attempts=1))
    def audit(n: int) -> int:
        if n:
            raise PermanentError("no")
        return n

    good, bad = queue.enqueue_many([audit.message(0), audit.message(1)])
    await drain(aws_env, registry)

    outputs = {  # top first: it shows the dispatcher while it counts as live (15 s)
        "top --once": dispatch_cli("top", "--once", "--json"),
        "status": dispatch_cli("status", "--json"),
        "status ID": dispatch_cli("status", good, "--json"),
        "task": dispatch_cli("task", bad, "--json"),
        "dlq list": dispatch_cli("dlq", "list", "--json"),
        "dlq show": dispatch_cli("dlq", "show", bad, "--json"),
        "cron next": dispatch_cli("cron", "next", "rate(5 minutes)", "-n", "2", "--json"),
    }

    parsed = {}
    for name, result in outputs.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert len(result.stdout.strip().splitlines()) == 1, f"{name}: {result.stdout}"
        parsed[name] = json.loads(result.stdout)
    assert parsed["status"]["tasks"]["counts"]["dead"] == 1
    assert parsed["status ID"]["status"] == "succeeded"
    assert (parsed["task"]["status"], parsed["task"]["last_error"]["type"]) == (
        "dead",
        "PermanentError",
    )
    assert [e["task_id"] for e in parsed["dlq list"]] == [bad]
    assert parsed["dlq show"]["failure"]["reason"] == "permanent_error"
    assert len(parsed["cron next"]) == 2
    assert {row["task"] for row in parsed["top --once"]["tasks"]} == {"audit"}


def test_every_command_has_help_and_every_read_command_has_json() -> None:
    """Given the command tree, when `--help` is asked of each command, then each prints its
    usage and a description, and the read commands list a --json option."""
    from click.testing import CliRunner

    from dispatch.ops.cli import cli

    def walk(group: click.Group, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path]
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += walk(command, (*path, name))
            else:
                found.append((*path, name))
        return found

    paths = walk(cli, ())
    assert set(READ_COMMANDS) <= set(paths) and len(paths) >= 17
    runner = CliRunner()
    for path in paths:
        shown = runner.invoke(cli, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        assert "Usage:" in shown.output and len(shown.output.splitlines()) > 4, path
        if path in READ_COMMANDS:
            assert "--json" in shown.output, path


def test_bulk_enqueue_from_a_jsonl_file_and_by_count(aws_env: Settings, tmp_path: Path) -> None:
    """Given a JSON-lines file of argument sets, when `dispatch enqueue TASK --from-file`
    runs, then one task per line is queued and their ids, one a line, are all stdout holds
    (no progress bar off a terminal); `--count N --json` queues N copies and prints the
    ids as a JSON list."""
    lines = tmp_path / "receipts.jsonl"
    lines.write_text(
        '{"order_id": "1", "email": "a@example.com"}\n\n'
        '{"order_id": "2", "email": "b@example.com"}\n'
        '["3", "c@example.com"]\n'
    )

    from_file = dispatch_cli(
        "enqueue",
        "send_receipt",
        "--tasks",
        "dispatch.local.example.app",
        "--from-file",
        str(lines),
    )
    counted = dispatch_cli(
        "enqueue", "send_receipt", "--tasks", "dispatch.local.example.app", "--count", "25",
        "--json", "--args", '{"order_id": "9", "email": "z@example.com"}',
    )  # fmt: skip

    assert from_file.returncode == 0, from_file.stderr
    ids = from_file.stdout.split()
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)
    assert from_file.stderr == ""
    assert counted.returncode == 0, counted.stderr
    many = json.loads(counted.stdout)
    assert len(many) == len(set(many)) == 25
    report = json.loads(dispatch_cli("status", "--json").stdout)
    assert report["queue"]["visible"] == 28
    assert report["tasks"]["counts"]["queued"] == 28
    record = json.loads(dispatch_cli("task", ids[2], "--json").stdout)
    assert record["status"] == "queued"


def test_bulk_enqueue_refuses_a_bad_line_before_sending_anything(
    aws_env: Settings, tmp_path: Path
) -> None:
    """Given a file whose fifth line (blank ones count) does not fit the handler, and one
    whose second line is not JSON, when each is enqueued, then the error names the line,
    the exit code says what kind of mistake it is, and no task at all was queued."""
    wrong_args = tmp_path / "wrong.jsonl"
    wrong_args.write_text('{"order_id": "1", "email": "a@x"}\n\n' * 2 + '{"order": "5"}\n')
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text('{"order_id": "1", "email": "a@x"}\n{oops\n')

    refused = dispatch_cli(
        "enqueue",
        "send_receipt",
        "--tasks",
        "dispatch.local.example.app",
        "--from-file",
        str(wrong_args),
    )
    broken = dispatch_cli(
        "enqueue",
        "send_receipt",
        "--tasks",
        "dispatch.local.example.app",
        "--from-file",
        str(not_json),
    )
    mixed = dispatch_cli(
        "enqueue", "send_receipt", "--tasks", "dispatch.local.example.app",
        "--from-file", str(not_json), "--count", "2",
    )  # fmt: skip

    assert refused.returncode == 1 and "line 5" in refused.stderr, refused.stderr
    assert "order" in refused.stderr
    assert broken.returncode == 2 and "line 2" in broken.stderr, broken.stderr
    assert mixed.returncode == 2 and "--from-file" in mixed.stderr
    assert refused.stdout == broken.stdout == ""
    depth = json.loads(dispatch_cli("status", "--json").stdout)
    assert depth["queue"]["visible"] == 0 and depth["tasks"]["counts"]["queued"] == 0


def test_progress_shows_on_a_terminal_stderr_and_never_on_stdout(aws_env: Settings) -> None:
    """Given stderr is a terminal (a pty), when 30 tasks are enqueued with --count, then a
    progress bar is drawn on stderr while stdout holds only the 30 ids."""
    primary, secondary = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "100"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from dispatch.ops.cli import main; main()", "enqueue",
             "send_receipt", "--tasks", "dispatch.local.example.app", "--count", "30",
             "--args", '{"order_id": "1", "email": "a@example.com"}'],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
            check=False,
        )  # fmt: skip
        os.close(secondary)
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the pty's other side is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)

    assert done.returncode == 0, drawn.decode(errors="replace")
    assert len(done.stdout.split()) == 30
    assert "\x1b" not in done.stdout
    assert b"enqueue send_receipt" in drawn and b"30/30" in drawn


def test_a_bulk_enqueue_that_fails_part_way_reports_exactly_what_went(
    aws_env: Settings,
    registry: Registry,
    queue: Queue,
    clients: SyncClients,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Given 250 tasks and SQS failing the 15th SendMessageBatch (tasks 141-150), when the
    bulk enqueue runs, then it stops with an error naming #141-250 as not enqueued, the
    ids it printed are exactly the 140 tasks on the queue, and the others left no record,
    so enqueueing #141-250 again neither loses nor duplicates a task."""

    @task(registry=registry)
    def bulk(n: int) -> None: ...

    messages = [bulk.message(n) for n in range(250)]
    calls = 0

    def fail_the_fifteenth(**_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 15:
            error = {"Error": {"Code": "InternalError", "Message": "SQS had a bad moment"}}
            raise ClientError(error, "SendMessageBatch")  # type: ignore[arg-type]

    queue.sync_clients().sqs.meta.events.register(
        "before-call.sqs.SendMessageBatch", fail_the_fifteenth
    )

    with pytest.raises(DispatchError) as raised:
        _enqueue_in_chunks(messages, label="bulk", as_json=True)

    printed = json.loads(capsys.readouterr().out)
    assert printed == [m.task_id for m in messages[:140]]
    assert "140 of 250" in str(raised.value) and "not enqueued: #141-250" in str(raised.value)
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 140
    store = SyncStateStore(clients.dynamodb, aws_env.table)
    last_sent = store.get(messages[139].task_id)
    assert last_sent is not None and last_sent.status is Status.QUEUED
    assert store.get(messages[140].task_id) is None and store.get(messages[249].task_id) is None
