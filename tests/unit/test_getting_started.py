"""examples/myproject, the project docs/getting-started.md builds: it imports, and it deploys.

Its template is Dispatch's deploy/template.yaml but for what a project of its own
must change (its code, its task modules, a policy for its producers), so a change
to the one that is not made to the other fails here rather than in a user's stack.
Its tasks module must import from the project's folder, as `dispatch dev` and the
Lambda package import it, and the doc must show that module as it is.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dispatch.local.provision import load_template

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "myproject"
TEMPLATE = PROJECT / "template.yaml"
GUIDE = ROOT / "docs" / "getting-started.md"
FUNCTIONS = ("DispatcherFunction", "WorkerFunction")
ADDED_RESOURCES = {"ProducerPolicy"}
ADDED_OUTPUTS = {"ProducerPolicyArn"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The example's template as CloudFormation reads it."""
    return load_template(TEMPLATE)


def test_the_tasks_module_imports_from_the_project_folder_and_declares_two_tasks() -> None:
    """Given examples/myproject, when a fresh interpreter started in that folder imports
    the template's TaskModules (as `dispatch dev --tasks myapp.tasks` does), then it
    declares `charge` and `send_receipt`, with `charge` behind `payments-api`."""
    modules = load_template(TEMPLATE)["Parameters"]["TaskModules"]["Default"]
    script = (
        "import importlib, json, sys\n"
        "from dispatch import default_registry\n"
        f"for name in {modules!r}.split(','):\n"
        "    importlib.import_module(name.strip())\n"
        "specs = {n: default_registry.get(n) for n in ('charge', 'send_receipt')}\n"
        "print(json.dumps({n: s.resource.name if s.resource else None"
        " for n, s in specs.items()}))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"charge": "payments-api", "send_receipt": None}


def test_the_template_passes_cfn_lint() -> None:
    """Given the example's template, when cfn-lint checks it (SAM transform included),
    then it reports no error or warning."""
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1"]))

    assert [str(m) for m in matches] == []


def test_the_template_builds_this_folder_and_names_handlers_that_exist(
    template: dict[str, Any],
) -> None:
    """Given the example's functions, when their code location, build method and handler
    are read, then each builds this folder with its Makefile (a target per function) and
    its handler is a callable in an installed Dispatch module."""
    makefile = (PROJECT / "Makefile").read_text(encoding="utf-8")
    for name in FUNCTIONS:
        function = template["Resources"][name]
        assert function["Properties"]["CodeUri"] == "."
        assert function["Metadata"]["BuildMethod"] == "makefile"
        assert re.search(rf"^(?:\S+ )*build-{name}\b.*:", makefile, re.MULTILINE), name
        module_name, _, attribute = function["Properties"]["Handler"].rpartition(".")
        assert callable(getattr(importlib.import_module(module_name), attribute))
    assert "-r requirements.txt" in makefile
    assert "cp -R myapp" in makefile


def test_requirements_install_this_distribution() -> None:
    """Given requirements.txt, when its requirements are read, then Dispatch comes from
    the distribution this repository builds (pyproject's name), with an upper bound."""
    name = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]
    lines = (PROJECT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line for line in lines if line.strip() and not line.startswith("#")]

    assert any(re.match(rf"{re.escape(name)}\b.*<", line) for line in requirements), requirements


def test_the_template_is_dispatchs_template_but_for_the_projects_own_lines(
    template: dict[str, Any],
) -> None:
    """Given deploy/template.yaml and the example's copy, when the lines a project of its
    own changes are set aside (description, TaskModules' default and description, the
    functions' CodeUri and build metadata, the producer policy and its output), then
    the two templates are the same."""
    ours = copy.deepcopy(load_template(ROOT / "deploy" / "template.yaml"))
    theirs = copy.deepcopy(template)
    for doc in (ours, theirs):
        doc.pop("Description")
        doc["Parameters"]["TaskModules"].pop("Default")
        doc["Parameters"]["TaskModules"].pop("Description")
        for name in FUNCTIONS:
            doc["Resources"][name].pop("Metadata")
            doc["Resources"][name]["Properties"].pop("CodeUri")
    added = {name: theirs["Resources"].pop(name) for name in ADDED_RESOURCES}
    added_outputs = {name: theirs["Outputs"].pop(name) for name in ADDED_OUTPUTS}

    assert theirs == ours
    assert template["Parameters"]["TaskModules"]["Default"] == "myapp.tasks"
    assert added["ProducerPolicy"]["Type"] == "AWS::IAM::ManagedPolicy"
    assert added_outputs["ProducerPolicyArn"]["Value"] == {"Ref": "ProducerPolicy"}


def test_the_guide_shows_the_tasks_module_as_it_is() -> None:
    """Given docs/getting-started.md, when its python blocks are read, then one of them is
    examples/myproject/myapp/tasks.py, word for word."""
    guide = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", guide, re.MULTILINE | re.DOTALL)
    module = (PROJECT / "myapp" / "tasks.py").read_text(encoding="utf-8")

    assert module in blocks


def test_the_producer_policy_allows_every_call_enqueue_makes(template: dict[str, Any]) -> None:
    """Given the enqueue plan's AWS calls (every ``Call(service, operation, ...)`` in
    dispatch/producer/enqueue.py) and ``dispatch.status``'s GetItem, when they are
    compared with ProducerPolicy, then the policy allows each of them (sqs:SendMessage
    stands for SendMessageBatch)."""
    import ast

    from botocore import xform_name

    source = (ROOT / "dispatch" / "producer" / "enqueue.py").read_text(encoding="utf-8")
    calls = {("dynamodb", "get_item")}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Call":
            service, operation = (arg.value for arg in node.args[:2])  # type: ignore[attr-defined]
            calls.add((service, operation))
    statements = template["Resources"]["ProducerPolicy"]["Properties"]["PolicyDocument"]
    allowed = set()
    for entry in statements["Statement"]:
        # A mode's extra statement (responsive: wake the dispatcher) is an Fn::If.
        statement = entry["Fn::If"][1] if "Fn::If" in entry else entry
        actions = statement["Action"]
        allowed |= {actions} if isinstance(actions, str) else set(actions)

    def allows(service: str, operation: str) -> bool:
        return any(
            action.split(":")[0] == service
            and xform_name(action.split(":")[1]) in (operation, operation.removesuffix("_batch"))
            for action in allowed
        )

    missing = sorted(
        f"{service}:{operation}" for service, operation in calls if not allows(service, operation)
    )

    assert len(calls) >= 5  # update_item, put_item, batch_write_item, delete_item, ...
    assert missing == []
