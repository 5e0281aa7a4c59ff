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
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import socketio
from .auth import Unauthorized, identify
from .delivery import HTTP_SID_PREFIX, origin_allowed
from .openai_format import Completion, error_body, parse_body, status_of
from .protocol import ProtocolError
from .providers.base import REASONING, Kind
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


class HttpConnection:
    """One HTTP request's events, queued by the relay for the response to write."""

    def __init__(self) -> None:
        eio = socketio.server.eio
        self._queue = eio.create_queue()
        self._empty = eio.get_queue_empty_exception()

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        self._queue.put((_CHUNK, (seq, kind, delta)))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._queue.put((event, payload))

    def moved(self, request_id: str) -> None:
        self._queue.put((_MOVED, None))

    def next(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """The next event, or None after ``timeout`` seconds without one."""
        try:
            return self._queue.get(timeout=timeout)
        except self._empty:
            return None


def _relay() -> Relay:
    return current_app.extensions["relay"]


def _new_sid(relay: Relay) -> str:
    node = relay.cluster.node if relay.cluster is not None else "local"
    return f"{HTTP_SID_PREFIX}{node}:{secrets.token_hex(8)}"


def _check_origin() -> None:
    """Refuse a browser whose origin may not use Socket.IO here either."""
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(socketio, request.environ, origin):
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
def _preflight(completion_id: str | None = None) -> Response:
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
    return jsonify(
        object="list",
        data=[
            {"id": model, "object": "model", "created": 0, "owned_by": "chatstream"}
            for model in offered
        ],
    )


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    """Sent by an HTTP client (an OpenAI SDK, curl) to start a generation.

    That client receives the answer: as server-sent ``chat.completion.chunk`` events
    ending with ``data: [DONE]``, or, without ``stream``, one ``chat.completion``."""
    relay = _relay()
    identity = _client()
    body = parse_body(request.get_json(silent=True), relay.limits)
    sid = _new_sid(relay)
    connection = HttpConnection()
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
    events = SseResponse(relay, sid, connection, completion, first, body.include_usage)
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
    connection = HttpConnection()
    relay.attach(sid, identity, connection)
    try:
        relay.resume(sid, completion_id, token, after, identity)
    except ProtocolError:
        relay.disconnect(sid)
        raise
    model, created = described or ("", 0)
    completion = Completion(completion_id, model, created)
    completion.started = after >= 0
    events = SseResponse(relay, sid, connection, completion, None, include_usage=True)
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
    return ProtocolError(payload["code"], payload["message"], payload.get("id"))


def _whole(
    relay: Relay, sid: str, connection: HttpConnection, completion: Completion
) -> Response:
    """Wait for the whole answer, and give it as one ``chat.completion``."""
    parts: dict[str, list[str]] = {"answer": [], "reasoning": []}
    try:
        while True:
            event, payload = connection.next()  # type: ignore[misc]
            if event == _CHUNK:
                _, kind, delta = payload
                parts["reasoning" if kind == REASONING else "answer"].append(delta)
            elif event == "done":
                whole = completion.whole(
                    "".join(parts["answer"]), "".join(parts["reasoning"]), payload
                )
                return jsonify(whole)
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
    stops the generation unless it asked to survive a disconnect."""

    def __init__(
        self,
        relay: Relay,
        sid: str,
        connection: HttpConnection,
        completion: Completion,
        first: tuple[str, Any] | None,
        include_usage: bool,
    ):
        self._relay = relay
        self._sid = sid
        self._connection = connection
        self._completion = completion
        self._first = first
        self._include_usage = include_usage
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        item = self._first or self._connection.next(KEEPALIVE_SECONDS)
        while True:
            while item is None:
                yield b": keep-alive\n\n"
                item = self._connection.next(KEEPALIVE_SECONDS)
            event, payload = item
            if event == _CHUNK:
                seq, kind, delta = payload
                yield _event(self._completion.chunk(kind, delta), seq)
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
            else:  # moved: a resume took the stream to another connection
                return
            item = self._connection.next(KEEPALIVE_SECONDS)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._relay.disconnect(self._sid)


def _event(data: dict[str, Any], seq: int | None = None) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if seq is None:
        return f"data: {text}\n\n".encode()
    return f"id: {seq}\ndata: {text}\n\n".encode()
