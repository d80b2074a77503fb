"""The testing kit as a user's project meets it: the documented example, the plugin, moto."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import dispatch
from dispatch.core.errors import DispatchError
from dispatch.tasks.registry import Registry, task
from dispatch.testing import LOCAL_PYTHON_ENV, drain_async, start_local_aws

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
_FILE_BLOCK = re.compile(r"```python\n# file: (?P<name>[\w./]+)\n(?P<code>.*?)```", re.DOTALL)


def example_files() -> dict[str, str]:
    """The files of docs/testing.md's complete example, by name (each a ```python block
    whose first line is ``# file: NAME``)."""
    return {m["name"]: m["code"] for m in _FILE_BLOCK.finditer(DOC.read_text(encoding="utf-8"))}


def test_the_documented_example_passes_in_a_project_of_its_own(
    pytester: pytest.Pytester,
) -> None:
    """Given an empty project holding only docs/testing.md's tasks.py and test_tasks.py,
    when pytest runs there in a fresh process (the plugin loaded from its entry point,
    as in a user's environment), then every test of the example passes."""
    files = example_files()
    assert set(files) == {"tasks.py", "test_tasks.py"}
    for name, code in files.items():
        (pytester.path / name).write_text(code, encoding="utf-8")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=110)

    result.assert_outcomes(passed=5)
    assert "warnings summary" not in result.stdout.str()  # the kit itself warns of nothing


def test_the_documented_example_type_checks(tmp_path: Path) -> None:
    """Given docs/testing.md's example, when mypy --strict checks it, then it passes:
    run_task's arguments are checked against the handler (the example's one wrong
    argument needs its `type: ignore`, or strict mode would call it unused)."""
    for name, code in example_files().items():
        (tmp_path / name).write_text(code, encoding="utf-8")

    checked = subprocess.run(  # noqa: S603 - fixed argv: this interpreter, mypy, our files
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / ".mypy"),
            "tasks.py",
            "test_tasks.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_plugin_is_loaded_from_its_entry_point(pytestconfig: pytest.Config) -> None:
    """Given this suite's installed package, when pytest started, then it registered the
    plugin under its entry point's name."""
    plugin = pytestconfig.pluginmanager.get_plugin("dispatch")

    assert plugin is not None
    assert plugin.__name__ == "dispatch.pytest_plugin"


def test_loading_the_plugin_imports_and_starts_nothing() -> None:
    """Given a fresh interpreter, when the plugin module is imported (as pytest does in
    every project where dispatch-aws is installed), then neither the testing kit (which
    starts the local AWS) nor the AWS SDKs nor moto are loaded."""
    probe = (
        "import sys, dispatch.pytest_plugin\n"
        "loaded = ('dispatch.testing', 'dispatch.local.emulator', 'aiobotocore', 'boto3', 'moto')\n"
        "print(sorted(m for m in loaded if m in sys.modules))"
    )
    answer = subprocess.run(  # noqa: S603 - fixed argv: this interpreter and a probe
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )

    assert answer.stdout.strip() == "[]"


async def test_dispatch_env_gives_a_fresh_queue_that_drain_empties(
    dispatch_env: dispatch.Settings,
) -> None:
    """Given the plugin's dispatch_env, when tasks are enqueued on the default queue (sync
    and async) and drain_async runs, then they ran on this test's own queue and the
    default queue's table holds their records."""
    registry = Registry()

    @task(registry=registry, name="kit_double")
    def double(n: int) -> int:
        return 2 * n

    assert os.environ["DISPATCH_QUEUE_URL"] == dispatch_env.queue_url
    task_id = double.enqueue(21)
    await dispatch.enqueue_many_async([double.message(1)])

    stats = await drain_async(registry=registry)

    assert (stats.received, stats.succeeded, stats.dead) == (2, 2, 0)
    assert dispatch.status(task_id).result == 42


def _recording_python(tmp_path: Path) -> tuple[Path, Path]:
    """An 'interpreter' that records that it was used, then runs this one."""
    marker = tmp_path / "used"
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\ntouch "{marker}"\nexec "{sys.executable}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, marker


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in interpreter is a sh script")
def test_dispatch_local_python_runs_the_local_aws_with_that_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given DISPATCH_LOCAL_PYTHON naming another interpreter, when the local AWS starts,
    then that interpreter runs it, and it answers."""
    script, marker = _recording_python(tmp_path)
    monkeypatch.setenv(LOCAL_PYTHON_ENV, str(script))

    with start_local_aws() as aws:
        aws.reset()
        assert aws.running

    assert marker.exists()


def test_a_missing_local_python_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given DISPATCH_LOCAL_PYTHON naming nothing, when the local AWS starts, then the
    error names the variable and the path, and no process is left behind."""
    missing = tmp_path / "nowhere" / "python"
    monkeypatch.setenv(LOCAL_PYTHON_ENV, str(missing))

    with pytest.raises(DispatchError, match=rf"{LOCAL_PYTHON_ENV}=.*nowhere"):
        start_local_aws()


def test_an_interpreter_without_moto_fails_with_the_recipe(tmp_path: Path) -> None:
    """Given an interpreter that cannot run the server, when the local AWS starts, then
    the error carries the emulator's own stderr and points to DISPATCH_LOCAL_PYTHON."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'No module named moto' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)

    with pytest.raises(DispatchError, match="No module named moto") as raised:
        start_local_aws(python=str(broken), startup_timeout_s=10)

    assert LOCAL_PYTHON_ENV in str(raised.value)
