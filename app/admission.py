"""Admission: which new connections this process takes, decided on the Engine.IO
handshake (a request to ``/socket.io/`` without a ``sid``), before Engine.IO makes a
session for it.

A refused handshake gets an HTTP error at once, with a ``Retry-After`` and a JSON body
``{code, message, retryable}``; nothing else of the server is spent on it:

- ``server_full`` (503, retryable): the process holds ``MAX_CONNECTIONS`` sessions. By
  default that is 90 % of what the server it runs under can hold (gunicorn's
  ``worker_connections``; for gthread its threads, since a WebSocket holds a thread),
  so that ``/healthz``, ``/metrics`` and the page always find a socket free.
- ``too_many_connections`` (429): the client's address holds
  ``MAX_CONNECTIONS_PER_ADDRESS`` sessions.
- ``handshake_rate_limited`` (429, retryable): the address opened
  ``HANDSHAKES_PER_MINUTE`` in the last minute.

A session counts from its handshake until Engine.IO ends it: its ``disconnect`` event,
which every session gets, closed by either side or timed out for want of pongs, so one
that never completes the Socket.IO connect counts too.

Once connected, the client says who it is (``auth.identify``): past
``MAX_CONNECTIONS_PER_IDENTITY`` Socket.IO connections of one identity, the connect
handler refuses it with a connect error ``too_many_connections``
(``IdentityConnections``). Every count is this process's own: each node of several
counts its own connections.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from limits import parse as parse_limit
from limits.strategies import SlidingWindowCounterRateLimiter

from .auth import client_address
from .errors import RETRYABLE
from .internals import ReapedMemoryStorage, served_capacity, watch_sessions
from .metrics import Metrics
from .origins import Origins

log = logging.getLogger(__name__)

_PATH = "/socket.io/"
# The WSGI environ key under which a handshake carries its place to Engine.IO's
# connect event.
_TICKET = "chatstream.admission"
# Connections assumed when the server's own limit is unknown (python wsgi.py).
_UNKNOWN_CAPACITY = 1000
# A full server, or an address at its cap, frees places as clients leave: a few
# seconds is a fair first wait.
_RETRY_SECONDS = 5
# How often counters of addresses that stopped connecting are dropped.
_EXPIRE_SECONDS = 60.0


@dataclass(frozen=True)
class Refusal:
    """A refused handshake: its HTTP status and what the body says."""

    status: str
    code: str
    message: str
    retry_after: int

    def body(self) -> bytes:
        retryable = RETRYABLE[self.code]
        payload = {"code": self.code, "message": self.message, "retryable": retryable}
        return json.dumps(payload).encode()


class _Ticket:
    """A handshake's place: which address holds it, and the Engine.IO session that
    took it over (None while none has)."""

    __slots__ = ("address", "sid")

    def __init__(self, address: str):
        self.address = address
        self.sid: str | None = None


class Admission:
    """One process's connection limits: on handshakes and its open sessions here,
    on each identity's Socket.IO connections in ``identities``."""

    def __init__(self, config: Mapping[str, Any], metrics: Metrics):
        # 0: derived from the server at the first handshake, when the worker that
        # serves it is running (gunicorn's --preload loads the app before it is).
        self.max_sessions: int = config["MAX_CONNECTIONS"]
        self.max_per_address: int = config["MAX_CONNECTIONS_PER_ADDRESS"]
        self.trusted_proxies: list[str] = config["TRUSTED_PROXIES"]
        self.origins = Origins(config)
        self.rate = parse_limit(f"{config['HANDSHAKES_PER_MINUTE']}/minute")
        self.limiter = SlidingWindowCounterRateLimiter(ReapedMemoryStorage())
        self.identities = IdentityConnections(config["MAX_CONNECTIONS_PER_IDENTITY"])
        self._refused = metrics.refused
        self._lock = threading.Lock()
        self._open = 0
        self._per_address: dict[str, int] = {}
        # Engine.IO session id -> the address whose place it holds.
        self._sessions: dict[str, str] = {}
        self._expired_at = time.monotonic()
        metrics.sessions.set_function(lambda: self._open)

    def count_refusal(self, code: str) -> None:
        """One more connection refused with ``code`` (``chat_connections_refused``)."""
        self._refused.labels(code).inc()

    # -- the WSGI side ----------------------------------------------------------------

    def middleware(self, wsgi_app: Callable) -> Callable:
        """``wsgi_app`` behind the limits: a new handshake is refused, or takes a
        place that its Engine.IO session holds until it ends."""

        def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            if not _is_handshake(environ):
                return wsgi_app(environ, start_response)
            address = client_address(environ, self.trusted_proxies)
            refusal = self._reserve(address)
            if refusal is not None:
                self.count_refusal(refusal.code)
                return self._respond(refusal, environ, start_response)
            ticket = environ[_TICKET] = _Ticket(address)
            try:
                # A WebSocket handshake returns only when its session has ended.
                return wsgi_app(environ, start_response)
            finally:
                if ticket.sid is None:
                    # Engine.IO made no session of it (a bad request, a refused
                    # origin): the place is free again.
                    self._release(address)

        return app

    def _reserve(self, address: str) -> Refusal | None:
        if not self._within_rate(address):
            reset = self.limiter.get_window_stats(self.rate, address).reset_time
            return Refusal(
                "429 Too Many Requests",
                "handshake_rate_limited",
                f"more than {self.rate.amount} connections a minute from this "
                "address; wait and retry",
                max(1, round(reset - time.time())),
            )
        with self._lock:
            if not self.max_sessions:
                self.max_sessions = _derived_max_sessions()
            held = self._per_address.get(address, 0)
            if held >= self.max_per_address:
                return self._address_full()
            if self._open >= self.max_sessions:
                return Refusal(
                    "503 Service Unavailable",
                    "server_full",
                    "the server holds all the connections it can; retrying shortly",
                    _RETRY_SECONDS,
                )
            self._open += 1
            self._per_address[address] = held + 1
        return None

    def _release(self, address: str) -> None:
        with self._lock:
            self._open -= 1
            self._free_address_place(address)

    # -- HTTP requests whose body is arriving (app/http_limits.py) --------------------

    def take_request(self, address: str) -> Refusal | None:
        """An HTTP request whose body is still arriving holds a place of its
        address, beside its sessions, until ``release_request``."""
        with self._lock:
            held = self._per_address.get(address, 0)
            if held >= self.max_per_address:
                return self._address_full()
            self._per_address[address] = held + 1
        return None

    def release_request(self, address: str) -> None:
        with self._lock:
            self._free_address_place(address)

    def _address_full(self) -> Refusal:
        return Refusal(
            "429 Too Many Requests",
            "too_many_connections",
            f"this address already holds {self.max_per_address} connections; "
            "close one first",
            _RETRY_SECONDS,
        )

    def _free_address_place(self, address: str) -> None:
        # Under self._lock.
        held = self._per_address.pop(address, 0) - 1
        if held > 0:
            self._per_address[address] = held

    def _within_rate(self, address: str) -> bool:
        now = time.monotonic()
        if now - self._expired_at > _EXPIRE_SECONDS:
            self._expired_at = now
            self.limiter.storage.expire()
        return self.limiter.hit(self.rate, address)

    def _respond(
        self, refusal: Refusal, environ: Mapping[str, Any], start_response: Callable
    ) -> list[bytes]:
        body = refusal.body()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(refusal.retry_after)),
        ]
        origin = environ.get("HTTP_ORIGIN")
        if self.origins.allowed(origin, environ):
            # Else a page on an allowed origin could not read why it was refused.
            headers += [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
            ]
        start_response(refusal.status, headers)
        return [body]

    # -- the Engine.IO side -----------------------------------------------------------

    def watch(self, eio: Any) -> None:
        """Hand each handshake's place to the Engine.IO session made of it, and free
        it when that session ends."""
        watch_sessions(eio, self._session_opened, self._session_closed)

    def _session_opened(self, sid: str, environ: dict[str, Any]) -> None:
        ticket = environ.get(_TICKET)
        if ticket is not None:
            with self._lock:
                self._sessions[sid] = ticket.address
            ticket.sid = sid

    def _session_closed(self, sid: str) -> None:
        with self._lock:
            address = self._sessions.pop(sid, None)
        if address is not None:
            self._release(address)


class IdentityConnections:
    """Socket.IO connections per identity (a token's user, or an anonymous client's
    address) on this process, at most ``limit`` each."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        # Socket.IO session id -> its identity.
        self._identities: dict[str, str] = {}

    def take(self, sid: str, identity: str) -> bool:
        """Count ``sid`` against ``identity``; False when that holds ``limit``."""
        with self._lock:
            held = self._held.get(identity, 0)
            if held >= self.limit:
                return False
            self._held[identity] = held + 1
            self._identities[sid] = identity
        return True

    def release(self, sid: str) -> None:
        with self._lock:
            identity = self._identities.pop(sid, None)
            if identity is None:
                return
            held = self._held.pop(identity) - 1
            if held > 0:
                self._held[identity] = held


def _is_handshake(environ: Mapping[str, Any]) -> bool:
    # Only a GET without a sid makes a session; everything else belongs to one.
    return (
        environ.get("REQUEST_METHOD") == "GET"
        and environ.get("PATH_INFO", "").startswith(_PATH)
        and "sid" not in urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    )


def _derived_max_sessions() -> int:
    capacity, source = served_capacity() or (_UNKNOWN_CAPACITY, "assumed: no gunicorn")
    # The rest stays free for /healthz, /metrics, the page and the model list.
    limit = max(1, capacity - max(1, capacity // 10))
    log.info("at most %d open connections, 90%% of %d (%s)", limit, capacity, source)
    return limit
