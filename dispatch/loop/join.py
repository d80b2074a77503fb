"""The join: a child of a group settled, so count it, and send the callback once.

A child's envelope names its group (``join``, docs/formats.md). After the child's
record says ``succeeded`` and before its message is deleted, :meth:`Joiner.succeeded`
adds the child to the group's ``done`` set with a conditional write
(:func:`~dispatch.store.joins.child_counted_params`); the write that completes the
set, or any later settlement of a child of a complete group whose callback is not
marked sent, reads the children's results, puts the callback's record back to
``queued`` if a dead child had killed it, sends its message and marks it sent. A
child that dies kills the callback (``dead``, ``dependency_failed``, naming the
child) and, down a chain, the callbacks after it.

Because the message is deleted only after the join, a dispatcher that dies
anywhere in between leaves the message to come back: its claim finds the record
``succeeded`` (or ``dead``) and the join is made again, and counts nothing twice
(docs/reliability.md, "Groups and chains").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.envelope import Envelope, decode
from dispatch.core.errors import DispatchError
from dispatch.core.record import Status, TaskRecord
from dispatch.core.signing import signature_attribute
from dispatch.store import joins, state
from dispatch.store.conditional import is_condition_failure, old_item

__all__ = ["JOIN_RETRY_S", "Joiner"]

log = structlog.get_logger("dispatch.loop.join")

JOIN_RETRY_S: Final = 5
"""A join that failed (an AWS error) keeps the child's message: visible again after this."""
_MAX_CHAIN: Final = 100  # callbacks killed down one chain at most (a guard, not a limit)
_FAILURES: Final = (ClientError, BotoCoreError, DispatchError)


class Joiner:
    """Counts children of groups and sends callbacks, on one queue and table."""

    def __init__(
        self, dynamodb: Any, sqs: Any, settings: Settings, *, clock: Callable[[], float]
    ) -> None:
        self._dynamodb = dynamodb
        self._sqs = sqs
        self._settings = settings
        self._table = settings.table
        self._clock = clock
        self.callbacks_sent = 0  # messages this joiner sent (tests and logs)

    async def succeeded(self, envelope: Envelope) -> bool:
        """Count the child ``envelope`` (its record says succeeded) and send the callback
        if it completed the group; False when an AWS error stopped it (retry later)."""
        if envelope.join is None:
            return True
        try:
            group = await self._update(
                joins.child_counted_params(self._table, envelope.join, envelope.id, self._clock())
            )
            if group is None or envelope.id not in group.children:
                log.warning("join_group_missing", group=envelope.join, task_id=envelope.id)
                return True
            if group.complete and group.sent_at is None:
                await self._fire(group)
        except _FAILURES:
            log.warning("join_failed", group=envelope.join, task_id=envelope.id, exc_info=True)
            return False
        return True

    async def died(self, envelope: Envelope, reason: str) -> bool:
        """The child ``envelope`` is dead: its callback (and every one after it down a
        chain) is dead as ``dependency_failed``; False when an AWS error stopped it."""
        try:
            await self._died(envelope, reason)
        except _FAILURES:
            log.warning("join_failed", group=envelope.join, task_id=envelope.id, exc_info=True)
            return False
        return True

    async def _died(self, envelope: Envelope, reason: str) -> None:
        for _ in range(_MAX_CHAIN):
            if envelope.join is None:
                return
            now = self._clock()
            group = await self._update(
                joins.child_failed_params(self._table, envelope.join, envelope.id, now)
            )
            if group is None or envelope.id not in group.failed:
                return  # no group, or this child succeeded: nothing waits on its death
            reasons = dict.fromkeys(group.failed, "dead")
            reasons[envelope.id] = reason
            params = joins.callback_dead_params(
                self._table, group.callback_id, now=now, error=group.failure_error(reasons)
            )
            if not await self._conditional(params):
                return  # the callback left queued: it ran, runs, or was cancelled
            log.warning(
                "group_callback_dead",
                group=group.group_id,
                callback=group.callback_id,
                failed=sorted(group.failed),
            )
            envelope, reason = decode(group.callback_body), joins.DEPENDENCY_FAILED

    async def _fire(self, group: joins.GroupState) -> None:
        records = await self._records(group.children)
        waiting = [
            child
            for child in group.children
            if records.get(child) is None or records[child].status is not Status.SUCCEEDED
        ]
        if waiting:  # counted before its record was final: its own settlement fires
            log.warning("join_child_not_final", group=group.group_id, children=waiting)
            return
        results = [records[child].result for child in group.children]
        now = self._clock()
        if not await self._conditional(
            joins.callback_revive_params(self._table, group.callback_id, now=now)
        ):
            await self._conditional(joins.sent_params(self._table, group.group_id, now))
            return  # the callback left queued: it was sent before, or cancelled
        callback = decode(group.callback_body)
        callback = dataclasses.replace(
            callback,
            args=(*group.callback_args(results), *callback.args),
            enqueued_at=round(now, 3),
        )
        await self._send(callback)
        self.callbacks_sent += 1
        await self._conditional(joins.sent_params(self._table, group.group_id, now))
        log.info("group_callback_sent", group=group.group_id, callback=callback.id)

    async def _send(self, callback: Envelope) -> None:
        body = callback.to_json()
        params: dict[str, Any] = {"QueueUrl": self._settings.queue_url, "MessageBody": body}
        signature = signature_attribute(self._settings.signing_keys, body)
        if signature:
            params["MessageAttributes"] = signature
        if self._settings.is_fifo:
            params["MessageGroupId"] = callback.group or "default"
            params["MessageDeduplicationId"] = callback.id
        elif callback.key is not None:  # a keyed task's fair-queue tenant, as at enqueue
            params["MessageGroupId"] = callback.key
        await self._sqs.send_message(**params)

    async def _update(self, params: dict[str, Any]) -> joins.GroupState | None:
        """A conditional write on the group item; the item after it, or as it was when
        the condition refused it (None: no such group)."""
        try:
            answer = await self._dynamodb.update_item(**params)
            return joins.GroupState.from_item(answer["Attributes"])
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            item = old_item(exc)
        if item is None:
            found = await self._dynamodb.get_item(
                TableName=self._table, Key=params["Key"], ConsistentRead=True
            )
            item = found.get("Item")
        return joins.GroupState.from_item(item) if item else None

    async def _conditional(self, params: dict[str, Any]) -> bool:
        try:
            await self._dynamodb.update_item(**params)
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    async def _records(self, task_ids: tuple[str, ...]) -> dict[str, TaskRecord]:
        """The children's records, read strongly consistent, 100 per request."""
        found: dict[str, TaskRecord] = {}
        for chunk in state.chunks(dict.fromkeys(task_ids), c.DDB_MAX_BATCH_GET):
            keys = [state.task_key(task_id) for task_id in chunk]
            while keys:
                answer = await self._dynamodb.batch_get_item(
                    RequestItems={self._table: {"Keys": keys, "ConsistentRead": True}}
                )
                for item in answer.get("Responses", {}).get(self._table, []):
                    record = TaskRecord.from_item(item)
                    found[record.task_id] = record
                keys = answer.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
        return found
