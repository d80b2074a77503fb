"""What a worker reports after one attempt: the contract between workers and dispatcher.

Outcomes are plain data, JSON-ready (``to_dict``/``from_dict``), because in the
Lambda topology they travel back in an Invoke response.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = ["ErrorInfo", "Outcome", "OutcomeKind"]

MAX_MESSAGE_CHARS: Final = 1_000
MAX_TRACEBACK_CHARS: Final = 4_000


class OutcomeKind(StrEnum):
    """How an attempt ended, as far as retrying is concerned."""

    SUCCEEDED = "succeeded"
    RETRYABLE = "retryable"  # failed; another attempt may succeed (timeouts included)
    PERMANENT = "permanent"  # the handler raised PermanentError: no attempt can succeed
    NOT_RETRYABLE = "not_retryable"  # the exception is not one of the task's retry_on types
    BACKPRESSURE = "backpressure"  # the protected resource is overloaded; not the task's fault


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure, reduced to what can be stored and shown: type, message, short traceback."""

    type: str
    message: str
    traceback: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", _clip_end(self.message, MAX_MESSAGE_CHARS))
        object.__setattr__(self, "traceback", _clip_start(self.traceback, MAX_TRACEBACK_CHARS))

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
        )

    def summary(self) -> str:
        """``Type: message`` on one line."""
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt of one task."""

    kind: OutcomeKind
    duration_s: float
    result: Any = None
    error: ErrorInfo | None = None
    retry_after_s: float | None = None  # a Backpressure hint

    @property
    def succeeded(self) -> bool:
        """True when the handler returned."""
        return self.kind is OutcomeKind.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data: dict[str, Any] = {"kind": self.kind.value, "duration_s": self.duration_s}
        if self.result is not None:
            data["result"] = self.result
        if self.error is not None:
            data["error"] = self.error.to_dict()
        if self.retry_after_s is not None:
            data["retry_after_s"] = self.retry_after_s
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        """Inverse of :meth:`to_dict`."""
        error = data.get("error")
        return cls(
            kind=OutcomeKind(data["kind"]),
            duration_s=float(data.get("duration_s", 0.0)),
            result=data.get("result"),
            error=ErrorInfo.from_dict(error) if isinstance(error, dict) else None,
            retry_after_s=data.get("retry_after_s"),
        )


def _clip_end(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_start(text: str, limit: int) -> str:
    # The end of a traceback (the raising frame and the message) matters most.
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
