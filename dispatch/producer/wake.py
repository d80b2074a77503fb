"""Waking a dispatcher when a task is enqueued and none is receiving (the responsive mode).

With ``DISPATCH_WAKE_FUNCTION`` set (the dispatcher function's ``live`` alias, the
stack's ``WakeFunction`` output), a :class:`~dispatch.producer.enqueue.Queue`
checks after each successful send whether a dispatcher has promised to be
receiving now (:mod:`dispatch.store.awake`); when none has, it invokes the
dispatcher function asynchronously (``InvocationType=Event``), which starts
receiving at once instead of at the next scheduled tick. What it costs, bounded
per producer process:

* at most one GetItem (eventually consistent, half a read unit) every
  :data:`WAKE_QUIET_S` seconds, or none while a promise covers the moment;
* at most one Invoke every :data:`WAKE_QUIET_S` seconds, only when no dispatcher
  promised to be receiving.

A wake that fails is logged and never fails the enqueue: the task is on the
queue, and the scheduled tick picks it up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core.config import Settings, queue_name
from dispatch.store import awake
from dispatch.store.aws import sync_client
from dispatch.store.aws_retry import INVOKE_RETRY

__all__ = ["ENV_LAMBDA_ENDPOINT_URL", "PROMISE_MARGIN_S", "WAKE_QUIET_S", "Waker"]

log = structlog.get_logger("dispatch.producer.wake")

WAKE_QUIET_S: Final = 5.0
"""After a wake (or a look that found no promise to trust), no other for this long:
the woken dispatcher starts and writes its promise meanwhile."""
PROMISE_MARGIN_S: Final = 1.0
"""A promise is trusted until this long before it ends (clocks and the send's flight)."""
ENV_LAMBDA_ENDPOINT_URL: Final = "AWS_ENDPOINT_URL_LAMBDA"  # the AWS SDKs' own variable


class Waker:
    """Decides, per producer process, when to look at the promise and when to wake."""

    def __init__(
        self,
        settings: Settings,
        function: str,
        *,
        lambda_endpoint_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.function = function
        self._settings = settings
        self._endpoint_url = lambda_endpoint_url
        self._clock = clock
        self._quiet_until = 0.0
        self._lambda: Any = None
        self.wakes = 0

    def due(self) -> bool:
        """Whether the next enqueue should look at the promise."""
        return self._clock() >= self._quiet_until

    def decide(self, item: dict[str, Any] | None) -> bool:
        """Whether to wake, given the promise item just read (None: there is none)."""
        now = self._clock()
        trusted_until = awake.promised_until(item) - PROMISE_MARGIN_S
        if trusted_until > now:
            self._quiet_until = trusted_until
            return False
        self._quiet_until = now + WAKE_QUIET_S
        return True

    def payload(self) -> bytes:
        """The event the woken dispatcher gets."""
        name = queue_name(self._settings.queue_url)
        return json.dumps({"dispatch": {"wake": {"queue": name}}}).encode()

    def after_send(self, dynamodb: Any) -> None:
        """Look at the promise if due, and wake the dispatcher if none covers now."""
        if not self.due():
            return
        try:
            answer = dynamodb.get_item(
                TableName=self._settings.table, Key=awake.awake_key(self._settings.queue_url)
            )
            if not self.decide(answer.get("Item")):
                return
            self._client().invoke(
                FunctionName=self.function, InvocationType="Event", Payload=self.payload()
            )
            self.wakes += 1
        except (ClientError, BotoCoreError) as exc:
            self._quiet_until = self._clock() + WAKE_QUIET_S
            log.warning("wake_failed", function=self.function, error=str(exc))

    def _client(self) -> Any:
        if self._lambda is None:
            self._lambda = sync_client(
                "lambda",
                self._settings,
                retry=INVOKE_RETRY,
                endpoint_url=self._endpoint_url or self._settings.endpoint_url,
            )
        return self._lambda

    def close(self) -> None:
        """Close the Lambda client, if one was made."""
        if self._lambda is not None:
            self._lambda.close()
            self._lambda = None
