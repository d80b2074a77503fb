"""LongestTaskSeconds: the one template parameter every timeout follows.

CloudFormation has no arithmetic, so what follows from the parameter is spelled out
in the template: the worker's Timeout and the dispatcher's DISPATCH_WORKER_TIMEOUT_S
are the parameter itself, the dispatcher's timeout comes from a Mappings table when
DispatcherTimeout is 0, and Rules refuse an explicit DispatcherTimeout too short for
the longest attempt. These tests evaluate the template for every allowed value, as
CloudFormation would, and check the result against the dispatcher's own time budget
(:func:`dispatch.aws_lambda.handler.plan_invocation`), in both templates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dispatch.aws_lambda.handler import ENV_WORKER_TIMEOUT_S, LambdaOptions, plan_invocation
from dispatch.local.provision import load_template
from dispatch.loop.options import DispatcherOptions

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = (ROOT / "deploy" / "template.yaml", ROOT / "examples" / "myproject" / "template.yaml")
SQS_MAX_VISIBILITY_S = 43_200
LAMBDA_MAX_TIMEOUT_S = 900
# The least receiving an allowed run keeps: what the smallest DispatcherTimeout (90 s)
# has always left for 60 s tasks.
MIN_RECEIVE_S = 20.0


class _Stack:
    """The template with its parameters set: evaluates the intrinsic functions these
    timeouts use (Ref, Fn::If, Fn::Equals, Fn::Not, Fn::FindInMap, and Fn::Contains in
    Rules) and refuses any other, so a change the tests cannot follow fails loudly."""

    def __init__(self, template: dict[str, Any], **overrides: str) -> None:
        self.template = template
        self.parameters = {
            name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()
        }
        for name, value in overrides.items():
            assert value in _allowed(template, name), f"{name}={value} is not allowed"
            self.parameters[name] = value

    def value(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if not isinstance(value, dict) or len(value) != 1:
            return value
        ((key, arg),) = value.items()
        functions = {
            "Ref": lambda name: self.parameters[name],
            "Fn::If": self._if,
            "Fn::Equals": lambda pair: str(self.value(pair[0])) == str(self.value(pair[1])),
            "Fn::Not": lambda operand: not self.value(operand[0]),
            "Fn::FindInMap": self._find_in_map,
            "Fn::Contains": self._contains,
        }
        assert key in functions, f"these tests do not evaluate {key}"
        return functions[key](arg)

    def _if(self, arg: list[Any]) -> Any:
        condition, then, otherwise = arg
        return self.value(then if self.condition(condition) else otherwise)

    def _find_in_map(self, arg: list[Any]) -> Any:
        mapping, top, second = (str(self.value(a)) for a in arg)
        return self.template["Mappings"][mapping][top][second]

    def _contains(self, arg: list[Any]) -> bool:
        members, item = self.value(arg[0]), self.value(arg[1])
        return str(item) in {str(m) for m in members}

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def refusals(self) -> list[str]:
        """The AssertDescription of every rule assertion these parameters fail."""
        refused: list[str] = []
        for rule in (self.template.get("Rules") or {}).values():
            if "RuleCondition" in rule and not self.value(rule["RuleCondition"]):
                continue
            refused += [
                a["AssertDescription"] for a in rule["Assertions"] if not self.value(a["Assert"])
            ]
        return refused

    def function(self, name: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.template["Resources"][name]["Properties"]
        return properties

    @property
    def worker_timeout_s(self) -> int:
        return int(self.value(self.function("WorkerFunction")["Timeout"]))

    @property
    def dispatcher_timeout_s(self) -> int:
        return int(self.value(self.function("DispatcherFunction")["Timeout"]))

    @property
    def dispatcher_env(self) -> dict[str, str]:
        variables = self.function("DispatcherFunction")["Environment"]["Variables"]
        return {ENV_WORKER_TIMEOUT_S: str(self.value(variables[ENV_WORKER_TIMEOUT_S]))}

    @property
    def visibility_timeout_s(self) -> int:
        properties = self.template["Resources"]["TaskQueue"]["Properties"]
        return int(self.value(properties["VisibilityTimeout"]))


def _allowed(template: dict[str, Any], parameter: str) -> list[str]:
    return [str(v) for v in template["Parameters"][parameter]["AllowedValues"]]


def _receive_for_s(stack: _Stack) -> float:
    """How long a busy run of this stack's dispatcher receives, by the dispatcher's own
    plan: its options read from the environment the template gives it, the longest
    attempt as long as the worker allows, a throttled resource's horizon included."""
    options = LambdaOptions.from_env(stack.dispatcher_env)
    plan = plan_invocation(
        now=0.0,
        remaining_s=float(stack.dispatcher_timeout_s),
        longest_task_s=options.worker_timeout_s,
        throttle_horizon_s=DispatcherOptions().throttle_horizon_s,
        options=options,
    )
    assert plan.finish_by < plan.deadline
    return plan.receive_for_s


@pytest.fixture(scope="module", params=TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def template(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_template(request.param)


def _longest_task_values() -> list[str]:
    return _allowed(load_template(TEMPLATES[0]), "LongestTaskSeconds")


@pytest.mark.parametrize("longest", _longest_task_values())
def test_worker_timeout_and_what_the_dispatcher_is_told_are_the_longest_task(
    template: dict[str, Any], longest: str
) -> None:
    """Given a LongestTaskSeconds, the worker's Timeout and DISPATCH_WORKER_TIMEOUT_S
    (as the dispatcher reads it) are that number."""
    stack = _Stack(template, LongestTaskSeconds=longest)

    assert stack.worker_timeout_s == int(longest)
    assert LambdaOptions.from_env(stack.dispatcher_env).worker_timeout_s == stack.worker_timeout_s


@pytest.mark.parametrize("longest", _longest_task_values())
def test_queue_visibility_is_at_least_six_worker_timeouts(
    template: dict[str, Any], longest: str
) -> None:
    """AWS's rule for a queue in front of a function, visibility >= 6 x its timeout,
    holds for every LongestTaskSeconds, within SQS's 12-hour limit."""
    stack = _Stack(template, LongestTaskSeconds=longest)

    assert 6 * stack.worker_timeout_s <= stack.visibility_timeout_s <= SQS_MAX_VISIBILITY_S


@pytest.mark.parametrize("longest", _longest_task_values())
def test_the_followed_dispatcher_timeout_receives_for_most_of_a_run(
    template: dict[str, Any], longest: str
) -> None:
    """Given LongestTaskSeconds and DispatcherTimeout left at 0, the dispatcher runs
    the mapped time, within Lambda's 900 s, and receives for at least 200 s of it."""
    stack = _Stack(template, LongestTaskSeconds=longest)

    assert stack.condition("DispatcherTimeoutFollowsLongestTask")
    assert stack.refusals() == []
    assert stack.dispatcher_timeout_s <= LAMBDA_MAX_TIMEOUT_S
    assert _receive_for_s(stack) >= 200.0


@pytest.mark.parametrize("longest", _longest_task_values())
def test_rules_refuse_exactly_the_dispatcher_timeouts_too_short_to_receive(
    template: dict[str, Any], longest: str
) -> None:
    """Given LongestTaskSeconds, an explicit DispatcherTimeout passes the template's
    Rules exactly when the dispatcher's plan still receives for MIN_RECEIVE_S, so the
    smallest one accepted leaves a positive receive window and an impossible pair
    fails at deploy time with a message naming both parameters."""
    accepted: list[int] = []
    for timeout in _allowed(template, "DispatcherTimeout"):
        if timeout == "0":
            continue
        stack = _Stack(template, LongestTaskSeconds=longest, DispatcherTimeout=timeout)
        assert stack.dispatcher_timeout_s == int(timeout)
        refusals = stack.refusals()
        receives_enough = _receive_for_s(stack) >= MIN_RECEIVE_S

        assert (refusals == []) is receives_enough, (timeout, refusals)
        if receives_enough:
            accepted.append(int(timeout))
        for description in refusals:
            assert "LongestTaskSeconds" in description
            assert "DispatcherTimeout" in description
    smallest = _Stack(template, LongestTaskSeconds=longest, DispatcherTimeout=str(min(accepted)))
    assert _receive_for_s(smallest) > 0


def test_the_default_deploys_todays_timeouts(template: dict[str, Any]) -> None:
    """Left at its defaults, the stack is what it was before LongestTaskSeconds: a 60 s
    worker the dispatcher knows of, and a 300 s dispatcher run."""
    stack = _Stack(template)

    assert stack.worker_timeout_s == 60
    assert stack.dispatcher_env == {ENV_WORKER_TIMEOUT_S: "60"}
    assert stack.dispatcher_timeout_s == 300


def test_the_largest_longest_task_leaves_a_usable_dispatcher_within_lambdas_limit(
    template: dict[str, Any],
) -> None:
    """The largest LongestTaskSeconds still allows a dispatcher run, at most Lambda's
    900 s, that receives: the dispatcher must outlive the attempts it waits for."""
    largest = max(_allowed(template, "LongestTaskSeconds"), key=int)
    stack = _Stack(
        template, LongestTaskSeconds=largest, DispatcherTimeout=str(LAMBDA_MAX_TIMEOUT_S)
    )

    assert stack.refusals() == []
    assert _receive_for_s(stack) >= MIN_RECEIVE_S
