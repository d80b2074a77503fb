"""The wheel ships ``dispatch`` and ``dispatch_workers`` and nothing else at the top level.

An installed top-level ``workers`` or ``examples`` package would collide with a user's
own modules of that name, or with a Lambda zip's root (docs/deploy.md, "What the wheel
contains"). So the repository's workers/ folder holds the import package
``dispatch_workers``, and the example app lives in ``dispatch.local.example``, where
``dispatch demo`` finds it.

These tests build the wheel from the repository the way ``deploy/Makefile`` does
(``pip wheel --no-deps``, hatchling fetched from the configured package index), install
it with ``pip install --no-deps --target`` into a temporary directory, and import from
there in a fresh interpreter that cannot see the repository's source.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "dispatch_workers.lambda_handler",
    "dispatch.aws_lambda.handler",
    "dispatch.local.example.app",
)
# Run in the installed copy: where each module came from, the console script's target,
# and whether anything answers to the names the wheel must not provide.
PROBE = """
import importlib, json, sys
found = {name: importlib.import_module(name).__file__ for name in sys.argv[1:]}
import dispatch
found["dispatch"] = dispatch.__file__
found["dispatch.ops.cli:main"] = callable(importlib.import_module("dispatch.ops.cli").main)
for name in ("workers", "examples"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        found[name] = None
    else:
        found[name] = sys.modules[name].__file__
print(json.dumps(found))
"""


def pip(*args: str, cwd: Path) -> None:
    """Run this interpreter's pip quietly; a failure shows pip's own output."""
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "pip", *args, "--quiet"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the repository, as deploy/Makefile builds it."""
    out = tmp_path_factory.mktemp("wheelhouse")
    pip("wheel", "--no-deps", "--wheel-dir", str(out), str(ROOT), cwd=out)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed, without its dependencies, into a directory of its own."""
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=target)
    return target


def test_the_wheel_holds_only_dispatch_and_dispatch_workers(wheel: Path) -> None:
    """Given the built wheel, when its top-level names are listed, then they are the two
    packages and the wheel's own metadata: no ``workers``, no ``examples``."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()

    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}

    assert top_level - dist_info == {"dispatch", "dispatch_workers"}
    assert len(dist_info) == 1


def test_the_wheel_carries_what_the_demo_and_type_checkers_need(wheel: Path) -> None:
    """Given the built wheel, when its files are listed, then the example app, the SAM
    template the demo provisions from, both ``py.typed`` markers, the console's templates
    and static files (`dispatch ui` works offline) and the ``dispatch`` console script
    pointing at the CLI are in it."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()

    assert {
        "dispatch/local/example/app.py",
        "dispatch/local/template.yaml",
        "dispatch/py.typed",
        "dispatch_workers/py.typed",
        "dispatch/ops/console/templates/base.html",
        "dispatch/ops/console/templates/overview.html",
        "dispatch/ops/console/static/console.css",
        "dispatch/ops/console/static/chart.js",
    } <= names
    assert "dispatch = dispatch.ops.cli:main" in scripts


def test_the_installed_wheel_imports_without_the_repository(installed: Path) -> None:
    """Given the wheel installed with ``--target`` and the virtualenv's packages for its
    dependencies only (no ``site``, so the editable install's path entries are not read),
    when a fresh interpreter in that directory imports both Lambda handlers and the example
    app, then each comes from the installed copy, and ``workers`` and ``examples`` do not
    exist."""
    dependencies = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": os.pathsep.join([str(installed), dependencies]),
    }

    result = subprocess.run(  # noqa: S603 - our own probe, run by our own interpreter
        [sys.executable, "-S", "-B", "-c", PROBE, *MODULES],
        cwd=installed,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    for name in (*MODULES, "dispatch"):
        assert Path(found[name]).is_relative_to(installed), f"{name} came from {found[name]}"
    assert found["dispatch.ops.cli:main"] is True
    assert found["workers"] is None
    assert found["examples"] is None


def check_build() -> ModuleType:
    """deploy/check_build.py, the check ``make -C deploy check`` runs on a Lambda package."""
    spec = importlib.util.spec_from_file_location("check_build", ROOT / "deploy" / "check_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_check_reads_what_the_wheel_installed(installed: Path, tmp_path: Path) -> None:
    """Given the installed wheel and a stale install whose RECORD also lists ``workers``
    and ``examples`` files, when deploy/check_build.py reads each one's top-level names,
    then it finds the two packages in the first and the stale names in the second."""
    stale = tmp_path / "dispatch_aws-0.0.9.dist-info"
    stale.mkdir()
    (stale / "RECORD").write_text(
        "dispatch/__init__.py,sha256=x,1\n"
        "workers/pool.py,sha256=x,1\n"
        "examples/app.py,sha256=x,1\n"
        "../../bin/dispatch,sha256=x,1\n"
        "dispatch_aws-0.0.9.dist-info/RECORD,,\n"
    )

    own_top_level = check_build().own_top_level

    assert own_top_level(installed) == {"dispatch", "dispatch_workers"}
    assert own_top_level(tmp_path) == {"dispatch", "workers", "examples"}
