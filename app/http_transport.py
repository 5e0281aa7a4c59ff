"""What the HTTP transports (``openai_api.py``, ``responses/``) share: the queue of
a request's events (``HttpConnection``), the bodies that write them under the caps
(``SseBody``, ``WholeBody``), and the checks and answers of a ``/v1`` request.

A request is a client connection of its own to the relay (``Relay.attach``), under
a session id that names its transport and node (``new_sid``): the same admission,
limits, generation and store as a Socket.IO client's ``chat``.

A client that stops reading is closed, as on a WebSocket: when ``MAX_QUEUED_BYTES``
of its events wait, or one write has waited ``RESPONSE_WRITE_TIMEOUT`` seconds
(``chat_slow_clients_closed``). Its answer then goes on for ``RESUME_GRACE_SECONDS``,
for a resume.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import socketio
from .auth import Unauthorized, identify
from .delivery import Drain
from .errors import ProtocolError
from .internals import close_connection
from .openai_format import error_body, status_of
from .providers.base import TOOL_CALL, Piece
from .relay import Relay

log = logging.getLogger(__name__)

# Written while the stream is silent (a long time to the first token): proxies keep
# the connection, and a client that left is noticed at the next write.
KEEPALIVE_SECONDS = 10
KEEPALIVE = b": keep-alive\n\n"

CHUNK = "chunk"
MOVED = "moved"
# What a chunk event takes besides its text, counted as on a WebSocket (packet and
# frame header; delivery.send_chunks counts a replay's parts so). The SSE event is
# about twice that: the cap is in the same units on both transports.
_EVENT_BYTES = 85


class HttpConnection:
    """One HTTP request's events, queued by the relay for the response to write.

    The chunks waiting are counted, in the bytes they take on a WebSocket (as a
    resume's replay measures its parts, ``delivery.send_chunks``): past ``limit``
    (0: none) the client is taken to have stopped reading, nothing more is queued,
    and ``on_overflow`` is called once. A replay waits (``drained``) for the writer
    to take what waits before it sends more."""

    def __init__(self, limit: int = 0) -> None:
        eio = socketio.server.eio
        self._queue = eio.create_queue()
        self._empty = eio.get_queue_empty_exception()
        self._limit = limit
        self._lock = threading.Lock()
        # Set when what waits falls to ``_low`` bytes, for a replay waiting on it.
        self._drained = eio.create_event()
        self._low = -1
        self.queued = 0
        self.overflowed = False
        self.closed = False
        self.on_overflow: Callable[[], None] | None = None

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        if self.overflowed:
            return
        size = _size(piece) + _EVENT_BYTES if self._limit else 0
        if size:
            with self._lock:
                self.queued += size
                over = self.queued > self._limit and not self.overflowed
                if over:
                    self.overflowed = True
            if over:
                if self.on_overflow is not None:
                    self.on_overflow()
                return
        self._queue.put((CHUNK, (seq, piece), size))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._queue.put((event, payload, 0))

    def moved(self, request_id: str) -> None:
        self._queue.put((MOVED, None, 0))

    def next(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """The next event, or None after ``timeout`` seconds without one."""
        try:
            event, payload, size = self._queue.get(timeout=timeout)
        except self._empty:
            return None
        if size:
            with self._lock:
                self.queued -= size
                wake = self.queued <= self._low
            if wake:
                self._drained.set()
        return event, payload

    def drained(self, low: int, timeout: float) -> Drain:
        """Wait up to ``timeout`` seconds until at most ``low`` bytes wait."""
        with self._lock:
            if self.closed or self.overflowed:
                return "closed"
            if self.queued <= low:
                return "drained"
            self._low = low
            self._drained.clear()
        self._drained.wait(timeout)
        with self._lock:
            self._low = -1
            if self.closed or self.overflowed:
                return "closed"
            return "drained" if self.queued <= low else "waiting"

    def close(self) -> None:
        """The response ended: nothing more is written here."""
        self.closed = True
        self._drained.set()


def _size(piece: Piece) -> int:
    """About what a piece adds to its event, for the queued-bytes cap."""
    if piece[0] == TOOL_CALL:
        return len(piece[1]["arguments"]) + 40
    return len(piece[1]) + (len(piece[2]) * 60 if len(piece) > 2 else 0)


# -- a /v1 request ---------------------------------------------------------------------


def relay() -> Relay:
    return current_app.extensions["relay"]


def new_sid(relay: Relay, prefix: str) -> str:
    """A session id for one request of the transport whose ids start ``prefix``:
    the node that holds the connection follows it (``forwarding.http_node``)."""
    node = relay.cluster.node if relay.cluster is not None else "local"
    return f"{prefix}{node}:{secrets.token_hex(8)}"


def attach(relay: Relay, prefix: str, identity: str) -> tuple[str, HttpConnection]:
    """A new client connection to the relay for this request, capped as a
    WebSocket's is."""
    sid = new_sid(relay, prefix)
    connection = HttpConnection(current_app.config["MAX_QUEUED_BYTES"])
    relay.attach(sid, identity, connection)
    return sid, connection


def check_origin() -> None:
    """Refuse a browser whose origin may not use Socket.IO here either."""
    origin = request.headers.get("Origin")
    origins = current_app.extensions["origins"]
    if origin is not None and not origins.allowed(origin, request.environ):
        raise ProtocolError(
            "forbidden_origin", f"origin: {origin!r} may not use this server"
        )


def client() -> str:
    """The caller's identity, after the origin and token checks Socket.IO makes."""
    check_origin()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    auth = {"token": token.strip()} if scheme.lower() == "bearer" else None
    try:
        return identify(auth, request.environ, current_app.config)
    except Unauthorized as exc:
        message = str(exc).replace("in the auth payload", "as Authorization: Bearer")
        raise ProtocolError("unauthorized", message) from None


def refused(exc: ProtocolError) -> Response:
    """A refused request, in OpenAI's error shape, with its status."""
    status = status_of(exc.code)
    response = jsonify(error_body(exc.code, exc.message))
    response.status_code = status
    if status in (429, 503):
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after or 1))
    return response


def failed(exc: Exception) -> Response:
    """A fault in this server, in OpenAI's shape like every other error; what
    went wrong goes to the log only."""
    log.exception("%s %s failed", request.method, request.path, exc_info=exc)
    return refused(ProtocolError("internal", "the server failed; see its log"))


def answer_errors(bp: Blueprint) -> None:
    """Answer what ``bp``'s views raise in OpenAI's error shape: a refusal with its
    code's status, any other fault as ``internal`` (Flask's own HTTP errors as they
    are)."""
    bp.register_error_handler(ProtocolError, refused)
    bp.register_error_handler(Exception, _fault)


def _fault(exc: Exception) -> Response | HTTPException:
    if isinstance(exc, HTTPException):
        return exc
    return failed(exc)


def preflight(headers: str) -> Response:
    """A browser's CORS preflight, answered for the origins Socket.IO accepts."""
    check_origin()
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = headers
    response.headers["Access-Control-Max-Age"] = "600"
    return response


def cors(response: Response, expose: Sequence[str] = ()) -> Response:
    """Let a browser whose origin got this far read the response (and ``expose``)."""
    origin = request.headers.get("Origin")
    if origin is not None and response.status_code != 403:
        response.headers["Access-Control-Allow-Origin"] = origin
        if expose:
            response.headers["Access-Control-Expose-Headers"] = ", ".join(expose)
        response.headers.add("Vary", "Origin")
    return response


def as_error(payload: dict[str, Any]) -> ProtocolError:
    """An ``error`` event's payload as the error it reports."""
    return ProtocolError(
        payload["code"],
        payload["message"],
        payload.get("id"),
        retry_after=payload.get("retry_after"),
    )


def collect(
    relay: Relay, sid: str, connection: HttpConnection
) -> tuple[list[Piece], dict[str, Any]]:
    """Wait for a whole answer: its pieces and its ``done`` payload, or raise its
    error."""
    pieces: list[Piece] = []
    try:
        while True:
            event, payload = connection.next()  # type: ignore[misc]
            if event == CHUNK:
                pieces.append(payload[1])
            elif event == "done":
                return pieces, payload
            elif event == "error":
                raise as_error(payload)
            else:
                raise ProtocolError("internal", "the answer was taken elsewhere")
    finally:
        relay.disconnect(sid)


def event_stream(body: Iterable[bytes]) -> Response:
    """A ``text/event-stream`` response writing ``body`` (whose ``close`` the WSGI
    server calls when the response ends)."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # nginx: pass each event on as it comes, whatever the location's buffering.
    response.headers["X-Accel-Buffering"] = "no"
    return response


# -- the bodies ------------------------------------------------------------------------


class SseBody:
    """The body of a streamed answer: the relay's events as server-sent events,
    written as ``render`` gives them.

    ``close()`` (called by the WSGI server when the response ends, or when writing
    to a client that left fails) ends the client's connection to the relay, which
    stops the generation unless it asked to survive a disconnect.

    The WSGI server writes each event before it asks for the next: ``writing_since``
    is when the event being written was handed over, None while none is."""

    def __init__(
        self,
        relay: Relay,
        sid: str,
        connection: HttpConnection,
        stream_id: str,
        token: str,
        first: tuple[str, Any] | None = None,
    ):
        self._relay = relay
        self._sid = sid
        self._connection = connection
        self._stream_id = stream_id
        self._first = first
        self._closed = False
        self._token = token
        self._cut_lock = threading.Lock()
        self._cutting = False
        # Set once the cut is done: the response ends after its current write.
        self._cut = False
        self._environ = request.environ
        self.write_timeout: float = current_app.config["RESPONSE_WRITE_TIMEOUT"]
        self.writing_since: float | None = None
        self._full = f"{current_app.config['MAX_QUEUED_BYTES']} bytes waiting"
        self._started = False
        connection.on_overflow = self._overflowed

    def render(self, event: str, payload: Any) -> Iterator[bytes]:
        """The bytes of one relay event: a chunk's ``(seq, piece)``, or the
        ``done`` or ``error`` that ends the stream."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[bytes]:
        WRITERS.add(self)
        for data in self._events():
            self.writing_since = time.monotonic()
            yield data
            self.writing_since = None
            # Never cut before the head and the first event are out: the client
            # needs the stream's id (and resume token) to come back.
            self._started = True
            if self._connection.overflowed:
                self.cut(self._full)
            if self._cut:
                return

    def _overflowed(self) -> None:
        if self._started:
            self.cut(self._full)

    def _events(self) -> Iterator[bytes]:
        item = self._first or self._connection.next(KEEPALIVE_SECONDS)
        while True:
            while item is None:
                yield KEEPALIVE
                item = self._connection.next(KEEPALIVE_SECONDS)
            event, payload = item
            if event not in (CHUNK, "done", "error"):
                return  # moved: a resume took the stream elsewhere, or a cut
            yield from self.render(event, payload)
            if event != CHUNK:
                return
            item = self._connection.next(KEEPALIVE_SECONDS)

    def cut(self, why: str) -> None:
        """Close the response under a client that stopped reading (``why``). Its
        answer goes on for the resume grace, kept for a resume, as a WebSocket
        client's does."""
        with self._cut_lock:
            if self._cutting:
                return
            self._cutting = True
        # Before anything ends the response: its end disconnects the stream, which
        # would stop the generation.
        stream = self._relay.store.by_token(self._token)
        if stream is not None:
            stream.request.survives_disconnect = True
        log.warning("stream %s cut: %s", self._stream_id, why)
        self._relay.slow_client(self._sid)
        self._cut = True
        # A write blocked on the socket fails at once; a wait for events ends.
        close_connection(self._environ)
        self._connection.moved(self._stream_id)

    def close(self) -> None:
        WRITERS.discard(self)
        self._connection.close()
        if not self._closed:
            self._closed = True
            self._relay.disconnect(self._sid)


class WholeBody:
    """The body of a whole answer, written under the write timeout a stream has: a
    client that never reads it does not hold its connection."""

    def __init__(self, relay: Relay, sid: str, stream_id: str, body: bytes):
        self._relay = relay
        self._sid = sid
        self._id = stream_id
        self._body = body
        self._environ = request.environ
        self.write_timeout: float = current_app.config["RESPONSE_WRITE_TIMEOUT"]
        self.writing_since: float | None = None

    def __iter__(self) -> Iterator[bytes]:
        WRITERS.add(self)
        self.writing_since = time.monotonic()
        yield self._body
        self.writing_since = None

    def cut(self, why: str) -> None:
        log.warning("response %s cut: %s", self._id, why)
        self._relay.slow_client(self._sid)
        close_connection(self._environ)

    def close(self) -> None:
        self.writing_since = None
        WRITERS.discard(self)


class _Writers:
    """The responses being written, looked at twice a second for a write that has
    waited past its ``write_timeout`` (the client stopped reading)."""

    def __init__(self) -> None:
        self._active: set[SseBody | WholeBody] = set()
        self._lock = threading.Lock()
        self._watching = False

    def add(self, response: SseBody | WholeBody) -> None:
        with self._lock:
            self._active.add(response)
            start, self._watching = not self._watching, True
        if start:
            socketio.start_background_task(self._watch)

    def discard(self, response: SseBody | WholeBody) -> None:
        with self._lock:
            self._active.discard(response)

    def _watch(self) -> None:
        while True:
            socketio.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                active = list(self._active)
            for response in active:
                since = response.writing_since
                if since is not None and now - since > response.write_timeout:
                    try:
                        response.cut(f"a write waited {response.write_timeout:g} s")
                    except Exception:
                        log.exception("closing a stalled response failed")


WRITERS = _Writers()
