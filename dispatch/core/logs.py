"""structlog configuration: JSON lines for machines, readable console lines for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog

from dispatch.core.redact import redactor

__all__ = ["configure_logging"]


def configure_logging(
    *, level: str = "INFO", json: bool | None = None, redact_keys: Iterable[str] = ()
) -> None:
    """Configure structlog once per process.

    ``json=None`` picks JSON lines when stderr is not a terminal (Lambda, CI,
    files) and console rendering otherwise. Secrets are redacted from every
    line (:mod:`dispatch.core.redact`); ``redact_keys`` adds sensitive key names.
    """
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
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor(redact_keys),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
