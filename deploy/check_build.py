"""Check a built Lambda package (``sam build`` or ``make -C deploy build``) for its runtime.

    python deploy/check_build.py --python-version 3.13 [--target-python PATH] DIR [DIR...]

For each package directory it checks that:

1. both handlers' modules are there (``dispatch/aws_lambda/handler.py``,
   ``dispatch_workers/lambda_handler.py``) and the example task module the template
   names by default (``dispatch/local/example/app.py``), and Dispatch's own wheel
   installed nothing at the top level but ``dispatch`` and ``dispatch_workers`` (a
   ``workers`` or ``examples`` there would be a stale build, or collide with your code);
2. every installed distribution's wheel tags fit the target runtime
   (``py3-none-any``, ``cp313-cp313-manylinux...``, ``abi3``): nothing was built
   for this machine's own Python by mistake;
3. with an interpreter of the target version (``--target-python``), in isolated
   mode with only the package on its path and no AWS settings: both handlers
   import and are callable, and the compiled extensions (aiohttp's HTTP parser,
   multidict, yarl) load. Without such an interpreter this step is reported as
   skipped, and the tags of step 2 are what vouches for the build.

Exits 1 with the problems found, 0 otherwise. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REQUIRED_FILES = (
    "dispatch/aws_lambda/handler.py",
    "dispatch_workers/lambda_handler.py",
    "dispatch/local/example/app.py",
)
HANDLERS = ("dispatch.aws_lambda.handler.handler", "dispatch_workers.lambda_handler.handler")
DISTRIBUTION = "dispatch_aws"
TOP_LEVEL = {"dispatch", "dispatch_workers"}
COMPILED = ("aiohttp._http_parser", "multidict._multidict", "yarl._quoting_c")

IMPORT_PROBE = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
for target in {handlers!r}:
    module, _, name = target.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    assert callable(fn), target
for module in {compiled!r}:
    importlib.import_module(module)
print("ok", sys.version.split()[0])
"""


def wheel_tags(package: Path) -> dict[str, list[str]]:
    """Each installed distribution's ``Tag:`` lines, by dist-info directory name."""
    tags: dict[str, list[str]] = {}
    for wheel in sorted(package.glob("*.dist-info/WHEEL")):
        lines = wheel.read_text(encoding="utf-8").splitlines()
        tags[wheel.parent.name] = [
            line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")
        ]
    return tags


def own_top_level(package: Path) -> set[str] | None:
    """The top-level names Dispatch's wheel installed (from its RECORD), None if not installed."""
    records = sorted(package.glob(f"{DISTRIBUTION}-*.dist-info/RECORD"))
    if not records:
        return None
    names: set[str] = set()
    for line in records[0].read_text(encoding="utf-8").splitlines():
        path = line.rsplit(",", 2)[0]
        if path and not path.startswith(".."):  # ../../bin/dispatch: the console script
            names.add(path.split("/", 1)[0])
    return {name for name in names if not name.endswith(".dist-info")}


def tag_fits(tag: str, *, python_version: str) -> bool:
    """True when a wheel tag can be loaded by CPython ``python_version`` on Linux x86_64."""
    interpreter, abi, platform = tag.split("-")
    cp = "cp" + python_version.replace(".", "")
    pure = interpreter in ("py3", "py2.py3") and abi == "none" and platform == "any"
    if pure:
        return True
    if not platform.startswith(("manylinux", "musllinux", "linux")) or "x86_64" not in platform:
        return False
    if abi == "abi3":
        return interpreter.startswith("cp3") and int(interpreter[3:]) <= int(cp[3:])
    return interpreter == cp and abi in (cp, "none")


def check(package: Path, *, python_version: str, target_python: str | None) -> list[str]:
    """The problems with one package directory (empty when it is fine)."""
    problems = [
        f"{package}: missing {name}" for name in REQUIRED_FILES if not (package / name).is_file()
    ]
    top_level = own_top_level(package)
    if top_level is None:
        problems.append(f"{package}: {DISTRIBUTION} is not installed (no dist-info RECORD)")
    elif top_level != TOP_LEVEL:
        problems.append(
            f"{package}: {DISTRIBUTION} installed {sorted(top_level)}, not {sorted(TOP_LEVEL)}"
        )
    tags = wheel_tags(package)
    if not tags:
        problems.append(f"{package}: no *.dist-info/WHEEL: not a pip --target install")
    for dist, dist_tags in tags.items():
        if not any(tag_fits(tag, python_version=python_version) for tag in dist_tags):
            problems.append(
                f"{package}: {dist} is built for {dist_tags}, not CPython {python_version}"
            )
    if target_python:
        probe = IMPORT_PROBE.format(handlers=HANDLERS, compiled=COMPILED)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
        result = subprocess.run(  # noqa: S603 - our own probe, run by the interpreter we were given
            [target_python, "-I", "-B", "-c", probe, str(package)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=120,
        )
        if result.returncode != 0 or not result.stdout.startswith("ok " + python_version):
            problems.append(
                f"{package}: importing the handlers with {target_python} failed:\n"
                f"{result.stdout}{result.stderr}"
            )
        else:
            print(f"{package}: handlers import on Python {result.stdout.split()[1]}")
    else:
        print(f"{package}: no python{python_version} here: import check skipped (tags checked)")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check every package directory given; print the problems."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--python-version", default="3.13")
    parser.add_argument("--target-python", default="")
    args = parser.parse_args(argv)
    problems: list[str] = []
    for package in args.packages:
        problems += check(
            package, python_version=args.python_version, target_python=args.target_python or None
        )
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.packages)} package(s) fit CPython {args.python_version}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
