"""Secrets never reach the logs."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from dispatch.core.logs import configure_logging
from dispatch.core.redact import REDACTED, redactor


def test_sensitive_keys_are_redacted_at_any_depth() -> None:
    """Given an event with a password, a nested API token and an authorization header in
    task arguments, when it passes the processor, then those values are gone and the rest
    is intact."""
    event = {
        "event": "task_retry",
        "task": "charge",
        "password": "hunter2",
        "kwargs": {"order_id": "42", "api_key": "sk_live_123", "card": {"cvv_token": "999"}},
        "headers": [{"Authorization": "Bearer abc.def"}],
    }

    out = redactor()(None, "info", dict(event))

    assert out["password"] == REDACTED
    assert out["kwargs"] == {"order_id": "42", "api_key": REDACTED, "card": {"cvv_token": REDACTED}}
    assert out["headers"] == [{"Authorization": REDACTED}]
    assert out["task"] == "charge"


def test_secrets_inside_error_messages_are_redacted() -> None:
    """Given an error message that quotes a connection string, a bearer token and a JSON
    body with a secret, when logged, then the values are redacted and the words kept."""
    error = (
        'connect failed: password=hunter2 host=db; got 401 for "Bearer eyJhbGciOi.x.y" '
        'body {"client_secret": "s3cr3t", "user": "ann"}'
    )

    out = redactor()(None, "warning", {"event": "task_dead", "error": error})

    assert "hunter2" not in out["error"] and "eyJhbGciOi" not in out["error"]
    assert "s3cr3t" not in out["error"]
    assert "host=db" in out["error"] and '"user": "ann"' in out["error"]


def test_configured_keys_and_the_real_logging_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given logging configured with an extra sensitive key and DISPATCH_REDACT_KEYS,
    when a line is written as JSON, then both are redacted in the output."""
    monkeypatch.setenv("DISPATCH_REDACT_KEYS", "ssn, pin")
    stream = io.StringIO()
    configure_logging(level="INFO", json=True, redact_keys=["iban"])
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stream))

    structlog.get_logger("test").info(
        "payout", iban="DE89370400440532013000", customer_ssn="078-05-1120", amount=5
    )

    line = json.loads(stream.getvalue())
    assert line["iban"] == REDACTED and line["customer_ssn"] == REDACTED
    assert line["amount"] == 5
    structlog.reset_defaults()
