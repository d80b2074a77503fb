"""Settings, built once from the environment into a frozen dataclass."""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dispatch.core import constants as c
from dispatch.core.errors import ConfigurationError

TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
"""What DynamoDB accepts as a table name."""


def current_user() -> str:
    """``user@host``: who an operator's action (a pause, a cancel) is recorded as made by,
    unless told."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def queue_name(queue_url: str) -> str:
    """The queue's name: the last segment of its URL."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where AWS is: the region and, for LocalStack or the embedded local AWS, a URL."""

    region: str = c.DEFAULT_REGION
    endpoint_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Endpoint:
        """``AWS_REGION`` (or ``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL``."""
        env = os.environ if environ is None else environ
        return cls(
            region=env.get(c.ENV_REGION) or env.get(c.ENV_DEFAULT_REGION) or c.DEFAULT_REGION,
            endpoint_url=env.get(c.ENV_ENDPOINT_URL) or None,
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the queue, the dead-letter queue and the table are, and how to reach AWS.

    Build it with :meth:`from_env`; use :func:`dataclasses.replace` (or
    :meth:`with_overrides`) for a variant, never mutate it.
    """

    queue_url: str
    dlq_url: str
    table: str
    region: str = c.DEFAULT_REGION
    endpoint_url: str | None = None
    task_modules: tuple[str, ...] = field(default_factory=tuple)
    signing_keys: tuple[str, ...] = field(default_factory=tuple, repr=False)
    wake_function: str | None = None  # responsive mode: the dispatcher a producer wakes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the ``DISPATCH_*`` and standard AWS variables; name any that is missing."""
        env = os.environ if environ is None else environ
        missing = [
            name for name in (c.ENV_QUEUE_URL, c.ENV_DLQ_URL, c.ENV_TABLE) if not env.get(name)
        ]
        if missing:
            raise ConfigurationError(
                f"missing environment variable{'s' if len(missing) > 1 else ''}: "
                f'{", ".join(missing)} (run `eval "$(dispatch init)"` to create the queue, '
                "dead-letter queue and table and export them; `dispatch init --json` prints "
                "them as JSON)",
                setting=missing[0],
            )
        endpoint = Endpoint.from_env(env)
        settings = cls(
            queue_url=env[c.ENV_QUEUE_URL],
            dlq_url=env[c.ENV_DLQ_URL],
            table=env[c.ENV_TABLE],
            region=endpoint.region,
            endpoint_url=endpoint.endpoint_url,
            task_modules=parse_task_modules(env.get(c.ENV_TASKS, "")),
            signing_keys=tuple(
                k.strip() for k in env.get(c.ENV_SIGNING_KEY, "").split(",") if k.strip()
            ),
            wake_function=env.get(c.ENV_WAKE_FUNCTION) or None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values that cannot be a queue URL or a table name, naming the setting."""
        for name, url in ((c.ENV_QUEUE_URL, self.queue_url), (c.ENV_DLQ_URL, self.dlq_url)):
            if not url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"{name}={url!r} is not a queue URL (expected https://sqs.<region>."
                    "amazonaws.com/<account>/<name>)",
                    setting=name,
                )
        if self.queue_url == self.dlq_url:
            raise ConfigurationError(
                f"{c.ENV_DLQ_URL} must name a different queue than {c.ENV_QUEUE_URL}",
                setting=c.ENV_DLQ_URL,
            )
        if not TABLE_NAME.fullmatch(self.table):
            raise ConfigurationError(
                f"{c.ENV_TABLE}={self.table!r} is not a DynamoDB table name (3 to 255 of "
                "a-z A-Z 0-9 _ - .)",
                setting=c.ENV_TABLE,
            )

    @property
    def is_fifo(self) -> bool:
        """True when the main queue is a FIFO queue (its name ends in ``.fifo``)."""
        return self.queue_url.endswith(".fifo")

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (validated again)."""
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.validate()
        return updated


def parse_task_modules(value: str) -> tuple[str, ...]:
    """Split ``DISPATCH_TASKS`` ("pkg.tasks, other.tasks") into module names."""
    return tuple(part.strip() for part in value.split(",") if part.strip())
