"""Keep secrets out of logs: a structlog processor that redacts sensitive values.

Any key whose name contains one of the sensitive words (default: password,
passwd, secret, token, authorization, api_key, apikey, credential, private_key,
cookie, session) has its value replaced by ``[REDACTED]``, at any depth of
nested dicts and lists (task arguments included). Inside strings (error
messages, tracebacks), ``word=value`` and ``word: value`` pairs are redacted
too, as are bearer tokens. Add words with ``DISPATCH_REDACT_KEYS`` (comma
separated) or :func:`redactor`'s ``extra_keys``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, MutableMapping
from typing import Any, Final

__all__ = ["DEFAULT_SENSITIVE", "REDACTED", "redactor"]

REDACTED: Final = "[REDACTED]"
DEFAULT_SENSITIVE: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "private_key",
    "cookie",
    "session",
)
ENV_REDACT_KEYS: Final = "DISPATCH_REDACT_KEYS"


class _Redactor:
    """The processor: ``(logger, method, event_dict) -> event_dict``."""

    def __init__(self, words: Iterable[str]) -> None:
        self._words = tuple(sorted({w.strip().lower() for w in words if w.strip()}))
        alternatives = "|".join(re.escape(w) for w in self._words)
        # word=value, word: value, "word": "value" inside free text
        self._pairs = re.compile(
            rf"""(?ix)
            (["']?[\w-]*(?:{alternatives})[\w-]*["']?\s*[=:]\s*)
            ("[^"]*"|'[^']*'|[^\s,;&}}\]]+)
            """
        )
        self._bearer = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")

    def _sensitive(self, key: object) -> bool:
        name = str(key).lower()
        return any(word in name for word in self._words)

    def _text(self, text: str) -> str:
        text = self._bearer.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        return self._pairs.sub(lambda m: f"{m.group(1)}{REDACTED}", text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, MutableMapping | dict):
            return {
                k: (REDACTED if self._sensitive(k) else self._value(v)) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self._value(v) for v in value)
        return value

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key == "event":
                continue
            value = event_dict[key]
            event_dict[key] = REDACTED if self._sensitive(key) else self._value(value)
        return event_dict


def redactor(extra_keys: Iterable[str] = ()) -> _Redactor:
    """The redacting processor, with the default words, ``DISPATCH_REDACT_KEYS`` and
    ``extra_keys``."""
    from_env = os.environ.get(ENV_REDACT_KEYS, "").split(",")
    return _Redactor([*DEFAULT_SENSITIVE, *from_env, *extra_keys])
