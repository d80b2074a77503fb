"""The embedded local AWS for one benchmark run, and fresh resources on it.

Every measurement starts from an emptied emulator with a queue, dead-letter queue
and table provisioned from deploy/template.yaml (the definitions ``sam deploy``
uses), so no measurement sees another's messages, records or queue depth.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from bench.cpu import CpuSample
from dispatch.core import constants as c
from dispatch.core.config import Endpoint, Settings
from dispatch.local.emulator import LocalAWS, environment
from dispatch.local.provision import provision
from dispatch.store.aws import SyncClients, sync_clients

__all__ = ["Stage", "environment", "settings_env"]

EMULATOR: Final = "emulator"
BENCH: Final = "bench"


class Stage:
    """A running emulator (:class:`LocalAWS`) plus uncounted clients to set things up."""

    def __init__(self, aws: LocalAWS) -> None:
        self.aws = aws
        self.endpoint = Endpoint(region=aws.region, endpoint_url=aws.endpoint_url)
        self._admin: SyncClients | None = None
        self._fresh = 0

    @classmethod
    @contextmanager
    def start(cls, *, round_trip_ms: Mapping[str, float] | None = None) -> Iterator[Stage]:
        """Start the emulator and point this process's AWS SDK (and children's) at it
        (``round_trip_ms``: hold each request to those services that long)."""
        with LocalAWS.start(round_trip_ms=round_trip_ms) as aws, environment(aws.env()):
            yield cls(aws)

    @property
    def admin(self) -> SyncClients:
        """boto3 clients that no counter sees: setting up, filling and probing."""
        if self._admin is None:
            self._admin = sync_clients(self.endpoint)
        return self._admin

    def fresh(self, name: str) -> Settings:
        """Empty the emulator, provision a queue, DLQ and table; their settings."""
        self.aws.reset()
        self._fresh += 1
        made = provision(self.admin.sqs, self.admin.dynamodb, prefix=f"b{self._fresh}-{name}")
        return made.settings(region=self.aws.region, endpoint_url=self.aws.endpoint_url)

    def cpu(self, **others: int) -> CpuSample:
        """CPU seconds so far of the emulator, this process and ``others`` (name=pid)."""
        return CpuSample.take({EMULATOR: self.aws.pid, BENCH: os.getpid(), **others})

    def queue_depth(self, settings: Settings) -> dict[str, int]:
        """Visible, in-flight and delayed messages on the task queue."""
        answer = self.admin.sqs.get_queue_attributes(
            QueueUrl=settings.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return {
            "visible": int(answer.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(answer.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(answer.get("ApproximateNumberOfMessagesDelayed", 0)),
        }


def settings_env(settings: Settings) -> dict[str, str]:
    """``DISPATCH_QUEUE_URL``, ``DISPATCH_DLQ_URL`` and ``DISPATCH_TABLE`` for ``settings``."""
    return {
        c.ENV_QUEUE_URL: settings.queue_url,
        c.ENV_DLQ_URL: settings.dlq_url,
        c.ENV_TABLE: settings.table,
    }
