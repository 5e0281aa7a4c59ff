"""Which hosts and browser origins may use this server: one rule for every route, the
page, the HTTP API and Socket.IO alike.

**Hosts** (``ALLOWED_HOSTS``). A page whose host name an attacker controls can make
that name resolve to this server (DNS rebinding): its requests then come with
``Host: evil.example:PORT`` and ``Origin: http://evil.example:PORT``, same-origin by
the browser's rules, and would use this server, and its upstream key, as if they were
its own page. So a request is answered only when its ``Host`` is one this server is
known by; any other gets 400 ``host_not_allowed`` on every route, Engine.IO's
handshakes included. IP addresses and ``localhost`` are always allowed: a browser
names an address as ``Host`` only when it connected to that address, and resolves
``localhost`` itself, so neither can be rebound. Names are what ``ALLOWED_HOSTS``
lists (by default ``HOST``, when that is a name); ``*`` allows any, for a proxy in
front that checks ``Host`` itself.

**Proxies** (``TRUSTED_PROXIES``). ``X-Forwarded-Host``, ``-Proto`` and ``-For`` are
believed only from a trusted proxy's address; from any other peer they are removed
before anything reads them (Engine.IO reads the first two for its own origin rule).

**Origins** (``CORS_ALLOWED_ORIGINS``). A browser may connect from the page's own
origin (the request's scheme and allowed host, or the forwarded ones from a trusted
proxy) and from each configured origin; ``*`` lets any origin in.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .openai_format import ERROR_OBJECT_PATHS, error_body

log = logging.getLogger(__name__)

CODE = "host_not_allowed"
# Headers a client could forge to be taken for a proxy's report.
_FORWARDED = (
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_FORWARDED",
)
# A host name or an IPv4 address, or a bracketed IPv6 one, and an optional port:
# all a browser ever sends as Host.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?", re.I)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A refused Host is logged at most this often: enough for an operator to see which
# name to allow, too rarely for a client to fill the log.
_LOG_EVERY_SECONDS = 60.0


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` value's lower-case name (an IPv6 address without its brackets) and
    port; None when it is not a host a browser would send."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    name, port = match.group(1).lower(), match.group(2)
    if name.startswith("["):
        name = name[1:-1]
        if not _is_address(name):
            return None
    return name, int(port) if port else None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """An origin as (scheme, host, port), the port filled in for the scheme."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]


class Origins:
    """The host, proxy and origin rules of one app's configuration."""

    def __init__(self, config: Mapping[str, Any]):
        self.proxies = [
            ipaddress.ip_network(proxy, strict=False)
            for proxy in config["TRUSTED_PROXIES"]
        ]
        self.any_host = "*" in config["ALLOWED_HOSTS"]
        self.hosts = self._hosts(config["ALLOWED_HOSTS"] or _names([config["HOST"]]))
        self.any_origin = "*" in config["CORS_ALLOWED_ORIGINS"]
        self.origins = set()
        for origin in config["CORS_ALLOWED_ORIGINS"]:
            if origin == "*":
                continue
            key = _origin_key(origin)
            if key is None:
                raise ValueError(
                    f"CORS_ALLOWED_ORIGINS: {origin!r} is not an origin "
                    "(scheme://host[:port])"
                )
            self.origins.add(key)
        self._logged_at = -_LOG_EVERY_SECONDS

    @staticmethod
    def _hosts(entries: Iterable[str]) -> set[tuple[str, int | None]]:
        hosts = set()
        for entry in entries:
            if entry == "*":
                continue
            host = split_host(entry)
            if host is None:
                raise ValueError(
                    f"ALLOWED_HOSTS: {entry!r} is not a host name (name or name:port)"
                )
            hosts.add(host)
        return hosts

    # -- who is asking ----------------------------------------------------------------

    def from_proxy(self, environ: Mapping[str, Any]) -> bool:
        """Whether the peer is a trusted proxy, whose X-Forwarded-* are believed."""
        if not self.proxies:
            return False
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR") or "")
        except ValueError:
            return False
        return any(peer in network for network in self.proxies)

    @staticmethod
    def scheme(environ: Mapping[str, Any]) -> str:
        """The scheme the browser used (``X-Forwarded-Proto`` is only there from a
        trusted proxy, by the time anything asks)."""
        forwarded = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0]
        forwarded = forwarded.strip().lower()
        if forwarded in _DEFAULT_PORTS:
            return forwarded
        return environ.get("wsgi.url_scheme", "http")

    @staticmethod
    def host(environ: Mapping[str, Any]) -> str | None:
        """The host the browser asked for: the trusted proxy's ``X-Forwarded-Host``
        when it sent one, else ``Host``."""
        forwarded = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
        return forwarded or environ.get("HTTP_HOST")

    # -- the rules --------------------------------------------------------------------

    def host_allowed(self, value: str, scheme: str) -> bool:
        """Whether a browser that sent ``Host: value`` may be answered."""
        if self.any_host:
            return True
        host = split_host(value)
        if host is None:
            return False
        name, port = host
        if name == "localhost" or _is_address(name):
            return True
        port = port or _DEFAULT_PORTS.get(scheme)
        return (name, None) in self.hosts or (name, port) in self.hosts

    def allowed(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """Whether a browser page at ``origin`` may use this server: the page's own
        origin, a configured one, or any with ``*``. Engine.IO calls it (its
        ``cors_allowed_origins``), the HTTP API and admission's refusals too."""
        if not origin:
            return False
        if self.any_origin:
            return True
        key = _origin_key(origin)
        if key is None:
            return False
        return key in self.origins or key == self._own_origin(environ)

    def _own_origin(self, environ: Mapping[str, Any]) -> tuple[str, str, int] | None:
        host = self.host(environ)
        split = split_host(host) if host else None
        if split is None:
            return None
        scheme = self.scheme(environ)
        name, port = split
        return scheme, name, port or _DEFAULT_PORTS.get(scheme, 0)

    # -- the WSGI side ----------------------------------------------------------------

    def middleware(self, wsgi_app: Callable) -> Callable:
        """``wsgi_app`` behind the proxy and host rules: forwarded headers from an
        untrusted peer are dropped, and a request for a host not allowed is
        refused before anything else sees it."""

        def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            if not self.from_proxy(environ):
                for key in _FORWARDED:
                    environ.pop(key, None)
            host = self.host(environ)
            # No browser leaves Host out; a program that does is not rebound.
            if host is not None and not self.host_allowed(host, self.scheme(environ)):
                return self._refuse(host, environ, start_response)
            return wsgi_app(environ, start_response)

        return app

    def _refuse(
        self, host: str, environ: Mapping[str, Any], start_response: Callable
    ) -> list[bytes]:
        shown = host if len(host) <= 100 else host[:100] + "…"
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_SECONDS:
            self._logged_at = now
            log.warning(
                "refused a request for Host %r: not in ALLOWED_HOSTS (refusals are "
                "logged at most once a minute)",
                shown,
            )
        message = (
            f"Host: {shown!r} is not a name this server answers to; "
            "its operator can add it to ALLOWED_HOSTS"
        )
        if environ.get("PATH_INFO", "").startswith(ERROR_OBJECT_PATHS):
            payload: dict[str, Any] = error_body(CODE, message)
        else:
            payload = {"code": CODE, "message": message, "retryable": False}
        body = json.dumps(payload).encode()
        start_response(
            "400 Bad Request",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [body]


def _names(hosts: Iterable[str]) -> list[str]:
    """Those of ``hosts`` that are names: addresses are allowed anyway, and a
    wildcard address (0.0.0.0) names nothing."""
    return [host for host in hosts if host and not _is_address(host.strip("[]"))]
