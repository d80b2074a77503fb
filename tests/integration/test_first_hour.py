"""A newcomer's first hour: their own project imports, a missing setting never empties
the queue into the DLQ, and AWS trouble is one clear line with a reliable exit code.

Commands run through the installed `dispatch` console script, as a user types them, from
the user's own project folder (a console script, unlike `python -c`, does not put the
current folder on sys.path: that difference was the bug).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch.core.config import Settings
from dispatch.core.errors import ConfigurationError
from dispatch.loop.dispatcher import Dispatcher
from dispatch.store.aws import SyncClients, async_clients
from dispatch.tasks.registry import Registry
from tests.integration.conftest import queue_counts

CONSOLE_SCRIPT = Path(sys.executable).parent / "dispatch"
TASKS_MODULE = """
from dispatch import task

@task
def hello(name: str) -> str:
    return f"hello {name}"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's own project folder: myapp/tasks.py declaring one task, not installed."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(TASKS_MODULE)
    return tmp_path


def dispatch_in(folder: Path, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """`dispatch ARGS` typed in ``folder``; ``env`` overrides (None removes a variable)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PYTHONPATH")}
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run(  # noqa: S603 - the installed console script, test arguments
        [str(CONSOLE_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=folder,
        check=False,
    )


def test_a_project_of_ones_own_imports_from_its_folder(aws_env: Settings, project: Path) -> None:
    """Given myapp/tasks.py in the current folder (not installed, no PYTHONPATH), when the
    user enqueues and runs with `--tasks myapp.tasks`, then the module imports and the
    task runs; from another folder, the error says where it looked and what to do."""
    enqueued = dispatch_in(
        project, "enqueue", "hello", "--tasks", "myapp.tasks", "--args", '{"name": "ann"}'
    )
    assert enqueued.returncode == 0, enqueued.stderr
    ran = dispatch_in(project, "run", "--until-empty", "--tasks", "myapp.tasks")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1])["succeeded"] == 1

    elsewhere = dispatch_in(project.parent, "enqueue", "hello", "--tasks", "myapp.tasks")

    assert elsewhere.returncode == 3
    assert "'myapp' is neither in the current folder" in elsewhere.stderr
    assert "add that folder to PYTHONPATH" in elsewhere.stderr
    assert "Traceback" not in elsewhere.stderr


def test_a_dispatcher_without_task_modules_refuses_to_start(
    aws_env: Settings, project: Path, clients: SyncClients
) -> None:
    """Given tasks on the queue, when `dispatch run --until-empty` starts with no --tasks
    and no DISPATCH_TASKS, then it exits 3 naming DISPATCH_TASKS and the tasks are still
    queued (none dead-lettered as unknown_task); `dispatch enqueue` says the same."""
    for name in ("a", "b", "c"):
        sent = dispatch_in(
            project,
            "enqueue",
            "hello",
            "--tasks",
            "myapp.tasks",
            "--args",
            json.dumps({"name": name}),
        )
        assert sent.returncode == 0, sent.stderr

    ran = dispatch_in(project, "run", "--until-empty", DISPATCH_TASKS=None)
    enqueue = dispatch_in(project, "enqueue", "hello", DISPATCH_TASKS=None)

    assert ran.returncode == 3, ran.stderr
    assert "DISPATCH_TASKS" in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert queue_counts(clients, aws_env.queue_url)["visible"] == 3
    assert queue_counts(clients, aws_env.dlq_url)["visible"] == 0
    assert enqueue.returncode == 3
    assert "DISPATCH_TASKS" in enqueue.stderr


async def test_a_dispatcher_with_no_task_registered_does_not_run(aws_env: Settings) -> None:
    """The same refusal for a dispatcher built in code (the Lambda entrypoint, a script)."""
    async with async_clients(aws_env) as aio:
        dispatcher = Dispatcher(aws_env, clients=aio, registry=Registry())
        try:
            with pytest.raises(ConfigurationError, match="DISPATCH_TASKS"):
                await dispatcher.run(until_empty=True)
        finally:
            await dispatcher.runner.aclose()


def test_a_typo_in_a_task_name_suggests_the_task(aws_env: Settings, project: Path) -> None:
    """An unknown task name on enqueue names the close match and where tasks come from."""
    typo = dispatch_in(project, "enqueue", "helo", "--tasks", "myapp.tasks")

    assert typo.returncode == 1
    assert "did you mean 'hello'?" in typo.stderr
    assert "DISPATCH_TASKS" in typo.stderr


def test_init_and_enqueue_without_credentials_or_endpoint_are_one_clear_line(
    project: Path,
) -> None:
    """Given no AWS credentials, `dispatch init` and `dispatch enqueue` exit 3 with one
    line naming the cause; given an endpoint that does not answer, `dispatch init` exits 1
    with one line. Never a botocore traceback, never "0 of 1 enqueued" alone."""
    bare = {
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_ENDPOINT_URL": None,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
    }
    no_credentials = dispatch_in(project, "init", **bare)
    enqueue = dispatch_in(
        project,
        "enqueue", "hello", "--tasks", "myapp.tasks", "--args", '{"name": "x"}',
        DISPATCH_QUEUE_URL="https://sqs.us-east-1.amazonaws.com/123456789012/q",
        DISPATCH_DLQ_URL="https://sqs.us-east-1.amazonaws.com/123456789012/d",
        DISPATCH_TABLE="tbl",
        **bare,
    )  # fmt: skip
    down = dispatch_in(
        project,
        "init",
        **{
            **bare,
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "y",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        },
    )

    for answer, code in ((no_credentials, 3), (enqueue, 3), (down, 1)):
        assert answer.returncode == code, answer.stderr
        assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr
        assert "Traceback" not in answer.stderr
    assert "no AWS credentials found" in no_credentials.stderr
    assert "no AWS credentials found" in enqueue.stderr
    assert "Could not connect" in down.stderr
