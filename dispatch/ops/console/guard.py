"""The console's defences against other hosts and other sites: bind, Host, Origin and CSRF checks.

The console listens on loopback unless told otherwise (:func:`accepted_hosts`). Every
request must name an accepted host and the port it arrived on in its ``Host`` header,
so a page on another site whose name was rebound to 127.0.0.1 (DNS rebinding) reads
nothing. Every action (a POST) must also come from the console's own origin
(``Origin``, else ``Referer``) and carry the per-process token twice: in the form field
or the ``X-CSRF-Token`` header, and in a ``SameSite=Strict`` cookie the pages set.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from dispatch.core.errors import DispatchError

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "BindRefused",
    "Guard",
    "accepted_hosts",
    "is_loopback",
]

CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
_LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names we refuse, not bind


class BindRefused(DispatchError):
    """A listening address the console will not use as asked (a usage error)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def accepted_hosts(host: str, *, allow_remote: bool, allowed: Iterable[str] = ()) -> frozenset[str]:
    """The host names a request's ``Host`` header may carry, for a console bound to ``host``.

    A non-loopback ``host`` needs ``allow_remote``; a wildcard (``0.0.0.0``, ``::``) also
    needs the names browsers will use (``allowed``), since any name would otherwise do
    and DNS rebinding would be open again.
    """
    extra = {name.strip().lower() for name in allowed if name.strip()}
    if not is_loopback(host) and not allow_remote:
        raise BindRefused(
            f"--host {host} would serve the console beyond this machine, with your AWS "
            "credentials behind it; pass --allow-remote as well if that is what you want "
            "(and put it behind TLS and authentication)"
        )
    if host in _WILDCARDS and not extra:
        raise BindRefused(
            f"--host {host or 'ANY'} listens on every address: name the host names browsers "
            "will use with --allowed-host NAME (repeatable), so a foreign Host is refused"
        )
    names = set(_LOOPBACK_NAMES) if is_loopback(host) else set()
    if host not in _WILDCARDS:
        names.add(host.strip("[]").lower())
    return frozenset(names | extra)


def _split_host(header: str) -> tuple[str | None, int | None]:
    """(host name, port) of a ``Host`` header; port None when it names none."""
    try:
        parts = urlsplit(f"//{header}")
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    if transport is None:
        return None
    sockname = transport.get_extra_info("sockname")
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return None


@dataclass(frozen=True, slots=True)
class Guard:
    """The checks, with this process's random token."""

    hosts: frozenset[str]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def host_ok(self, request: web.Request) -> bool:
        """The ``Host`` header names an accepted host and the port the request came in on."""
        name, port = _split_host(request.headers.get("Host", ""))
        if name is None or name.lower() not in self.hosts:
            return False
        return (port or 80) == _local_port(request)

    def cookie_name(self, request: web.Request) -> str:
        """The token cookie's name: one per port, as cookies ignore ports."""
        return f"dispatch_console_csrf_{_local_port(request)}"

    def origin_ok(self, request: web.Request) -> bool:
        """The request comes from a page of this console (``Origin``, else ``Referer``)."""
        own = f"http://{request.headers.get('Host', '')}"
        origin = request.headers.get("Origin")
        if origin is None:
            referer = urlsplit(request.headers.get("Referer", ""))
            origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else None
        return origin is not None and origin.lower() == own.lower()

    def token_ok(self, request: web.Request, sent: str | None) -> bool:
        """The token came in the form (or header) and in the cookie, both this process's."""
        header = request.headers.get(CSRF_HEADER)
        given = sent if sent else header
        cookie = request.cookies.get(self.cookie_name(request))
        return bool(
            given
            and cookie
            and hmac.compare_digest(given.encode(), self.token.encode())
            and hmac.compare_digest(cookie.encode(), self.token.encode())
        )
