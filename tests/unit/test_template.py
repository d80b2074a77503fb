"""deploy/template.yaml: valid, transformable, and in agreement with the code.

The template is checked against what the code does rather than against a second
hand-kept list: the IAM statements must grant exactly the operations
``dispatch.aws_lambda.handler.DISPATCHER_GRANTS`` declares (which the clients enforce
at run time), and every declared operation must be one the code calls.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import xform_name

from dispatch.aws_lambda import handler as lambda_handler
from dispatch.aws_lambda.handler import (
    DISPATCHER_GRANTS,
    WORKER_GRANTS,
    iam_grants,
)
from dispatch.local.provision import load_template
from dispatch.tasks.cron import parse

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TEMPLATE_PATH = DEPLOY / "template.yaml"
EXAMPLE_TEMPLATE_PATH = ROOT / "examples" / "myproject" / "template.yaml"  # has ProducerPolicy
FUNCTIONS = ("DispatcherFunction", "WorkerFunction")
LOG_ACTIONS = {"logs:CreateLogStream", "logs:PutLogEvents"}
MODES = ("scheduled", "responsive", "service")
NO_VALUE = {"Ref": "AWS::NoValue"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template as CloudFormation reads it (short-form tags in long form)."""
    return load_template(TEMPLATE_PATH)


@pytest.fixture(scope="module")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """The template after the SAM transform, as CloudFormation would deploy it."""
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    packaged = copy.deepcopy(template)
    for name in FUNCTIONS:  # what `sam package` does to a local CodeUri
        packaged["Resources"][name]["Properties"]["CodeUri"] = f"s3://bucket/{name}.zip"
    translator = Translator(
        None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1")
    )
    result: dict[str, Any] = translator.translate(
        packaged, parameter_values={}, get_managed_policy_map=dict
    )
    return result


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_template_passes_cfn_lint() -> None:
    """cfn-lint (with the SAM transform) reports no error or warning."""
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE_PATH, config=ManualArgs(regions=["us-east-1"]))
    assert [str(m) for m in matches] == []


def test_sam_translator_transforms_the_template(transformed: dict[str, Any]) -> None:
    """The SAM transform succeeds and yields the deployed topology: both functions
    with a published version and a `live` alias under CodeDeploy, the schedule rule
    targeting the dispatcher's alias, and no retries of a missed tick."""
    kinds = {name: r["Type"] for name, r in transformed["Resources"].items()}
    for function in FUNCTIONS:
        assert kinds[function] == "AWS::Lambda::Function"
        assert kinds[f"{function}Aliaslive"] == "AWS::Lambda::Alias"
        assert kinds[f"{function}DeploymentGroup"] == "AWS::CodeDeploy::DeploymentGroup"
    rule = transformed["Resources"]["DispatcherFunctionTick"]
    assert rule["Type"] == "AWS::Events::Rule"
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Ref": "DispatcherFunctionAliaslive"}
    invoke_config = transformed["Resources"]["DispatcherFunctionEventInvokeConfig"]["Properties"]
    assert invoke_config["MaximumRetryAttempts"] == 0


def _holds(template: dict[str, Any], condition: dict[str, Any], mode: str) -> bool:
    """Whether a condition (Fn::Equals, Fn::Not, Condition) holds with DispatchMode=mode."""
    ((function, args),) = condition.items()
    if function == "Condition":
        return _holds(template, template["Conditions"][args], mode)
    if function == "Fn::Not":
        return not _holds(template, args[0], mode)
    assert function == "Fn::Equals", condition
    parameters = {"DispatchMode": mode}
    left, right = (parameters[a["Ref"]] if isinstance(a, dict) else a for a in args)
    return bool(left == right)


def _resolve(template: dict[str, Any], value: Any, mode: str) -> Any:
    """``value`` with every Fn::If decided for DispatchMode=mode and AWS::NoValue dropped."""
    if isinstance(value, list):
        items = [_resolve(template, item, mode) for item in value]
        return [item for item in items if item != NO_VALUE]
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            name, then, otherwise = value["Fn::If"]
            held = _holds(template, template["Conditions"][name], mode)
            return _resolve(template, then if held else otherwise, mode)
        items = {key: _resolve(template, item, mode) for key, item in value.items()}
        return {key: item for key, item in items.items() if item != NO_VALUE}
    return value


def _dispatcher_alias_arn(template: dict[str, Any]) -> dict[str, str]:
    """The ARN of the dispatcher's live alias, built from its FunctionName and alias."""
    function = template["Resources"]["DispatcherFunction"]["Properties"]
    name = function["FunctionName"]["Fn::Sub"]
    alias = function["AutoPublishAlias"]
    prefix = "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function"
    return {"Fn::Sub": f"{prefix}:{name}:{alias}"}


def test_dispatch_mode_is_scheduled_responsive_or_service(template: dict[str, Any]) -> None:
    """DispatchMode picks who dispatches: scheduled (the default), responsive or service."""
    parameter = template["Parameters"]["DispatchMode"]

    assert parameter["Default"] == "scheduled"
    assert sorted(parameter["AllowedValues"]) == sorted(MODES)
    assert len(parameter["AllowedValues"]) == len(MODES)


def test_the_schedule_is_off_only_in_the_service_mode(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """Given the transformed tick rule, its state is DISABLED only with `service` (dispatch
    run on ECS beside the stack); scheduled and responsive (its safety net) keep it."""
    assert template["Conditions"]["ServiceMode"] == {
        "Fn::Equals": [{"Ref": "DispatchMode"}, "service"]
    }
    state = transformed["Resources"]["DispatcherFunctionTick"]["Properties"]["State"]

    assert state == {"Fn::If": ["ServiceMode", "DISABLED", "ENABLED"]}
    assert {mode: _resolve(transformed, state, mode) for mode in MODES} == {
        "scheduled": "ENABLED",
        "responsive": "ENABLED",
        "service": "DISABLED",
    }


def test_the_dispatcher_lingers_only_in_the_responsive_mode(template: dict[str, Any]) -> None:
    """DISPATCH_LINGER_S is "0" (return as soon as the queue is empty) unless the mode is
    responsive, where a woken dispatcher long-polls a positive number of seconds."""
    assert template["Conditions"]["Responsive"] == {
        "Fn::Equals": [{"Ref": "DispatchMode"}, "responsive"]
    }
    variables = template["Resources"]["DispatcherFunction"]["Properties"]["Environment"]
    linger = variables["Variables"]["DISPATCH_LINGER_S"]

    by_mode = {mode: _resolve(template, linger, mode) for mode in MODES}

    assert all(isinstance(value, str) for value in by_mode.values()), by_mode
    assert by_mode["scheduled"] == by_mode["service"] == "0"
    assert int(by_mode["responsive"]) > 0


def test_producers_may_wake_the_dispatcher_only_in_the_responsive_mode() -> None:
    """Given the example's ProducerPolicy (deploy/template.yaml has none), when the modes
    are compared, then responsive adds exactly one statement: lambda:InvokeFunction on
    the dispatcher's live alias, the function DISPATCH_SCALE_OUT_FUNCTION also names."""
    example = load_template(EXAMPLE_TEMPLATE_PATH)
    document = example["Resources"]["ProducerPolicy"]["Properties"]["PolicyDocument"]
    statements = {mode: _resolve(example, document["Statement"], mode) for mode in MODES}
    alias_arn = _dispatcher_alias_arn(example)
    variables = example["Resources"]["DispatcherFunction"]["Properties"]["Environment"]

    assert statements["scheduled"] == statements["service"]
    added = [s for s in statements["responsive"] if s not in statements["scheduled"]]
    assert len(statements["responsive"]) == len(statements["scheduled"]) + 1
    assert added == [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": alias_arn}]
    assert variables["Variables"]["DISPATCH_SCALE_OUT_FUNCTION"] == alias_arn


def test_the_wake_function_output_exists_only_in_the_responsive_mode(
    template: dict[str, Any],
) -> None:
    """The WakeFunction output, what producers set as DISPATCH_WAKE_FUNCTION, is the
    dispatcher's live alias and exists only under the Responsive condition."""
    output = template["Outputs"]["WakeFunction"]

    assert output["Condition"] == "Responsive"
    assert output["Value"] == _dispatcher_alias_arn(template)
    assert "DISPATCH_WAKE_FUNCTION" in output["Description"]


def test_sam_transform_keeps_the_rules_and_mappings(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """The SAM transform passes the Rules (the deploy-time refusal of a dispatcher timeout
    too short for LongestTaskSeconds) and the Mappings through to CloudFormation."""
    assert transformed["Rules"] == template["Rules"]
    assert transformed["Mappings"] == template["Mappings"]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_handler_resolves_to_an_importable_callable(
    template: dict[str, Any], function: str
) -> None:
    """The Handler string names a module that imports and a callable in it."""
    handler = template["Resources"][function]["Properties"]["Handler"]
    module_name, _, attribute = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module_name), attribute))


def _granted(template: dict[str, Any], role: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(action, logical id) pairs a role grants beyond logging, and its logging actions."""
    pairs: set[tuple[str, str]] = set()
    log_actions: set[str] = set()
    dispatcher_alias = f"${{AWS::StackName}}-dispatcher:{_alias(template, 'DispatcherFunction')}"
    for policy in template["Resources"][role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            resource = statement["Resource"]
            if all(a.startswith("logs:") for a in actions):
                log_actions.update(actions)
                continue
            if "Fn::GetAtt" in resource:
                logical, attribute = resource["Fn::GetAtt"]
                assert attribute == "Arn"
            elif "Ref" in resource:
                logical = resource["Ref"].removesuffix(".Alias")
            else:
                assert resource["Fn::Sub"].endswith(f":function:{dispatcher_alias}")
                logical = "DispatcherFunction"
            pairs.update((action, logical) for action in actions)
    return pairs, log_actions


def _alias(template: dict[str, Any], function: str) -> str:
    return str(template["Resources"][function]["Properties"]["AutoPublishAlias"])


def test_dispatcher_role_grants_exactly_the_declared_operations(template: dict[str, Any]) -> None:
    """The dispatcher's role allows exactly DISPATCHER_GRANTS (as IAM actions, each on
    its one resource), plus writing to its own log group: nothing more, nothing less."""
    granted, logs = _granted(template, "DispatcherRole")

    assert granted == iam_grants(DISPATCHER_GRANTS)
    assert logs == LOG_ACTIONS


def test_worker_role_grants_no_aws_operation(template: dict[str, Any]) -> None:
    """The worker's role allows only its logs: WORKER_GRANTS is empty."""
    granted, logs = _granted(template, "WorkerRole")

    assert granted == iam_grants(WORKER_GRANTS) == set()
    assert logs == LOG_ACTIONS


def test_functions_run_with_their_own_roles(template: dict[str, Any]) -> None:
    """Each function uses its explicit role (no SAM-generated role with broader managed
    policies), and each role writes only to that function's log group."""
    for function, role in (
        ("DispatcherFunction", "DispatcherRole"),
        ("WorkerFunction", "WorkerRole"),
    ):
        assert template["Resources"][function]["Properties"]["Role"] == {
            "Fn::GetAtt": [role, "Arn"]
        }
        log_group = function.replace("Function", "LogGroup")
        name = template["Resources"][log_group]["Properties"]["LogGroupName"]["Fn::Sub"]
        function_name = template["Resources"][function]["Properties"]["FunctionName"]["Fn::Sub"]
        assert name == f"/aws/lambda/{function_name}"


def _import_closure(entry: str) -> set[Path]:
    """The source files of dispatch/ and workers/ that ``entry`` imports, transitively,
    at module level or inside functions (not under TYPE_CHECKING)."""
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        module = pending.pop()
        if not module.startswith(("dispatch", "workers")):
            continue
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # `from package.module import name`: a name, not a module
            continue
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin)
        if path in seen or ROOT not in path.parents or ".venv" in path.parts:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                pending.append(node.module)
                pending += [f"{node.module}.{alias.name}" for alias in node.names]
    return seen


def _called_methods(paths: set[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
    return names


def test_every_declared_operation_is_one_the_dispatcher_code_calls() -> None:
    """No grant for an operation the code never sends: each operation in
    DISPATCHER_GRANTS is called (as botocore's method name) in the code the
    dispatcher function imports. (The other direction is enforced at run time:
    the handler's clients refuse any operation outside the grants, and the
    integration tests run every path through them.)"""
    called = _called_methods(_import_closure("dispatch.aws_lambda.handler"))
    declared = {xform_name(op) for grant in DISPATCHER_GRANTS for op in grant.operations}

    assert declared - called == set()


def test_dispatcher_environment_names_only_settings_the_code_reads(
    template: dict[str, Any],
) -> None:
    """Every variable the template sets on a function is one the code reads (a typo
    would silently leave a default in force)."""
    from dispatch.core import constants

    known = {
        value
        for module in (constants, lambda_handler)
        for name, value in vars(module).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }
    for function in FUNCTIONS:
        variables = template["Resources"][function]["Properties"]["Environment"]["Variables"]
        assert set(variables) - known == set(), function


def test_schedule_default_is_a_valid_eventbridge_expression(template: dict[str, Any]) -> None:
    """The default schedule parses with dispatch.tasks.cron and is AWS's shortest rate."""
    assert parse(template["Parameters"]["DispatchSchedule"]["Default"]).expression == (
        "rate(1 minute)"
    )


def test_functions_target_a_supported_python_runtime_with_gradual_deployment(
    template: dict[str, Any],
) -> None:
    """Both functions run python3.12 or newer, publish a `live` alias, shift traffic
    gradually with a rollback alarm, and build with deploy/Makefile (no Docker)."""
    for function in FUNCTIONS:
        resource = template["Resources"][function]
        runtime = resource["Properties"]["Runtime"]
        assert runtime.startswith("python3.")
        assert int(runtime.removeprefix("python3.")) >= 12
        assert _alias(template, function) == "live"
        preference = resource["Properties"]["DeploymentPreference"]
        assert preference["Type"] == {"Ref": "DeploymentType"}
        assert preference["Alarms"]
        assert resource["Metadata"]["BuildMethod"] == "makefile"
    worker = template["Resources"]["WorkerFunction"]["Properties"]
    assert worker["ReservedConcurrentExecutions"] == {"Ref": "WorkerReservedConcurrency"}


def test_alarms_watch_dlq_depth_oldest_message_and_throttle_wait(
    template: dict[str, Any],
) -> None:
    """Alarms exist on the DLQ's depth, the oldest task's age and the time spent
    waiting for the throttle (the metric the dispatcher function emits)."""
    alarms = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"])
        for a in _resources(template, "AWS::CloudWatch::Alarm").values()
    }
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in alarms
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage") in alarms
    assert (lambda_handler.METRICS_NAMESPACE, "ThrottleWait") in alarms
    record = lambda_handler.emf_record(
        queue="q", stats=lambda_handler.RunStats(), requests=0, timestamp_s=0.0
    )
    emitted = {m["Name"] for m in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "ThrottleWait" in emitted


def test_outputs_name_the_queue_table_and_functions(template: dict[str, Any]) -> None:
    """The stack outputs what a user exports (queue URL, DLQ URL, table) and the roles
    and functions they look at."""
    outputs = template["Outputs"]
    assert outputs["QueueUrl"]["Value"] == {"Ref": "TaskQueue"}
    assert outputs["TableName"]["Value"] == {"Ref": "StateTable"}
    assert {"DeadLetterQueueUrl", "WorkerRoleName", "DispatcherFunctionName"} <= set(outputs)


def test_queue_table_and_dlq_keep_their_logical_ids_and_protections(
    template: dict[str, Any],
) -> None:
    """Local provisioning reads these three by logical id: SSE and redrive on the
    queue, 14-day DLQ retention, an on-demand table with TTL, PITR and SSE."""
    queue = template["Resources"]["TaskQueue"]["Properties"]
    dlq = template["Resources"]["DeadLetterQueue"]["Properties"]
    table = template["Resources"]["StateTable"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
    }
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"]["Enabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True


def test_samconfig_builds_in_source_and_deploys_with_iam_capability() -> None:
    """samconfig.toml is valid TOML; `sam build` runs the makefile in place and
    `sam deploy` may create the two roles."""
    config = tomllib.loads((DEPLOY / "samconfig.toml").read_text())
    assert config["default"]["build"]["parameters"]["build_in_source"] is True
    assert "CAPABILITY_IAM" in config["default"]["deploy"]["parameters"]["capabilities"]


def test_makefile_has_the_build_target_sam_calls_for_each_function(
    template: dict[str, Any],
) -> None:
    """SAM runs `make build-<LogicalId>` for each makefile-built function."""
    makefile = (DEPLOY / "Makefile").read_text()
    for function in FUNCTIONS:
        assert f"build-{function}" in makefile
        assert template["Resources"][function]["Metadata"]["ContextPath"] == "."


def _check_build_module() -> Any:
    spec = importlib.util.spec_from_file_location("check_build", DEPLOY / "check_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("tag", "fits"),
    [
        ("py3-none-any", True),
        ("cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64", True),
        ("cp39-abi3-manylinux_2_17_x86_64", True),
        ("cp311-cp311-manylinux_2_17_x86_64", False),  # this machine's Python, not the target
        ("cp313-cp313-macosx_11_0_arm64", False),
        ("cp313-cp313-manylinux_2_17_aarch64", False),
    ],
)
def test_build_check_accepts_only_wheels_for_the_target_runtime(tag: str, fits: bool) -> None:
    """deploy/check_build.py tells a wheel built for CPython 3.13 on Linux x86_64 from
    one built for this machine's 3.11 or another platform."""
    assert _check_build_module().tag_fits(tag, python_version="3.13") is fits


def test_makefile_build_holds_an_importable_package_for_the_target_runtime() -> None:
    """`make -C deploy check` builds both functions as `sam build` does and imports
    the handlers with a python3.13 interpreter (tag check when there is none)."""
    result = subprocess.run(  # noqa: S603 - a fixed command: our own Makefile
        ["make", "-C", str(DEPLOY), "check", f"PYTHON={sys.executable}"],  # noqa: S607 - make from PATH
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fit CPython 3.13" in result.stdout
