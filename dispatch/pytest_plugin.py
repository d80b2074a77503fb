"""The pytest plugin: fixtures that give a test its own queue and table on the local AWS.

Installed with ``dispatch-aws`` (entry point ``pytest11``), so a project's tests
just ask for a fixture:

* ``dispatch_local_aws`` (session): the embedded local AWS on 127.0.0.1, started
  the first time a test asks for it and stopped at the end of the run (run by
  ``$DISPATCH_LOCAL_PYTHON`` when set: docs/testing.md).
* ``dispatch_env`` (function): an emptied local AWS with a fresh queue, DLQ and
  table, the ``AWS_*`` and ``DISPATCH_*`` variables pointing at them for the test,
  ``task.enqueue`` and ``dispatch.status`` using them; returns the
  :class:`~dispatch.Settings`. Then :func:`dispatch.testing.drain` runs the tasks.

The plugin is inert until one of its fixtures is used: loading it imports nothing
of Dispatch's and starts nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dispatch.core.config import Settings
    from dispatch.local.emulator import LocalAWS

# Set by the user's own environment but never meant for the local AWS: real
# credentials must not ride along with the emulator's placeholder ones.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@pytest.fixture(scope="session")
def dispatch_local_aws() -> Iterator[LocalAWS]:
    """The embedded local AWS (SQS, DynamoDB) on 127.0.0.1, one for the whole test run."""
    from dispatch.testing import start_local_aws

    with start_local_aws() as aws:
        yield aws


@pytest.fixture
def dispatch_env(
    dispatch_local_aws: LocalAWS, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """A fresh queue, dead-letter queue and table on the emptied local AWS; the
    environment points at them for this test; returns the Settings read from it."""
    from dispatch.core.config import Settings
    from dispatch.producer.enqueue import Queue, set_default_queue
    from dispatch.testing import provision_local

    dispatch_local_aws.reset()
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in provision_local(dispatch_local_aws).items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    queue = Queue(settings)
    set_default_queue(queue)  # task.enqueue and dispatch.status use this test's queue
    try:
        yield settings
    finally:
        set_default_queue(None)
        queue.close()
