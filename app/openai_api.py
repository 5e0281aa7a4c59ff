"""The HTTP transport: OpenAI's ``/v1/chat/completions``, served from the relay's core.

A request is a client connection of its own to the relay (``Relay.attach``), under
an ``http:`` session id: the same admission, limits, generation and store as a
Socket.IO client's ``chat``. Its events are queued on an ``HttpConnection``, and the
response writes them, as server-sent events (``stream: true``) or as one
``chat.completion`` at the end.

Each SSE chunk carries ``id: <seq>``, and the response's headers give the stream's
id and resume token: ``GET /v1/chat/completions/<id>/events`` with the token and a
``Last-Event-ID`` replays what came after that seq, then follows live. A client that
disconnects stops its generation, as ``stop`` does (OpenAI's own behaviour), unless
its request set ``background: true``: then it runs on for ``RESUME_GRACE_SECONDS``.

A client that stops reading is closed, as on a WebSocket: when ``MAX_QUEUED_BYTES``
of its events wait, or one write has waited ``RESPONSE_WRITE_TIMEOUT`` seconds
(``chat_slow_clients_closed``). Its answer then goes on for ``RESUME_GRACE_SECONDS``,
for the same resume.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import socketio
from .auth import Unauthorized, identify
from .delivery import HTTP_SID_PREFIX, Drain
from .errors import ProtocolError
from .internals import close_connection
from .openai_format import Completion, error_body, parse_body, read_json, status_of
from .providers.base import TOOL_CALL, Piece
from .relay import Relay

bp = Blueprint("openai_api", __name__)
log = logging.getLogger(__name__)

STREAM_ID_HEADER = "Chatstream-Stream-Id"
RESUME_TOKEN_HEADER = "Chatstream-Resume-Token"
# Written while the stream is silent (a long time to the first token): proxies keep
# the connection, and a client that left is noticed at the next write.
KEEPALIVE_SECONDS = 10

_CHUNK = "chunk"
_MOVED = "moved"
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
        self._queue.put((_CHUNK, (seq, piece), size))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._queue.put((event, payload, 0))

    def moved(self, request_id: str) -> None:
        self._queue.put((_MOVED, None, 0))

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


def _relay() -> Relay:
    return current_app.extensions["relay"]


def _new_sid(relay: Relay) -> str:
    node = relay.cluster.node if relay.cluster is not None else "local"
    return f"{HTTP_SID_PREFIX}{node}:{secrets.token_hex(8)}"


def _check_origin() -> None:
    """Refuse a browser whose origin may not use Socket.IO here either."""
    origin = request.headers.get("Origin")
    origins = current_app.extensions["origins"]
    if origin is not None and not origins.allowed(origin, request.environ):
        raise ProtocolError(
            "forbidden_origin", f"origin: {origin!r} may not use this server"
        )


def _client() -> str:
    """The caller's identity, after the origin and token checks Socket.IO makes."""
    _check_origin()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    auth = {"token": token.strip()} if scheme.lower() == "bearer" else None
    try:
        return identify(auth, request.environ, current_app.config)
    except Unauthorized as exc:
        message = str(exc).replace("in the auth payload", "as Authorization: Bearer")
        raise ProtocolError("unauthorized", message) from None


@bp.errorhandler(ProtocolError)
def _refused(exc: ProtocolError) -> Response:
    status = status_of(exc.code)
    response = jsonify(error_body(exc.code, exc.message))
    response.status_code = status
    if status in (429, 503):
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after or 1))
    return response


@bp.errorhandler(Exception)
def _failed(exc: Exception) -> Response | HTTPException:
    """A fault in this server, in OpenAI's shape like every other error; what
    went wrong goes to the log only."""
    if isinstance(exc, HTTPException):
        return exc
    log.exception("%s %s failed", request.method, request.path, exc_info=exc)
    return _refused(ProtocolError("internal", "the server failed; see its log"))


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _no_route(exc: HTTPException) -> Response | HTTPException:
    """Under ``/v1/``, a path or method this server does not serve gets OpenAI's
    error shape, which SDKs read (not Flask's HTML page)."""
    if not request.path.startswith("/v1/"):
        return exc
    if exc.code == 405:
        allowed = ", ".join(exc.valid_methods or ())
        error = ProtocolError(
            "method_not_allowed", f"method: {request.method} is not served here"
        )
        response = _refused(error)
        response.headers["Allow"] = allowed
        return response
    return _refused(
        ProtocolError("not_found", f"path: {request.path!r} is not served here")
    )


@bp.after_request
def _cors(response: Response) -> Response:
    origin = request.headers.get("Origin")
    if origin is not None and response.status_code != 403:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = (
            f"{STREAM_ID_HEADER}, {RESUME_TOKEN_HEADER}"
        )
        response.headers.add("Vary", "Origin")
    return response


@bp.route("/v1/chat/completions", methods=["OPTIONS"])
@bp.route("/v1/chat/completions/<completion_id>/events", methods=["OPTIONS"])
@bp.route("/v1/models", methods=["OPTIONS"])
@bp.route("/v1/models/<path:model_id>", methods=["OPTIONS"])
def _preflight(
    completion_id: str | None = None, model_id: str | None = None
) -> Response:
    """A browser's CORS preflight, answered for the origins Socket.IO accepts."""
    _check_origin()
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = (
        "Authorization, Content-Type, Last-Event-ID"
    )
    response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.get("/v1/models")
def models() -> Response:
    """The models clients may choose, in OpenAI's list shape; the first is the
    default."""
    _client()
    provider = _relay().provider
    default = provider.default_model
    offered = [default, *(m for m in provider.models if m != default)]
    return jsonify(object="list", data=[_model(model) for model in offered])


@bp.get("/v1/models/<path:model_id>")
def model(model_id: str) -> Response:
    """One model clients may choose, as OpenAI's ``GET /v1/models/{id}`` gives it
    (model ids may hold slashes: ``Qwen/Qwen2.5-7B-Instruct``)."""
    _client()
    if model_id not in _relay().provider.models:
        raise ProtocolError(
            "model_not_found", f"model: {model_id!r} is not offered here"
        )
    return jsonify(_model(model_id))


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "chatstream"}


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    """Sent by an HTTP client (an OpenAI SDK, curl) to start a generation.

    That client receives the answer: as server-sent ``chat.completion.chunk`` events
    ending with ``data: [DONE]``, or, without ``stream``, one ``chat.completion``."""
    relay = _relay()
    identity = _client()
    body = parse_body(read_json(request.get_data(cache=False)), relay.limits)
    sid = _new_sid(relay)
    connection = HttpConnection(current_app.config["MAX_QUEUED_BYTES"])
    relay.attach(sid, identity, connection)
    try:
        stream = relay.admit(sid, body.chat)
    except ProtocolError:
        relay.disconnect(sid)
        raise
    completion = Completion(stream.id, body.chat.model, stream.created)
    if not body.stream:
        return _whole(relay, sid, connection, completion)
    first = connection.next()
    if first is not None and first[0] == "error":
        # Nothing was sent yet: the failure gets its HTTP status.
        relay.disconnect(sid)
        raise _as_error(first[1])
    events = SseResponse(
        relay, sid, connection, completion, first, body.include_usage, stream.token
    )
    return _sse(events, stream.id, stream.token)


@bp.get("/v1/chat/completions/<completion_id>/events")
def resume_events(completion_id: str) -> Response:
    """Sent by an HTTP client whose stream was cut, with the resume token and the
    last ``id`` it holds (``Last-Event-ID``).

    That client receives every chunk after it, then the live ones and the end."""
    relay = _relay()
    identity = _client()
    token = request.args.get("token") or request.headers.get(RESUME_TOKEN_HEADER)
    if not token:
        raise ProtocolError(
            "invalid_request",
            f"token: the resume token is required (query or {RESUME_TOKEN_HEADER})",
        )
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    try:
        after = -1 if last in (None, "") else int(last)
    except ValueError:
        raise ProtocolError(
            "invalid_request", f"Last-Event-ID: {last!r} is not a chunk's id"
        ) from None
    if after < -1:
        raise ProtocolError("invalid_request", "Last-Event-ID: must be -1 or more")
    described = relay.described(token)
    sid = _new_sid(relay)
    connection = HttpConnection(current_app.config["MAX_QUEUED_BYTES"])
    relay.attach(sid, identity, connection)
    try:
        relay.resume(sid, completion_id, token, after, identity)
    except ProtocolError:
        relay.disconnect(sid)
        raise
    model, created = described or ("", 0)
    completion = Completion(completion_id, model, created)
    completion.started = after >= 0
    events = SseResponse(relay, sid, connection, completion, None, True, token)
    return _sse(events, completion_id, token)


def _sse(events: SseResponse, stream_id: str, token: str) -> Response:
    response = Response(events, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # nginx: pass each event on as it comes, whatever the location's buffering.
    response.headers["X-Accel-Buffering"] = "no"
    response.headers[STREAM_ID_HEADER] = stream_id
    response.headers[RESUME_TOKEN_HEADER] = token
    return response


def _as_error(payload: dict[str, Any]) -> ProtocolError:
    return ProtocolError(
        payload["code"],
        payload["message"],
        payload.get("id"),
        retry_after=payload.get("retry_after"),
    )


def _whole(
    relay: Relay, sid: str, connection: HttpConnection, completion: Completion
) -> Response:
    """Wait for the whole answer, and give it as one ``chat.completion``."""
    pieces: list[Piece] = []
    try:
        while True:
            event, payload = connection.next()  # type: ignore[misc]
            if event == _CHUNK:
                pieces.append(payload[1])
            elif event == "done":
                whole = json.dumps(completion.whole(pieces, payload)).encode()
                body = WholeBody(relay, sid, completion.id, whole)
                return Response(body, mimetype="application/json")
            elif event == "error":
                raise _as_error(payload)
            else:
                raise ProtocolError("internal", "the answer was taken elsewhere")
    finally:
        relay.disconnect(sid)


class SseResponse:
    """The body of a streamed answer: the relay's events as SSE, one write each.

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
        completion: Completion,
        first: tuple[str, Any] | None,
        include_usage: bool,
        token: str,
    ):
        self._relay = relay
        self._sid = sid
        self._connection = connection
        self._completion = completion
        self._first = first
        self._include_usage = include_usage
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

    def __iter__(self) -> Iterator[bytes]:
        _WRITERS.add(self)
        for data in self._events():
            self.writing_since = time.monotonic()
            yield data
            self.writing_since = None
            # Never cut before the head and the first event are out: the client
            # needs the stream's id and resume token to come back.
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
                yield b": keep-alive\n\n"
                item = self._connection.next(KEEPALIVE_SECONDS)
            event, payload = item
            if event == _CHUNK:
                seq, piece = payload
                yield _event(self._completion.chunk(piece), seq)
            elif event == "done":
                yield _event(self._completion.finish(payload))
                if self._include_usage:
                    yield _event(self._completion.usage_chunk(payload))
                yield b"data: [DONE]\n\n"
                return
            elif event == "error":
                # Mid-stream, the status is sent: the error is the last event, in
                # the shape OpenAI's SDKs raise.
                yield _event(error_body(payload["code"], payload["message"]))
                return
            else:  # moved: a resume took the stream elsewhere, or the client was cut
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
        log.warning("stream %s cut: %s", self._completion.id, why)
        self._relay.slow_client(self._sid)
        self._cut = True
        # A write blocked on the socket fails at once; a wait for events ends.
        close_connection(self._environ)
        self._connection.moved(self._completion.id)

    def close(self) -> None:
        _WRITERS.discard(self)
        self._connection.close()
        if not self._closed:
            self._closed = True
            self._relay.disconnect(self._sid)


class WholeBody:
    """The body of a whole ``chat.completion``, written under the write timeout
    a stream has: a client that never reads it does not hold its connection."""

    def __init__(self, relay: Relay, sid: str, completion_id: str, body: bytes):
        self._relay = relay
        self._sid = sid
        self._id = completion_id
        self._body = body
        self._environ = request.environ
        self.write_timeout: float = current_app.config["RESPONSE_WRITE_TIMEOUT"]
        self.writing_since: float | None = None

    def __iter__(self) -> Iterator[bytes]:
        _WRITERS.add(self)
        self.writing_since = time.monotonic()
        yield self._body
        self.writing_since = None

    def cut(self, why: str) -> None:
        log.warning("response %s cut: %s", self._id, why)
        self._relay.slow_client(self._sid)
        close_connection(self._environ)

    def close(self) -> None:
        self.writing_since = None
        _WRITERS.discard(self)


class _Writers:
    """The responses being written, looked at twice a second for a write that has
    waited past its ``write_timeout`` (the client stopped reading)."""

    def __init__(self) -> None:
        self._active: set[SseResponse | WholeBody] = set()
        self._lock = threading.Lock()
        self._watching = False

    def add(self, response: SseResponse | WholeBody) -> None:
        with self._lock:
            self._active.add(response)
            start, self._watching = not self._watching, True
        if start:
            socketio.start_background_task(self._watch)

    def discard(self, response: SseResponse | WholeBody) -> None:
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


_WRITERS = _Writers()


def _event(data: dict[str, Any], seq: int | None = None) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if seq is None:
        return f"data: {text}\n\n".encode()
    return f"id: {seq}\ndata: {text}\n\n".encode()
