"""The CLI's own help: --version, a description for every option, examples in the main
commands' help, suggestions for mistyped commands, and what `dispatch dev` logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import click
import pytest
import structlog
from click.testing import CliRunner

from dispatch.core.logs import configure_logging
from dispatch.ops.cli import cli

DISTRIBUTION = "dispatch-aws"  # [project] name in pyproject.toml
MAIN_COMMANDS = (("run",), ("enqueue",), ("status",), ("dlq", "redrive"), ("dev",), ("init",))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures structlog for the process: put the previous setup back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def test_version_prints_the_installed_distribution_version() -> None:
    """Given the installed package, when `dispatch --version` runs, then it prints the
    distribution's version and exits 0."""
    shown = CliRunner().invoke(cli, ["--version"])

    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == f"dispatch, version {version(DISTRIBUTION)}"


def test_every_option_of_every_command_has_a_description() -> None:
    """Given the whole command tree, when each option is inspected, then every one has a
    help text (none is listed bare in `--help`)."""
    bare = [
        (" ".join(path) or "dispatch", "/".join(option.opts))
        for path in _commands(cli)
        for option in _command(path).params
        if isinstance(option, click.Option) and not option.help
    ]

    assert bare == []


@pytest.mark.parametrize("path", MAIN_COMMANDS, ids=" ".join)
def test_main_commands_show_examples_in_their_help(path: tuple[str, ...]) -> None:
    """Given a main command, when `--help` is asked, then it ends with an Examples block
    whose lines run that command, kept unwrapped."""
    shown = CliRunner().invoke(cli, [*path, "--help"])

    assert shown.exit_code == 0, shown.output
    _, examples = shown.output.split("Examples:\n")
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert lines and all(f"dispatch {' '.join(path)}" in line for line in lines)


def test_enqueue_help_offers_a_fifo_group() -> None:
    """Given `dispatch enqueue --help`, then it lists --group as the FIFO message group."""
    shown = CliRunner().invoke(cli, ["enqueue", "--help"])

    assert "--group" in shown.output and "MessageGroupId" in shown.output


def _log_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_dev_logs_each_task_outcome_at_info_and_run_does_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given `dispatch dev` whose dispatcher settles a task (task_succeeded is a debug
    line in the loop) and defers another (debug), when it runs at its default level,
    then the outcome shows at info and the other debug line does not; logging set up as
    `dispatch run` does (info, no outcomes) writes no line per success: in production
    that would flood the logs."""
    import dispatch.local.dev

    def settle_some() -> None:
        settle = structlog.get_logger("dispatch.loop.settle")
        settle.debug("task_succeeded", task="ping", duration_s=0.01)
        settle.debug("task_deferred", task="ping", reason="rate")
        settle.info("task_retry", task="ping", delay_s=1.0)

    monkeypatch.setattr(dispatch.local.dev, "run_dev", lambda **_: settle_some())

    shown = CliRunner().invoke(cli, ["--log-json", "dev"])
    configure_logging(level="INFO", json=True)
    settle_some()

    assert shown.exit_code == 0, shown.output
    in_dev = {line["event"]: line["level"] for line in _log_lines(shown.output)}
    assert in_dev == {"task_succeeded": "info", "task_retry": "info"}
    in_run = [line["event"] for line in _log_lines(capsys.readouterr().err)]
    assert in_run == ["task_retry"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dev"], {"lambda_mode": False, "mode": "service"}),
        (["dev", "--lambda"], {"lambda_mode": True, "mode": "scheduled"}),
        (["dev", "--mode", "responsive"], {"lambda_mode": True, "mode": "responsive"}),
        (["dev", "--lambda", "--mode", "scheduled"], {"lambda_mode": True, "mode": "scheduled"}),
        (["dev", "--mode", "service"], {"lambda_mode": False, "mode": "service"}),
    ],
)
def test_dev_mode_picks_the_topology(
    monkeypatch: pytest.MonkeyPatch, args: list[str], expected: dict[str, Any]
) -> None:
    """`--mode` is the template's DispatchMode: scheduled and responsive run the Lambda
    topology (--lambda implied), service runs the dispatcher in-process as the container
    does; without it, --lambda means scheduled and nothing means the in-process loop."""
    import dispatch.local.dev

    seen: dict[str, Any] = {}
    monkeypatch.setattr(dispatch.local.dev, "run_dev", lambda **kwargs: seen.update(kwargs))

    shown = CliRunner().invoke(cli, args)

    assert shown.exit_code == 0, shown.output
    assert {k: seen[k] for k in expected} == expected


def test_dev_refuses_the_service_mode_with_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service mode has no dispatcher function: --lambda with it is a usage error
    that says why, and nothing starts."""
    import dispatch.local.dev

    started: list[Any] = []
    monkeypatch.setattr(dispatch.local.dev, "run_dev", lambda **kwargs: started.append(kwargs))

    shown = CliRunner().invoke(cli, ["dev", "--lambda", "--mode", "service"])

    assert shown.exit_code == 2
    assert "--mode service runs the dispatcher in this process" in shown.output
    assert started == []
