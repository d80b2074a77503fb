"""CloudWatch metrics in Embedded Metric Format (EMF), with AWS's aws-embedded-metrics.

A dispatcher counts what it does per task and per resource and, every minute
and when it stops, writes EMF documents (JSON lines that CloudWatch Logs turns
into metrics, with no PutMetricData call and no extra request). Namespace
``Dispatch``:

- by ``Task``: ``Dispatched``, ``Succeeded``, ``Retried``, ``DeadLettered``,
  ``Backpressure`` (Count);
- by ``Resource``: ``ThrottleWait`` (Seconds, summed), ``EffectiveRate``
  (Count/Second), ``InFlight`` (Count);
- by ``Queue``: ``QueueAge`` (Seconds: the age of the oldest message received
  since the last flush);
- by ``Resource`` and ``KeyRank`` (a keyed resource's busiest keys here, ``1`` to
  :data:`KEY_RANKS`): ``KeyWaiting``, ``KeyInFlight`` (Count), with the key itself as
  the document's ``Key`` property, not a dimension. A key as a dimension would make
  one CloudWatch metric per tenant ever seen (thousands, each billed); ranks keep it
  to five per resource, and the ``Key`` property still finds the tenant in Logs
  Insights (``filter Resource = "crm-api" and KeyRank = "1" | stats count() by Key``).

The deploy template's alarms read these (``DeadLettered``, ``ThrottleWait``).
Where the documents go: stdout in Lambda (where CloudWatch picks them up); off
elsewhere unless ``DISPATCH_METRICS=emf`` (stdout) is set. Tests pass a sink.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from aws_embedded_metrics.environment import Environment
from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.logger.metrics_logger import MetricsLogger
from aws_embedded_metrics.serializers.log_serializer import LogSerializer
from aws_embedded_metrics.sinks import Sink

if TYPE_CHECKING:
    from dispatch.throttle.limits import ThrottleSnapshot

__all__ = ["KEY_RANKS", "NAMESPACE", "Metrics", "metrics_from_env"]

NAMESPACE: Final = "Dispatch"
FLUSH_EVERY_S: Final = 60.0
ENV_METRICS: Final = "DISPATCH_METRICS"
_TASK_COUNTERS: Final = ("Dispatched", "Succeeded", "Retried", "DeadLettered", "Backpressure")
KEY_RANKS: Final = 5
"""A keyed resource's busiest keys that get a document each (bounded cardinality)."""


class _LineSink(Sink):
    """Writes each serialised EMF document as one line through ``write``."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write = write
        self._serializer = LogSerializer()

    def accept(self, context: MetricsContext) -> None:
        for document in self._serializer.serialize(context):
            if document:
                self._write(document)

    @staticmethod
    def name() -> str:
        return "DispatchLineSink"


class _Destination(Environment):
    """An EMF environment that never probes the network: it just writes lines."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self._sink = _LineSink(write)

    async def probe(self) -> bool:
        return True

    def get_name(self) -> str:
        return os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dispatch")

    def get_type(self) -> str:
        return "AWS::Lambda::Function" if "AWS_LAMBDA_FUNCTION_NAME" in os.environ else "Local"

    def get_log_group_name(self) -> str:
        return self.get_name()

    def configure_context(self, context: MetricsContext) -> None:
        return None

    def get_sink(self) -> Sink:
        return self._sink


class Metrics:
    """Counts for one dispatcher, flushed as EMF documents to ``write``."""

    def __init__(self, write: Callable[[str], object], *, queue_name: str) -> None:
        destination = _Destination(write)

        async def resolve() -> Environment:
            return destination

        self._resolve = resolve
        self._queue_name = queue_name
        self._counts: Counter[tuple[str, str]] = Counter()
        self._oldest_age_s = 0.0

    def count(self, task: str, metric: str, n: int = 1) -> None:
        """Add ``n`` to a per-task counter (one of the names in the module docstring)."""
        self._counts[(task, metric)] += n

    def saw_message_age(self, age_s: float) -> None:
        """A received message had waited ``age_s`` seconds on the queue."""
        self._oldest_age_s = max(self._oldest_age_s, age_s)

    def _logger(self) -> MetricsLogger:
        logger = MetricsLogger(self._resolve, MetricsContext.empty())
        logger.set_namespace(NAMESPACE)
        return logger

    async def flush(
        self,
        snapshots: Iterable[ThrottleSnapshot],
        wait_s: dict[str, float],
        busiest_keys: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """Write one document per task, per resource, per busy key rank and for the queue;
        reset the counts. ``busiest_keys``: per keyed resource, its key rows busiest first
        (``{"key", "waiting", "in_flight"}``, as ``dispatch status`` shows them)."""
        for task in sorted({task for task, _ in self._counts}):
            logger = self._logger()
            logger.set_dimensions({"Task": task})
            for metric in _TASK_COUNTERS:
                logger.put_metric(metric, self._counts[(task, metric)], "Count")
            await logger.flush()
        for snapshot in snapshots:
            logger = self._logger()
            logger.set_dimensions({"Resource": snapshot.name})
            logger.put_metric("ThrottleWait", round(wait_s.get(snapshot.name, 0.0), 3), "Seconds")
            if snapshot.effective_rate_per_s is not None:
                logger.put_metric("EffectiveRate", snapshot.effective_rate_per_s, "Count/Second")
            logger.put_metric("InFlight", snapshot.in_flight, "Count")
            await logger.flush()
        for resource, rows in sorted((busiest_keys or {}).items()):
            busy = [row for row in rows if int(row["waiting"]) + int(row["in_flight"]) > 0]
            for rank, row in enumerate(busy[:KEY_RANKS], start=1):
                logger = self._logger()
                logger.set_dimensions({"Resource": resource, "KeyRank": str(rank)})
                logger.set_property("Key", str(row["key"]))
                logger.put_metric("KeyWaiting", int(row["waiting"]), "Count")
                logger.put_metric("KeyInFlight", int(row["in_flight"]), "Count")
                await logger.flush()
        logger = self._logger()
        logger.set_dimensions({"Queue": self._queue_name})
        logger.put_metric("QueueAge", round(self._oldest_age_s, 3), "Seconds")
        await logger.flush()
        self._counts.clear()
        self._oldest_age_s = 0.0


def metrics_from_env(queue_name: str) -> Metrics | None:
    """EMF to stdout in Lambda or with ``DISPATCH_METRICS=emf``; None (off) otherwise."""
    choice = os.environ.get(ENV_METRICS, "").lower()
    in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    if choice == "off" or (choice != "emf" and not in_lambda):
        return None

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")

    return Metrics(write, queue_name=queue_name)
