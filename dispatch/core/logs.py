"""structlog configuration: JSON lines for machines, readable console lines for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, Final

import structlog

from dispatch.core.redact import redactor

__all__ = ["OUTCOME_EVENTS", "configure_logging"]

OUTCOME_EVENTS: Final = frozenset({"task_succeeded"})
"""Per-task outcome lines logged at debug (one per task: a flood at production rates);
``outcomes=True`` shows them at info (``dispatch dev``). Retries are info and dead
letters warnings already."""


def configure_logging(
    *,
    level: str = "INFO",
    json: bool | None = None,
    redact_keys: Iterable[str] = (),
    outcomes: bool = False,
) -> None:
    """Configure structlog once per process.

    ``json=None`` picks JSON lines when stderr is not a terminal (Lambda, CI,
    files) and console rendering otherwise. Secrets are redacted from every
    line (:mod:`dispatch.core.redact`); ``redact_keys`` adds sensitive key names.
    ``outcomes`` shows the :data:`OUTCOME_EVENTS` at info even when ``level`` hides
    debug lines (``dispatch dev``: each task's outcome, one line each).
    """
    threshold = logging.getLevelName(level.upper())
    promote = outcomes and threshold > logging.DEBUG
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([_promote_outcomes(threshold)] if promote else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor(redact_keys),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if promote else threshold
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _promote_outcomes(threshold: int) -> Any:
    """A processor (after ``add_log_level``) for a logger that lets debug through: it
    drops every line below ``threshold`` except the outcome events, shown as info."""
    levels = logging.getLevelNamesMapping()

    def promote(logger: Any, method_name: str, event_dict: Any) -> Any:
        if levels.get(str(event_dict.get("level", "")).upper(), logging.INFO) >= threshold:
            return event_dict
        if event_dict.get("event") in OUTCOME_EVENTS:
            event_dict["level"] = "info"
            return event_dict
        raise structlog.DropEvent

    return promote
