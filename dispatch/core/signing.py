"""Optional message signing: only messages our own producers wrote can run.

With ``DISPATCH_SIGNING_KEY`` set (several keys, comma separated, during a
rotation: the first signs, any verifies), every enqueued message carries an
HMAC-SHA256 of its exact body in the ``dispatch-sig`` message attribute, and
the dispatcher dead-letters (reason ``bad_signature``) any message whose
signature is missing or does not verify, before reading it. So a queue policy
that lets the wrong principal send messages cannot be used to run arbitrary
tasks. The body itself is untouched, so any language can sign it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

from dispatch.core import constants as c

__all__ = ["ATTR_SIGNATURE", "sign", "signature_attribute", "verify"]

ATTR_SIGNATURE: Final = f"{c.DLQ_ATTR_PREFIX}sig"


def sign(key: str, body: str) -> str:
    """The signature of ``body``: base64 of HMAC-SHA256 keyed with ``key``."""
    digest = hmac.new(key.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_attribute(keys: Sequence[str], body: str) -> dict[str, dict[str, str]]:
    """The MessageAttributes entry that signs ``body`` (empty when no key is set)."""
    if not keys:
        return {}
    return {ATTR_SIGNATURE: {"DataType": "String", "StringValue": sign(keys[0], body)}}


def verify(keys: Sequence[str], body: str, attributes: Mapping[str, Any]) -> str | None:
    """None when the message is signed by one of ``keys``; else why it is refused."""
    given = attributes.get(ATTR_SIGNATURE, {}).get("StringValue")
    if not given:
        return f"the message is not signed (no {ATTR_SIGNATURE} attribute) and signing is required"
    for key in keys:
        if hmac.compare_digest(given, sign(key, body)):
            return None
    return "the message's signature does not verify with any configured signing key"
