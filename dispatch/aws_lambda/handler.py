"""The dispatcher Lambda: one scheduled invocation of the dispatcher loop.

EventBridge invokes it on a schedule (``rate(1 minute)`` by default). Each
invocation:

1. **Idle check.** One ``GetQueueAttributes``: nothing visible → return at once.
   An idle queue costs one SQS request and a few hundred milliseconds of Lambda
   per tick (docs/deploy.md has the measured figures).
2. **Lease.** Takes one of ``DISPATCH_LEASE_CAP`` slots in the state table
   (:mod:`dispatch.aws_lambda.slots`) until the invocation's deadline; all slots held →
   return.
3. **Loop.** Runs :class:`~dispatch.loop.dispatcher.Dispatcher` until the queue is
   drained or receiving must stop: early enough that an attempt started at the
   last moment (the longest task timeout, plus the throttle's horizon) still
   ends and is settled before ``context.get_remaining_time_in_millis()`` runs
   out. Whatever has not finished by the deadline less ``release_margin_s`` is
   released (visible again at once, attempt given back).
   Attempts run on the worker function through
   :class:`~dispatch_workers.lambda_invoker.LambdaInvoker` (or in this process when no
   worker function is configured).
4. **Scale out.** Under a backlog that one dispatcher cannot take and the
   throttle has room for, it starts one more dispatcher invocation
   (``InvocationType=Event``), which takes its own lease, up to the cap.
5. **Hand over.** When receiving stops because the run's time is up while
   messages are still visible, it gives its slot back and starts the next
   dispatcher at once, then finishes what it holds: a busy queue is never left
   to the next tick.
6. **Report.** Releases the lease, logs, prints an Embedded Metric Format
   record (throttle wait, outcomes) that CloudWatch turns into the metrics the
   template's alarms watch, and returns a summary.

Nothing is created at import time: clients are made inside each invocation.

Every AWS operation the function may send is declared in :data:`DISPATCHER_GRANTS`
(and :data:`WORKER_GRANTS` for the worker: none). The clients enforce it (a call
outside it fails, locally too), and the template's IAM policies are tested to
grant exactly these, so local runs and the deployed permissions cannot drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.aws_lambda.slots import DEFAULT_LEASE_CAP, Lease, Leases
from dispatch.core import constants as c
from dispatch.core.config import Settings, queue_name
from dispatch.core.errors import ConfigurationError, DispatchError
from dispatch.loop.dispatcher import Dispatcher, DispatcherOptions, RunStats
from dispatch.store import awake
from dispatch.store.aws import (
    RequestCounter,
    aio_client_config,
    async_client,
    async_clients,
    aws_errors,
)
from dispatch.store.aws_retry import INVOKE_RETRY
from dispatch.store.conditional import is_condition_failure
from dispatch.tasks.registry import DEFAULT_TIMEOUT_S, Registry, default_registry
from dispatch.throttle.limits import ThrottleSnapshot

if TYPE_CHECKING:
    from types_aiobotocore_lambda import LambdaClient

    from dispatch_workers.pool import TaskRunner

__all__ = [
    "DISPATCHER_GRANTS",
    "WORKER_GRANTS",
    "DispatcherHandler",
    "Grant",
    "LambdaOptions",
    "PermissionGuard",
    "Plan",
    "apply_resource_limits",
    "parse_resource_limits",
    "emf_record",
    "handler",
    "iam_action",
    "make_handler",
    "plan_invocation",
    "should_scale_out",
]

log = structlog.get_logger("dispatch.aws_lambda.handler")

# --- configuration (environment variables the template sets) ----------------------------
ENV_WORKER_FUNCTION: Final = "DISPATCH_WORKER_FUNCTION"
ENV_WORKER_TIMEOUT_S: Final = "DISPATCH_WORKER_TIMEOUT_S"
ENV_LEASE_CAP: Final = "DISPATCH_LEASE_CAP"
ENV_BATCH_SIZE: Final = "DISPATCH_BATCH_SIZE"
ENV_INVOKE_CONCURRENCY: Final = "DISPATCH_INVOKE_CONCURRENCY"
ENV_MAX_IN_FLIGHT: Final = "DISPATCH_MAX_IN_FLIGHT"
ENV_SCALE_OUT_FUNCTION: Final = "DISPATCH_SCALE_OUT_FUNCTION"
ENV_LINGER_S: Final = "DISPATCH_LINGER_S"  # responsive mode: receive this long after the last task
ENV_EMIT_METRICS: Final = "DISPATCH_EMIT_METRICS"
ENV_LOG_LEVEL: Final = "DISPATCH_LOG_LEVEL"
ENV_RESOURCE_LIMITS: Final = c.ENV_RESOURCE_LIMITS
ENV_LAMBDA_ENDPOINT_URL: Final = "AWS_ENDPOINT_URL_LAMBDA"  # the AWS SDKs' own variable
ENV_IN_LAMBDA: Final = "AWS_LAMBDA_FUNCTION_NAME"  # set by the Lambda runtime
METRICS_NAMESPACE: Final = "Dispatch"

# Each attempt's Invoke may take the worker's whole timeout; the read timeout is longer.
_INVOKE_READ_SLACK_S: Final = 10.0
_INVOKE_CONNECT_TIMEOUT_S: Final = 5


@dataclass(frozen=True, slots=True)
class LambdaOptions:
    """The dispatcher function's settings beyond :class:`~dispatch.core.config.Settings`."""

    worker_function: str | None = None  # name or ARN (an alias) of the worker; None: in-process
    worker_timeout_s: float = DEFAULT_TIMEOUT_S  # the worker function's timeout
    lease_cap: int = DEFAULT_LEASE_CAP  # dispatchers per queue at once
    batch_size: int = 10  # attempts per worker invocation (micro-batch); 1: no batching
    invoke_concurrency: int = 16  # worker invocations in flight per dispatcher
    max_in_flight: int = 64  # messages one dispatcher holds at once
    scale_out_function: str | None = None  # what to invoke to start another dispatcher
    lambda_endpoint_url: str | None = None  # a local Invoke endpoint (dispatch dev --lambda)
    emit_metrics: bool = False  # print an Embedded Metric Format record per invocation
    resource_limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    settle_margin_s: float = 3.0  # kept after the last attempt ends, to settle it
    release_margin_s: float = 2.0  # kept at the very end, to release what did not finish
    drain_wait_s: int = 2  # long-poll length once the queue looks drained
    scale_out_after_s: float = 3.0  # run this long before deciding to scale out
    linger_s: float = 0.0  # responsive mode: keep receiving this long after the last task

    def __post_init__(self) -> None:
        if self.worker_timeout_s <= 0:
            raise ConfigurationError(
                f"{ENV_WORKER_TIMEOUT_S}={self.worker_timeout_s}: must be > 0",
                setting=ENV_WORKER_TIMEOUT_S,
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LambdaOptions:
        """Read the ``DISPATCH_*`` variables of the function; absent ones keep their default."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            worker_function=env.get(ENV_WORKER_FUNCTION) or None,
            worker_timeout_s=_env_number(env, ENV_WORKER_TIMEOUT_S, defaults.worker_timeout_s),
            lease_cap=int(_env_number(env, ENV_LEASE_CAP, defaults.lease_cap)),
            batch_size=int(_env_number(env, ENV_BATCH_SIZE, defaults.batch_size)),
            invoke_concurrency=int(
                _env_number(env, ENV_INVOKE_CONCURRENCY, defaults.invoke_concurrency)
            ),
            max_in_flight=int(_env_number(env, ENV_MAX_IN_FLIGHT, defaults.max_in_flight)),
            scale_out_function=env.get(ENV_SCALE_OUT_FUNCTION) or None,
            lambda_endpoint_url=env.get(ENV_LAMBDA_ENDPOINT_URL) or None,
            emit_metrics=(env.get(ENV_EMIT_METRICS) or ("1" if env.get(ENV_IN_LAMBDA) else "0"))
            in ("1", "true", "yes"),
            resource_limits=parse_resource_limits(env.get(ENV_RESOURCE_LIMITS) or "{}"),
            linger_s=_env_number(env, ENV_LINGER_S, defaults.linger_s),
        )


def parse_resource_limits(raw: str) -> dict[str, dict[str, Any]]:
    """``DISPATCH_RESOURCE_LIMITS``: a JSON object of resource name -> limit fields."""
    try:
        limits = json.loads(raw)
    except ValueError:
        limits = None
    if not isinstance(limits, dict) or not all(isinstance(v, dict) for v in limits.values()):
        raise ConfigurationError(
            f"{ENV_RESOURCE_LIMITS}={raw!r}: expected a JSON object of resource name -> "
            '{"rate_per_s": ..., "burst": ..., "max_concurrency": ...}',
            setting=ENV_RESOURCE_LIMITS,
        )
    return {str(k): dict(v) for k, v in limits.items()}


_LIMIT_FIELDS: Final = frozenset({"rate_per_s", "burst", "max_concurrency", "min_rate_per_s"})


def apply_resource_limits(registry: Registry, limits: Mapping[str, Mapping[str, Any]]) -> Registry:
    """A registry whose tasks' resources carry the limits set per deployment.

    ``limits`` maps a resource name to new values of ``rate_per_s``, ``burst``,
    ``max_concurrency`` or ``min_rate_per_s``; a new rate without a burst gets
    the default burst of that rate. A name no task uses, or another field, is a
    ConfigurationError (a typo must not silently leave a resource unprotected).
    """
    if not limits:
        return registry
    used = {spec.resource.name for spec in registry.specs() if spec.resource is not None}
    unknown = sorted(set(limits) - used)
    if unknown:
        raise ConfigurationError(
            f"{ENV_RESOURCE_LIMITS} names resources no task uses: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(used)) or 'none'})",
            setting=ENV_RESOURCE_LIMITS,
        )
    limited = Registry()
    for original in registry.specs():
        spec = original
        fields = limits.get(spec.resource.name) if spec.resource is not None else None
        if spec.resource is not None and fields:
            bad = sorted(set(fields) - _LIMIT_FIELDS)
            if bad:
                raise ConfigurationError(
                    f"{ENV_RESOURCE_LIMITS}: {spec.resource.name}: unknown field(s) {bad}",
                    setting=ENV_RESOURCE_LIMITS,
                )
            changes = dict(fields)
            if "rate_per_s" in changes and "burst" not in changes:
                changes["burst"] = None
            spec = dataclasses.replace(spec, resource=dataclasses.replace(spec.resource, **changes))
        limited.register(spec)
    return limited


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number", setting=name) from None


# --- the time budget -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    """When one invocation stops receiving, and when it releases what is left."""

    deadline: float  # epoch s: the invocation ends here
    receive_for_s: float  # receive for this long from the start (0: no time to run anything)
    finish_by: float  # epoch s: release whatever still runs


def plan_invocation(
    *,
    now: float,
    remaining_s: float,
    longest_task_s: float,
    throttle_horizon_s: float,
    options: LambdaOptions,
) -> Plan:
    """Stop receiving early enough that an attempt received at the last moment,
    waiting up to the throttle's horizon and running its whole timeout, is
    settled before the deadline; release the rest just before it."""
    deadline = now + remaining_s
    receive_for_s = (
        remaining_s
        - options.release_margin_s
        - options.settle_margin_s
        - longest_task_s
        - throttle_horizon_s
    )
    return Plan(
        deadline=deadline,
        receive_for_s=max(0.0, receive_for_s),
        finish_by=deadline - options.release_margin_s,
    )


# --- the permissions the code uses --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Grant:
    """Operations the code sends to one resource of the template (by logical id)."""

    service: str  # botocore's service name: "sqs", "dynamodb", "lambda"
    operations: frozenset[str]  # API operation names, as botocore names them
    resource: str  # the template's logical id
    why: str


def _grant(service: str, resource: str, why: str, *operations: str) -> Grant:
    return Grant(service=service, operations=frozenset(operations), resource=resource, why=why)


TASK_QUEUE: Final = "TaskQueue"
DEAD_LETTER_QUEUE: Final = "DeadLetterQueue"
STATE_TABLE: Final = "StateTable"
WORKER_FUNCTION: Final = "WorkerFunction"
DISPATCHER_FUNCTION: Final = "DispatcherFunction"

DISPATCHER_GRANTS: Final[tuple[Grant, ...]] = (
    _grant(
        "sqs",
        TASK_QUEUE,
        "the loop: receive, settle in batches, send back long delays and deferrals, "
        "enqueue periodic tasks; the idle check and the drain check; a group's callback",
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "SendMessageBatch",
        "SendMessage",
        "GetQueueAttributes",
    ),
    _grant("sqs", DEAD_LETTER_QUEUE, "dead letters carry the failure", "SendMessageBatch"),
    _grant(
        "dynamodb",
        STATE_TABLE,
        "task records (claims, transitions, periodic tasks' idempotent records), shared "
        "throttle buckets and slots, throttle status, dispatcher leases; claims and "
        "successes in batches of PartiQL UPDATEs, and the probe that checks them first; "
        "the joins of groups (their children's results read in batches)",
        "BatchExecuteStatement",
        "UpdateItem",
        "GetItem",
        "BatchGetItem",
        "PutItem",
        "BatchWriteItem",
        "DeleteItem",
    ),
    _grant("lambda", WORKER_FUNCTION, "fan-out of attempts (RequestResponse)", "Invoke"),
    _grant("lambda", DISPATCHER_FUNCTION, "scale out, hand over (Event)", "Invoke"),
)
"""Every AWS operation the dispatcher function sends, on which resource."""

WORKER_GRANTS: Final[tuple[Grant, ...]] = ()
"""The worker function sends no AWS request at all (its tasks' own calls are the
user's to grant: attach policies to the worker's role)."""

# IAM authorizes a batch operation with the action of the single one.
_IAM_ACTIONS: Final = {
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    # PartiQL is authorized by statement kind; Dispatch's batches are UPDATEs only.
    ("dynamodb", "BatchExecuteStatement"): "dynamodb:PartiQLUpdate",
}


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorizes ``operation`` (``sqs:SendMessage`` for SendMessageBatch)."""
    return _IAM_ACTIONS.get((service, operation), f"{service}:{operation}")


def iam_grants(grants: Iterable[Grant]) -> set[tuple[str, str]]:
    """``(IAM action, logical id)`` pairs: what the template's policies must allow."""
    return {(iam_action(g.service, op), g.resource) for g in grants for op in g.operations}


class PermissionGuard:
    """Refuses, before it is sent, any request outside the declared grants.

    ``resources`` maps each physical name (queue URL, table name, function name
    or ARN as the code passes it) to the template's logical id.
    """

    def __init__(self, grants: Iterable[Grant], resources: Mapping[str, str]) -> None:
        self._allowed = {(g.service, op, g.resource) for g in grants for op in g.operations}
        self._resources = dict(resources)

    def attach(self, client: Any) -> None:
        """Check every request ``client`` builds from now on (boto3 or aiobotocore)."""
        client.meta.events.register("before-parameter-build", self._check)

    def _check(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        service = str(model.service_model.service_name)
        operation = str(model.name)
        for physical in _resources_named(params):
            logical = self._resources.get(physical)
            if (service, operation, logical) not in self._allowed:
                raise ConfigurationError(
                    f"{service}:{operation} on {physical} ({logical or 'not a Dispatch resource'}) "
                    "is not declared in dispatch.aws_lambda.handler.DISPATCHER_GRANTS; declare it "
                    "there and grant it in deploy/template.yaml"
                )


def _resources_named(params: Mapping[str, Any]) -> list[str]:
    for key in ("QueueUrl", "TableName", "FunctionName"):
        if key in params:
            return [str(params[key])]
    if "RequestItems" in params:  # BatchWriteItem, BatchGetItem
        return [str(name) for name in params["RequestItems"]]
    if "Statements" in params:  # BatchExecuteStatement: each statement names its table
        named = [_STATEMENT_TABLE.match(str(s.get("Statement", ""))) for s in params["Statements"]]
        return [m.group(1) if m else "<no resource>" for m in named] or ["<no resource>"]
    return ["<no resource>"]


_STATEMENT_TABLE: Final = re.compile(r'\s*(?:UPDATE|SELECT\s.*?\sFROM)\s+"([^"]+)"', re.I | re.S)


# --- scaling out -------------------------------------------------------------------------
def should_scale_out(
    *,
    stats: RunStats,
    snapshots: Iterable[ThrottleSnapshot],
    max_in_flight: int,
) -> bool:
    """True when this dispatcher is full while the throttle still has room.

    Full: it held as many messages as it may. Room: no message was deferred
    because a resource could not start it, no backpressure was seen, and no
    resource is at its concurrency cap or running below its configured rate.
    (The caller then checks that the queue really has a backlog.)
    """
    if stats.peak_in_flight < max_in_flight or stats.deferred or stats.backpressure:
        return False
    for snapshot in snapshots:
        if snapshot.max_concurrency is not None and snapshot.in_flight >= snapshot.max_concurrency:
            return False
        if (
            snapshot.configured_rate_per_s is not None
            and snapshot.effective_rate_per_s is not None
            and snapshot.effective_rate_per_s < snapshot.configured_rate_per_s
        ):
            return False
    return True


# --- metrics --------------------------------------------------------------------------------
def emf_record(*, queue: str, stats: RunStats, requests: int, timestamp_s: float) -> dict[str, Any]:
    """One CloudWatch Embedded Metric Format record per invocation that ran the loop.

    ``ThrottleWait`` by ``Queue`` is the time this invocation's tasks waited for
    any resource (the dispatcher's own records give it by ``Resource``); the
    template's throttle-wait alarm reads it, as resource names are not known
    when the stack is deployed. ``AwsRequests`` is what the invocation sent.
    """
    values: dict[str, tuple[float, str]] = {
        "ThrottleWait": (round(stats.throttle_wait_s, 3), "Seconds"),
        "AwsRequests": (requests, "Count"),
    }
    return {
        "_aws": {
            "Timestamp": int(timestamp_s * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": METRICS_NAMESPACE,
                    "Dimensions": [["Queue"]],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
                }
            ],
        },
        "Queue": queue,
        **{name: value for name, (value, _) in values.items()},
    }


# --- the handler ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Invocation:
    """One invocation's inputs, worked out once at its start, and the summary it fills in."""

    settings: Settings
    options: LambdaOptions
    registry: Registry  # with the deployment's resource limits applied
    context: Any  # the Lambda context: the deadline moves with it
    started: float  # epoch s
    remaining_s: float  # the time the invocation had when it started
    request_id: str
    scale_out_target: str | None  # the function to invoke to start another dispatcher
    woken: bool  # a producer woke it (responsive mode), or the previous run handed over:
    # a task was just enqueued, or the queue was just seen busy
    counter: RequestCounter
    guard: PermissionGuard
    summary: dict[str, Any]


class DispatcherHandler:
    """The Lambda handler callable: ``handler(event, context) -> summary``."""

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        grants: tuple[Grant, ...] = DISPATCHER_GRANTS,
        options: LambdaOptions | None = None,
    ) -> None:
        self._registry = default_registry if registry is None else registry
        self._options = options
        self._environ = environ
        self._clock = clock
        self._grants = grants

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        """Run one invocation (a fresh event loop each time; Lambda's handler is sync)."""
        env = os.environ if self._environ is None else self._environ
        if env.get(ENV_IN_LAMBDA) and not structlog.is_configured():
            from dispatch.core.logs import configure_logging

            configure_logging(level=env.get(ENV_LOG_LEVEL) or "INFO", json=True)
        return asyncio.run(self.invoke(event, context))

    async def invoke(self, event: Any, context: Any) -> dict[str, Any]:
        """One invocation: idle check, lease, loop, scale out, report."""
        run = self._begin(event, context)
        stats: RunStats | None = None
        try:
            stats = await self._run(run)
        finally:
            self._log_summary(run)
        if run.options.emit_metrics and stats is not None:
            record = emf_record(
                queue=run.summary["queue"],
                stats=stats,
                requests=run.counter.total(),
                timestamp_s=self._clock(),
            )
            print(json.dumps(record), flush=True)  # EMF records go to stdout
        return run.summary

    def _begin(self, event: Any, context: Any) -> _Invocation:
        """Read the settings, import the task modules, and note the time this invocation has."""
        env = os.environ if self._environ is None else self._environ
        settings = Settings.from_env(env)
        options = self._options or LambdaOptions.from_env(env)
        self._registry.import_modules(settings.task_modules)
        registry = apply_resource_limits(self._registry, options.resource_limits)
        started = self._clock()
        scale_out_target = options.scale_out_function or getattr(
            context, "invoked_function_arn", None
        )
        summary: dict[str, Any] = {"queue": queue_name(settings.queue_url), "outcome": "idle"}
        if _is_scale_out(event):
            summary["scaled_out_by"] = event["dispatch"]["scale_out"]
        woken = _is_wake(event)
        if woken:
            summary["woken"] = True
        if _is_hand_over(event):
            summary["handed_over_by"] = event["dispatch"]["hand_over"]
            woken = True
        return _Invocation(
            settings=settings,
            options=options,
            registry=registry,
            context=context,
            started=started,
            remaining_s=context.get_remaining_time_in_millis() / 1000.0,
            request_id=str(getattr(context, "aws_request_id", "") or uuid.uuid4().hex),
            scale_out_target=scale_out_target,
            woken=woken,
            counter=RequestCounter(),
            guard=PermissionGuard(
                self._grants,
                _physical_resources(settings, options.worker_function, scale_out_target),
            ),
            summary=summary,
        )

    async def _run(self, run: _Invocation) -> RunStats | None:
        """Idle check, lease, loop; None when the queue was idle, every slot was held or
        the invocation was too short to run anything."""
        async with AsyncExitStack() as stack:
            clients = await stack.enter_async_context(
                async_clients(run.settings, counter=run.counter)
            )
            run.guard.attach(clients.sqs)
            run.guard.attach(clients.dynamodb)
            # A woken dispatcher skips the idle check: the task that woke it was just
            # sent, and the queue's counters lag behind a send (a handed-over one: the
            # run before it just saw messages visible).
            if not run.woken and await _visible_messages(clients.sqs, run.settings.queue_url) == 0:
                return None
            leases = Leases(
                clients.dynamodb,
                run.settings.table,
                queue_url=run.settings.queue_url,
                cap=run.options.lease_cap,
                clock=self._clock,
            )
            lease = await leases.acquire(holder=run.request_id, until=run.started + run.remaining_s)
            if lease is None:
                run.summary["outcome"] = "lease_busy"
                return None
            run.summary["lease_slot"] = lease.slot
            slot = _Slot(leases, lease)
            try:
                lambda_client = await _open_lambda_client(stack, run)
                return await self._loop(
                    run, clients=clients, lambda_client=lambda_client, slot=slot
                )
            finally:
                await slot.release()

    def _log_summary(self, run: _Invocation) -> None:
        """Log the summary, with the requests the invocation sent and its wall time."""
        summary = run.summary
        summary["requests"] = {f"{s}.{a}": n for (s, a), n in run.counter.snapshot().items()}
        summary["wall_s"] = round(self._clock() - run.started, 3)
        # An idle tick every minute is not news: it logs at debug (log volume is cost).
        report = log.debug if summary["outcome"] == "idle" else log.info
        report("dispatcher_invocation", **summary)

    async def _loop(
        self,
        run: _Invocation,
        *,
        clients: Any,
        lambda_client: LambdaClient | None,
        slot: _Slot,
    ) -> RunStats | None:
        """Run the dispatcher until the queue is drained or the time budget ends."""
        dispatcher_options = DispatcherOptions(
            max_in_flight=run.options.max_in_flight,
            drain_wait_time_s=run.options.drain_wait_s,
            linger_s=run.options.linger_s,
        )
        runner = self._runner(run.options, lambda_client)
        plan = _plan(run, dispatcher_options)
        if plan.receive_for_s <= 0:
            _warn_too_short(run)
            run.summary["outcome"] = "too_short"
            await runner.aclose()
            return None
        dispatcher = Dispatcher(
            run.settings,
            clients=clients,
            registry=run.registry,
            runner=runner,
            options=dispatcher_options,
            clock=self._clock,
        )
        watches = self._watches(
            dispatcher, run=run, plan=plan, clients=clients, lambda_client=lambda_client
        )
        hand_over = (
            asyncio.create_task(
                _hand_over(dispatcher, run=run, slot=slot, sqs=clients.sqs, client=lambda_client)
            )
            if lambda_client is not None
            else None
        )
        try:
            stats = await dispatcher.run(
                until_empty=True, for_s=plan.receive_for_s, finish_by=plan.finish_by
            )
        finally:
            for watch in watches:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            if hand_over is not None:  # receiving has ended: it decides, then returns
                await hand_over
            await _close_runner(runner, grace_s=plan.deadline - self._clock() - 1.0)
        _record_run(run.summary, stats, runner)
        return stats

    def _watches(
        self,
        dispatcher: Dispatcher,
        *,
        run: _Invocation,
        plan: Plan,
        clients: Any,
        lambda_client: LambdaClient | None,
    ) -> list[asyncio.Task[None]]:
        """What runs beside the loop until it returns: the deadline and scale-out watch,
        and in the responsive mode the awake promise."""
        watches = [
            asyncio.create_task(
                self._watch(
                    dispatcher, run=run, plan=plan, clients=clients, lambda_client=lambda_client
                )
            )
        ]
        if run.options.linger_s > 0:
            watches.append(
                asyncio.create_task(
                    self._keep_promise(dispatcher, run=run, plan=plan, clients=clients)
                )
            )
        return watches

    def _runner(self, options: LambdaOptions, lambda_client: LambdaClient | None) -> TaskRunner:
        if options.worker_function and lambda_client is not None:
            from dispatch_workers.lambda_invoker import InvokerOptions, LambdaInvoker

            return LambdaInvoker(
                lambda_client,
                function_name=options.worker_function,
                options=InvokerOptions(
                    max_concurrency=options.invoke_concurrency, batch_size=options.batch_size
                ),
            )
        from dispatch_workers.pool import WorkerPool

        return WorkerPool(max_workers=options.max_in_flight)

    async def _keep_promise(
        self, dispatcher: Dispatcher, *, run: _Invocation, plan: Plan, clients: Any
    ) -> None:
        """Responsive mode: tell producers until when this dispatcher surely receives
        (its last task + the linger, within its receiving time), so that they wake no
        other (dispatch.store.awake). The run ends no earlier than any promise made."""
        settings, written = run.settings, 0.0
        receive_end = run.started + plan.receive_for_s
        while True:
            until = min(dispatcher.last_work_at + run.options.linger_s, receive_end)
            if until > written + 1.0:
                params = awake.promise_params(
                    settings.table, settings.queue_url, until=until, holder=run.request_id
                )
                try:
                    await clients.dynamodb.put_item(**params)
                    written = until
                except ClientError as exc:
                    if not is_condition_failure(exc):  # refused: a later promise stands
                        log.warning("awake_promise_failed", error=str(exc))
                    written = until
                except BotoCoreError as exc:
                    log.warning("awake_promise_failed", error=str(exc))
            await asyncio.sleep(1.0)

    async def _watch(
        self,
        dispatcher: Dispatcher,
        *,
        run: _Invocation,
        plan: Plan,
        clients: Any,
        lambda_client: LambdaClient | None,
    ) -> None:
        """Stop the loop if the deadline comes earlier than planned; scale out once."""
        scale_out_at = self._clock() + run.options.scale_out_after_s
        may_scale_out = run.options.lease_cap > 1
        while True:
            await asyncio.sleep(0.5)
            now = self._clock()
            if now + run.context.get_remaining_time_in_millis() / 1000.0 < plan.deadline - 1.0:
                log.warning("deadline_moved_earlier", stopping=True)
                dispatcher.stop()
                return
            if (
                may_scale_out
                and now >= scale_out_at
                and lambda_client is not None
                and run.scale_out_target is not None
            ):
                may_scale_out = False
                await _scale_out(
                    dispatcher,
                    run=run,
                    sqs=clients.sqs,
                    lambda_client=lambda_client,
                    target=run.scale_out_target,
                )


async def _open_lambda_client(stack: AsyncExitStack, run: _Invocation) -> LambdaClient | None:
    """The Lambda client, when there is a worker function to invoke or another dispatcher
    to start (scale out, hand over; closed with ``stack``); None when there is neither."""
    options = run.options
    if not (options.worker_function or run.scale_out_target):
        return None
    lambda_client: LambdaClient = await stack.enter_async_context(
        _lambda_client(run.settings, options)
    )
    run.counter.attach(lambda_client)
    run.guard.attach(lambda_client)
    return lambda_client


def _plan(run: _Invocation, dispatcher_options: DispatcherOptions) -> Plan:
    """The invocation's time budget, from the time it has and its longest task."""
    return plan_invocation(
        now=run.started,
        remaining_s=run.remaining_s,
        longest_task_s=_longest_task_s(run.registry, run.options),
        # A task of a throttled resource may wait up to the horizon before it starts.
        throttle_horizon_s=(
            dispatcher_options.throttle_horizon_s
            if any(spec.resource is not None for spec in run.registry.specs())
            else 0.0
        ),
        options=run.options,
    )


def _warn_too_short(run: _Invocation) -> None:
    log.warning(
        "invocation_too_short",
        remaining_s=round(run.remaining_s, 1),
        longest_task_s=_longest_task_s(run.registry, run.options),
        hint="raise the dispatcher function's timeout above the longest task timeout "
        "plus about 15 s",
    )


async def _close_runner(runner: TaskRunner, *, grace_s: float) -> None:
    """Close the runner within what is left of the invocation: a stuck sync handler's
    thread is abandoned at the deadline, never waited for past it."""
    from dispatch_workers.pool import WorkerPool

    if isinstance(runner, WorkerPool):
        await runner.aclose(grace_s=max(0.0, grace_s))
    else:
        await runner.aclose()


def _record_run(summary: dict[str, Any], stats: RunStats, runner: TaskRunner) -> None:
    """Put what the loop did (and the worker invocations it made, if any) in the summary."""
    summary["outcome"] = "ran"
    summary.update(
        received=stats.received,
        succeeded=stats.succeeded,
        retried=stats.retried,
        backpressure=stats.backpressure,
        dead=stats.dead,
        released=stats.released,
        deferred=stats.deferred,
        throttle_wait_s=round(stats.throttle_wait_s, 3),
    )
    if runner.stuck_threads:
        summary["stuck_threads"] = runner.stuck_threads
    invoker_stats = getattr(runner, "stats", None)
    if invoker_stats is not None:
        summary["worker_invocations"] = invoker_stats.invocations
        summary["worker_throttled"] = invoker_stats.throttled


async def _scale_out(
    dispatcher: Dispatcher,
    *,
    run: _Invocation,
    sqs: Any,
    lambda_client: LambdaClient,
    target: str,
) -> None:
    """Start one more dispatcher when this one is full, the throttle has room and the
    queue has a backlog it cannot take alone."""
    if not should_scale_out(
        stats=dispatcher.stats,
        snapshots=dispatcher.throttle_snapshots(),
        max_in_flight=run.options.max_in_flight,
    ):
        return
    try:
        backlog = await _visible_messages(sqs, dispatcher.settings.queue_url)
        if backlog >= run.options.max_in_flight:
            await _start_dispatcher(lambda_client, target, run.request_id)
            run.summary["scaled_out"] = True
            log.info("scaled_out", backlog=backlog, target=target)
    except DispatchError:
        # Scaling out is an optimisation: this invocation carries on alone.
        log.warning("scale_out_failed", target=target, exc_info=True)


class _Slot:
    """The lease slot an invocation holds: given back once, at the hand-over or the end."""

    def __init__(self, leases: Leases, lease: Lease) -> None:
        self._leases = leases
        self._lease = lease
        self._released = False

    async def release(self) -> None:
        """Give the slot back (nothing the second time)."""
        if not self._released:
            self._released = True
            await self._leases.release(self._lease)


async def _hand_over(
    dispatcher: Dispatcher,
    *,
    run: _Invocation,
    slot: _Slot,
    sqs: Any,
    client: LambdaClient,
) -> None:
    """Once receiving ends because the run's time is up while messages are still
    visible, give the slot back and start the next dispatcher at once (``Invoke``,
    ``Event``), instead of leaving the queue to the next tick while this run finishes
    what it holds. A run that drained the queue, or was stopped, hands over nothing."""
    await dispatcher.receiving_ended.wait()
    target = run.scale_out_target
    if dispatcher.receive_ended_by != "deadline" or target is None:
        return
    try:
        backlog = await _visible_messages(sqs, dispatcher.settings.queue_url)
        if backlog == 0:
            return
        await slot.release()
        await _start_dispatcher(client, target, run.request_id, kind="hand_over")
    except DispatchError:
        # The next tick (or a producer's wake) starts the next run instead.
        log.warning("hand_over_failed", target=target, exc_info=True)
        return
    run.summary["handed_over"] = True
    log.info("handed_over", backlog=backlog, target=target)


def make_handler(
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    options: LambdaOptions | None = None,
) -> Callable[[Any, Any], dict[str, Any]]:
    """A dispatcher handler on ``registry`` (default: the default registry, with the
    modules named by ``DISPATCH_TASKS``) reading its settings from ``environ``
    (``options``, when given, replace the ``DISPATCH_*`` function settings)."""
    return DispatcherHandler(registry=registry, environ=environ, clock=clock, options=options)


handler = make_handler()
"""The entry point the SAM template names: ``dispatch.aws_lambda.handler.handler``."""


# --- helpers ------------------------------------------------------------------------------
def _longest_task_s(registry: Registry, options: LambdaOptions) -> float:
    longest = max((spec.timeout_s for spec in registry.specs()), default=0.0)
    if options.worker_function:
        # The worker function's own timeout ends any attempt.
        return min(longest, options.worker_timeout_s)
    return longest


def _is_scale_out(event: Any) -> bool:
    return _dispatch_event(event, "scale_out")


def _is_wake(event: Any) -> bool:
    return _dispatch_event(event, "wake")


def _is_hand_over(event: Any) -> bool:
    return _dispatch_event(event, "hand_over")


def _dispatch_event(event: Any, kind: str) -> bool:
    """Whether ``event`` is one Dispatch sends itself: ``{"dispatch": {kind: ...}}``."""
    return (
        isinstance(event, dict)
        and isinstance(event.get("dispatch"), dict)
        and kind in event["dispatch"]
    )


async def _visible_messages(sqs: Any, queue_url: str) -> int:
    with aws_errors("GetQueueAttributes"):
        answer = await sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
    return int(answer.get("Attributes", {}).get("ApproximateNumberOfMessages", "0"))


async def _start_dispatcher(
    client: Any, target: str, request_id: str, *, kind: str = "scale_out"
) -> None:
    payload = json.dumps({"dispatch": {kind: request_id}}).encode()
    with aws_errors("Invoke"):
        await client.invoke(FunctionName=target, InvocationType="Event", Payload=payload)


def _physical_resources(
    settings: Settings, worker_function: str | None, scale_out_target: str | None
) -> dict[str, str]:
    resources = {
        settings.queue_url: TASK_QUEUE,
        settings.dlq_url: DEAD_LETTER_QUEUE,
        settings.table: STATE_TABLE,
    }
    if worker_function:
        resources[worker_function] = WORKER_FUNCTION
    if scale_out_target:
        resources[scale_out_target] = DISPATCHER_FUNCTION
    return resources


def _lambda_client(settings: Settings, options: LambdaOptions) -> Any:
    """An aiobotocore Lambda client that retries only calls that never connected (a
    throttle is backpressure at once; an invoke that may have run is not repeated),
    with a read timeout longer than the worker's."""
    config = aio_client_config(
        connect_timeout_s=_INVOKE_CONNECT_TIMEOUT_S,
        read_timeout_s=math.ceil(options.worker_timeout_s + _INVOKE_READ_SLACK_S),
        max_pool_connections=options.invoke_concurrency + 2,
    )
    return async_client(
        "lambda",
        settings,
        retry=INVOKE_RETRY,
        config=config,
        endpoint_url=options.lambda_endpoint_url,
    )
