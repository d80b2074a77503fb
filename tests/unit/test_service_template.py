"""deploy/service.yaml (service mode, `dispatch run` on ECS Fargate): valid, and in
agreement with the code it runs.

As for deploy/template.yaml (tests/unit/test_template.py), the template is checked
against what the code does: the task role against ``DISPATCHER_GRANTS`` and the
requests ``Dispatcher.check()`` really sends, the container's environment against
the names the code reads, its command line against the ``dispatch`` CLI. The
intrinsic functions that turn the main stack's outputs (queue URLs, table name)
and the image URI into ARNs and a queue name are evaluated here on sample values.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatch.aws_lambda.handler import DISPATCHER_GRANTS, iam_grants
from dispatch.core import constants
from dispatch.core.config import Settings
from dispatch.local.provision import load_template
from dispatch.loop.dispatcher import Dispatcher
from dispatch.ops.cli import cli
from dispatch.store.aws import AsyncClients
from dispatch.tasks.registry import DEFAULT_TIMEOUT_S, Registry
from dispatch_workers.pool import SHUTDOWN_GRACE_S

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PATH = ROOT / "deploy" / "service.yaml"
DOCKERFILE_PATH = ROOT / "deploy" / "service" / "Dockerfile"

FARGATE_MAX_STOP_TIMEOUT_S = 120
STOP_MARGIN_S = 15  # settling the last outcome, plus the pool's wait for a stuck thread

# What a user pastes from the main stack's outputs, and where the stack runs.
ACCOUNT = "123456789012"
REGION = "eu-west-1"
SAMPLE_PARAMETERS = {
    "QueueUrl": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/dispatch-TaskQueue-AbC123",
    "DeadLetterQueueUrl": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/dispatch-DeadLetterQueue-XyZ9",
    "TableName": "dispatch-StateTable-1Q2W3E",
    "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/dispatch-app@sha256:{'a' * 64}",
}
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::StackName": "dispatch-service",
}
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:dispatch-TaskQueue-AbC123"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:dispatch-DeadLetterQueue-XyZ9"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/dispatch-StateTable-1Q2W3E"
LOGICAL_BY_ARN = {QUEUE_ARN: "TaskQueue", DLQ_ARN: "DeadLetterQueue", TABLE_ARN: "StateTable"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The template as CloudFormation reads it (short-form tags in long form)."""
    return load_template(SERVICE_PATH)


def _parameters(template: dict[str, Any], **overrides: str) -> dict[str, Any]:
    """Every parameter's value: its default, the sample values, then ``overrides``."""
    values = {k: p["Default"] for k, p in template["Parameters"].items() if "Default" in p}
    return {**values, **SAMPLE_PARAMETERS, **overrides}


class _Intrinsics:
    """Evaluates the intrinsic functions this template uses, as CloudFormation would.

    ``Fn::GetAtt`` and a ``Ref`` to a resource stay symbolic (``<Name.Attr>``,
    ``<Name>``): they exist only once deployed.
    """

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any]) -> None:
        self._template, self._parameters = template, parameters
        self._functions: dict[str, Callable[[Any], Any]] = {
            "Ref": self._ref,
            "Fn::GetAtt": lambda arg: "<{}.{}>".format(*arg),
            "Fn::Select": lambda arg: self(arg[1])[int(self(arg[0]))],
            "Fn::Split": lambda arg: self(arg[1]).split(arg[0]),
            "Fn::FindInMap": self._find_in_map,
            "Fn::Sub": self._sub,
        }

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1 and next(iter(value)) in self._functions:
            ((name, argument),) = value.items()
            return self._functions[name](argument)
        return {k: self(v) for k, v in value.items()}

    def _ref(self, name: str) -> Any:
        if name in PSEUDO:
            return PSEUDO[name]
        return self._parameters[name] if name in self._template["Parameters"] else f"<{name}>"

    def _find_in_map(self, argument: list[Any]) -> Any:
        mapping, key, attribute = self(argument)
        return self._template["Mappings"][mapping][str(key)][attribute]

    def _sub(self, argument: str | list[Any]) -> str:
        body, names = (
            (argument, {}) if isinstance(argument, str) else (argument[0], self(argument[1]))
        )

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            return str(names[name] if name in names else self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", substitute, body)


def _resolve(template: dict[str, Any], value: Any, parameters: dict[str, Any]) -> Any:
    """``value`` with its intrinsic functions evaluated for these parameter values."""
    return _Intrinsics(template, parameters)(value)


def _container(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert isinstance(container, dict)
    return container


def _statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    properties = template["Resources"][role]["Properties"]
    assert "ManagedPolicyArns" not in properties
    statements = [
        s for policy in properties["Policies"] for s in policy["PolicyDocument"]["Statement"]
    ]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}
    return statements


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


# --- validity ---------------------------------------------------------------------------------
def test_service_template_passes_cfn_lint() -> None:
    """cfn-lint reports no error or warning."""
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(SERVICE_PATH, config=ManualArgs(regions=["us-east-1"]))
    assert [str(m) for m in matches] == []


def test_every_task_size_is_a_cpu_memory_pair_fargate_accepts(template: dict[str, Any]) -> None:
    """Each TaskSize offered maps to a Fargate CPU/memory pair: cfn-lint's E3047 checks a
    pair only when it is literal, so each is written into the task definition in turn."""
    from cfnlint.api import ManualArgs, lint

    sizes = template["Mappings"]["TaskSizes"]
    assert set(template["Parameters"]["TaskSize"]["AllowedValues"]) == set(sizes)
    assert template["Parameters"]["TaskSize"]["Default"] in sizes
    for name, size in sizes.items():
        variant = copy.deepcopy(template)
        variant["Resources"]["TaskDefinition"]["Properties"].update(
            Cpu=size["Cpu"], Memory=size["Memory"]
        )
        matches = lint(json.dumps(variant), config=ManualArgs(regions=["us-east-1"]))
        assert [str(m) for m in matches if m.rule.id == "E3047"] == [], name


# --- permissions ------------------------------------------------------------------------------
class _RecordingClient:
    """Answers the startup check's requests, recording them; anything else fails."""

    def __init__(self, service: str, calls: list[tuple[str, str, str]]) -> None:
        self._service, self._calls = service, calls

    async def get_queue_attributes(self, **params: Any) -> dict[str, Any]:
        self._calls.append((self._service, "GetQueueAttributes", params["QueueUrl"]))
        return {"Attributes": {"QueueArn": "arn"}}

    async def describe_table(self, **params: Any) -> dict[str, Any]:
        self._calls.append((self._service, "DescribeTable", params["TableName"]))
        key = constants.TABLE_HASH_KEY
        return {
            "Table": {
                "TableName": params["TableName"],
                "TableStatus": "ACTIVE",
                "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"}],
            }
        }

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the startup check sent {self._service}.{name}")


def _startup_check_grants() -> set[tuple[str, str]]:
    """(IAM action, logical id) of what `dispatch run` sends before its loop starts
    (``Dispatcher.check()``, which the Lambda handler does not call)."""
    settings = Settings(
        queue_url=SAMPLE_PARAMETERS["QueueUrl"],
        dlq_url=SAMPLE_PARAMETERS["DeadLetterQueueUrl"],
        table=SAMPLE_PARAMETERS["TableName"],
    )
    calls: list[tuple[str, str, str]] = []
    clients = AsyncClients(
        sqs=_RecordingClient("sqs", calls),  # type: ignore[arg-type]
        dynamodb=_RecordingClient("dynamodb", calls),  # type: ignore[arg-type]
    )

    async def check() -> None:
        dispatcher = Dispatcher(settings, clients=clients, registry=Registry())
        try:
            await dispatcher.check()
        finally:
            await dispatcher.runner.aclose()

    asyncio.run(check())
    logical = {
        settings.queue_url: "TaskQueue",
        settings.dlq_url: "DeadLetterQueue",
        settings.table: "StateTable",
    }
    return {(f"{service}:{operation}", logical[target]) for service, operation, target in calls}


def test_startup_check_sends_what_the_task_role_adds_to_dispatcher_grants() -> None:
    """`dispatch run` checks both queues and the table before it starts: the two requests
    DISPATCHER_GRANTS lacks are the DLQ's GetQueueAttributes and DescribeTable."""
    extra = _startup_check_grants() - iam_grants(DISPATCHER_GRANTS)

    assert extra == {
        ("sqs:GetQueueAttributes", "DeadLetterQueue"),
        ("dynamodb:DescribeTable", "StateTable"),
    }


def test_task_role_grants_exactly_what_dispatch_run_sends(template: dict[str, Any]) -> None:
    """The task role allows DISPATCHER_GRANTS' SQS and DynamoDB operations as IAM actions
    (no Lambda Invoke: handlers run in the process) plus the startup check, each on the
    ARN derived from the main stack's outputs: nothing more, nothing less."""
    parameters = _parameters(template)
    granted: set[tuple[str, str]] = set()
    for statement in _statements(template, "TaskRole"):
        arn = _resolve(template, statement["Resource"], parameters)
        assert arn in LOGICAL_BY_ARN, arn
        granted.update((action, LOGICAL_BY_ARN[arn]) for action in _actions(statement))

    in_process = [g for g in DISPATCHER_GRANTS if g.service != "lambda"]
    assert granted == iam_grants(in_process) | _startup_check_grants()


def test_execution_role_only_pulls_the_image_and_writes_logs(template: dict[str, Any]) -> None:
    """The execution role (the ECS agent's) pulls from the image's one ECR repository and
    writes to the service's log group; the registry token is the only wildcard."""
    parameters = _parameters(template)
    granted = {
        (action, _resolve(template, statement["Resource"], parameters))
        for statement in _statements(template, "ExecutionRole")
        for action in _actions(statement)
    }

    repository = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/dispatch-app"
    assert granted == {
        ("ecr:GetAuthorizationToken", "*"),
        ("ecr:BatchCheckLayerAvailability", repository),
        ("ecr:GetDownloadUrlForLayer", repository),
        ("ecr:BatchGetImage", repository),
        ("logs:CreateLogStream", "<LogGroup.Arn>"),
        ("logs:PutLogEvents", "<LogGroup.Arn>"),
    }


@pytest.mark.parametrize("suffix", [":v1.2", "", f"@sha256:{'b' * 64}"])
def test_image_repository_is_derived_from_a_tag_a_digest_or_neither(
    template: dict[str, Any], suffix: str
) -> None:
    """The ECR repository ARN comes out the same whether ImageUri names a tag, a digest
    or neither, and the URI passes the parameter's pattern."""
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/dispatch-app{suffix}"
    assert re.fullmatch(template["Parameters"]["ImageUri"]["AllowedPattern"], image)
    (pull,) = [s for s in _statements(template, "ExecutionRole") if s["Sid"] == "EcrPull"]

    arn = _resolve(template, pull["Resource"], _parameters(template, ImageUri=image))

    assert arn == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/dispatch-app"


def test_main_stack_outputs_pass_the_parameter_patterns(template: dict[str, Any]) -> None:
    """Values shaped like the main stack's outputs are accepted by the parameters
    named after them (QueueUrl, DeadLetterQueueUrl, TableName)."""
    main_outputs = load_template(ROOT / "deploy" / "template.yaml")["Outputs"]
    for name in ("QueueUrl", "DeadLetterQueueUrl", "TableName"):
        assert name in main_outputs
        pattern = template["Parameters"][name]["AllowedPattern"]
        assert re.fullmatch(pattern, SAMPLE_PARAMETERS[name]), name


# --- the container ----------------------------------------------------------------------------
def _env_names_in_constants() -> set[str]:
    return {
        value
        for name, value in vars(constants).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }


def test_container_environment_is_what_the_code_reads(template: dict[str, Any]) -> None:
    """Every variable the container gets is an ENV_* name of dispatch/core/constants.py,
    and together they make the Settings `dispatch run` builds (in the stack's region)."""
    container = _container(template)
    environment = {
        e["Name"]: _resolve(template, e["Value"], _parameters(template))
        for e in container["Environment"]
    }

    assert set(environment) <= _env_names_in_constants()
    assert "Secrets" not in container  # the execution role may read no secret
    settings = Settings.from_env(environment)
    assert settings.queue_url == SAMPLE_PARAMETERS["QueueUrl"]
    assert settings.dlq_url == SAMPLE_PARAMETERS["DeadLetterQueueUrl"]
    assert settings.table == SAMPLE_PARAMETERS["TableName"]
    assert settings.task_modules == ("dispatch.local.example.app",)
    assert settings.region == REGION


def _argv(template: dict[str, Any]) -> list[str]:
    container = _container(template)
    parameters = _parameters(template)
    return [
        str(_resolve(template, arg, parameters))
        for arg in container["EntryPoint"] + container["Command"]
    ]


def test_container_command_line_is_dispatch_run(template: dict[str, Any]) -> None:
    """EntryPoint + Command parse, with the real CLI, as `dispatch run` with the
    template's log level and --max-in-flight."""
    program, *args = _argv(template)
    assert program == "dispatch"

    split = args.index("run")  # the group's options before it, run's after

    context = cli.make_context("dispatch", [*args[:split], "run"])
    command = cli.get_command(context, "run")
    assert command is not None
    run_context = command.make_context("run", args[split + 1 :], parent=context)

    assert context.params["log_level"] == template["Parameters"]["LogLevel"]["Default"]
    assert run_context.params["max_in_flight"] == template["Parameters"]["MaxInFlight"]["Default"]
    assert run_context.params["finish_within_s"] == 62.0  # the default 60 s task, + 2


def test_dockerfile_runs_dispatch_run_on_python_313() -> None:
    """The image is python:3.13-slim with `dispatch run` as its entrypoint (the task
    definition's EntryPoint only adds the log options before `run`)."""
    lines = [
        line.strip()
        for line in DOCKERFILE_PATH.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    (entrypoint,) = [line for line in lines if line.upper().startswith("ENTRYPOINT ")]

    assert froms and all(image.startswith("python:3.13-slim") for image in froms)
    assert json.loads(entrypoint.split(None, 1)[1]) == ["dispatch", "run"]


def _health_check_exit(code: str, cmdline: bytes) -> int:
    """Run the health check's Python with ``/proc/1/cmdline`` reading ``cmdline``
    (a global ``open`` comes before the builtin)."""

    def fake_open(path: str, mode: str = "r") -> io.BytesIO:
        assert (path, mode) == ("/proc/1/cmdline", "rb")
        return io.BytesIO(cmdline)

    try:
        exec(compile(code, "<healthcheck>", "exec"), {"open": fake_open})  # noqa: S102 - the template's own check
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def test_health_check_accepts_the_dispatcher_and_nothing_else(template: dict[str, Any]) -> None:
    """The health check runs Python (in the image) and passes for PID 1 as the kernel
    shows the container's own command (the console script under its interpreter),
    and fails for any other PID 1."""
    check = _container(template)["HealthCheck"]
    kind, interpreter, flag, code = check["Command"]
    assert (kind, interpreter, flag) == ("CMD", "python", "-c")
    dispatcher = b"\0".join(
        [b"/usr/local/bin/python3.13", b"/usr/local/bin/dispatch"]
        + [arg.encode() for arg in _argv(template)[1:]]
    )

    assert _health_check_exit(code, dispatcher + b"\0") == 0
    assert _health_check_exit(code, b"/bin/sh\0-c\0sleep 1000\0") == 1
    assert _health_check_exit(code, b"/usr/local/bin/dispatch\0status\0") == 1
    assert check["StartPeriod"] >= 0


# --- draining ---------------------------------------------------------------------------------
def test_stop_timeout_lets_the_longest_task_finish_within_fargates_limit(
    template: dict[str, Any],
) -> None:
    """For every LongestTaskSeconds offered, stopTimeout (SIGTERM to SIGKILL) is at most
    Fargate's 120 s and leaves the task, its settlement and the worker pool's wait for a
    stuck thread their time; `--finish-within` releases what still runs after the
    longest task and before SIGKILL; the default covers a task with the default timeout."""
    parameter = template["Parameters"]["LongestTaskSeconds"]
    container = _container(template)
    assert container["StopTimeout"] == {
        "Fn::FindInMap": ["StopTimeouts", {"Ref": "LongestTaskSeconds"}, "Seconds"]
    }
    assert STOP_MARGIN_S >= SHUTDOWN_GRACE_S + 1
    finish_within = container["Command"][container["Command"].index("--finish-within") + 1]
    for longest in parameter["AllowedValues"]:
        parameters = _parameters(template, LongestTaskSeconds=longest)
        stop_s = _resolve(template, container["StopTimeout"], parameters)
        release_s = float(_resolve(template, finish_within, parameters))
        assert longest + STOP_MARGIN_S <= stop_s <= FARGATE_MAX_STOP_TIMEOUT_S, longest
        # Released after the longest task could have ended, and before SIGKILL with
        # time for the release and the worker pool's wait for stuck threads.
        assert longest < release_s <= stop_s - SHUTDOWN_GRACE_S - 1, longest
    assert parameter["Default"] >= DEFAULT_TIMEOUT_S


def test_deployments_start_new_dispatchers_before_stopping_old_ones(
    template: dict[str, Any],
) -> None:
    """A deployment keeps 100 % running while replacing, rolls back a failing one, and
    the stack sets no DesiredCount (Application Auto Scaling owns it)."""
    service = template["Resources"]["Service"]["Properties"]

    assert "DesiredCount" not in service
    assert service["DeploymentConfiguration"]["MinimumHealthyPercent"] == 100
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }


# --- scaling ----------------------------------------------------------------------------------
def test_scaling_alarms_watch_the_queue_the_parameters_name(template: dict[str, Any]) -> None:
    """Depth and age alarms add a dispatcher, the idle alarm removes one; all three watch
    the task queue named by QueueUrl (not the DLQ)."""
    resources = template["Resources"]
    parameters = _parameters(template)
    expected = {
        "BacklogAlarm": ("ApproximateNumberOfMessagesVisible", "ScaleOutPolicy"),
        "OldestMessageAlarm": ("ApproximateAgeOfOldestMessage", "ScaleOutPolicy"),
        "IdleAlarm": ("ApproximateNumberOfMessagesVisible", "ScaleInPolicy"),
    }
    alarms = {k: r for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == set(expected)
    for name, (metric, policy) in expected.items():
        alarm = _resolve(template, alarms[name]["Properties"], parameters)
        assert alarm["Namespace"] == "AWS/SQS"
        assert alarm["MetricName"] == metric
        assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": "dispatch-TaskQueue-AbC123"}]
        assert alarm["AlarmActions"] == [f"<{policy}>"]


def test_scaling_steps_point_the_right_way_between_min_and_max(template: dict[str, Any]) -> None:
    """Scale-out adds, scale-in removes, on the service's DesiredCount, with at least
    one dispatcher always running by default."""
    resources = template["Resources"]
    target = resources["ScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert target["ResourceId"] == {"Fn::Sub": "service/${Cluster}/${Service.Name}"}
    assert template["Parameters"]["MinCapacity"]["Default"] == 1
    assert template["Parameters"]["MinCapacity"]["MinValue"] >= 1
    for policy, sign in (("ScaleOutPolicy", 1), ("ScaleInPolicy", -1)):
        properties = resources[policy]["Properties"]
        assert properties["ScalingTargetId"] == {"Ref": "ScalableTarget"}
        steps = properties["StepScalingPolicyConfiguration"]["StepAdjustments"]
        assert steps and all(step["ScalingAdjustment"] * sign > 0 for step in steps)


def test_security_group_created_when_none_given_allows_no_inbound(
    template: dict[str, Any],
) -> None:
    """The security group the stack creates (SecurityGroupId empty) has no ingress rule."""
    group = template["Resources"]["SecurityGroup"]
    assert group["Condition"] == "CreateSecurityGroup"
    assert "SecurityGroupIngress" not in group["Properties"]
    assert template["Parameters"]["AssignPublicIp"]["AllowedValues"] == ["ENABLED", "DISABLED"]
