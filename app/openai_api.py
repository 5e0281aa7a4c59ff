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
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .delivery import HTTP_SID_PREFIX
from .errors import ProtocolError
from .http_transport import (
    CHUNK,
    HttpConnection,
    SseBody,
    WholeBody,
    answer_errors,
    as_error,
    attach,
    client,
    collect,
    cors,
    event_stream,
    preflight,
    refused,
    relay,
)
from .openai_format import (
    ERROR_OBJECT_PATHS,
    Completion,
    error_body,
    parse_body,
    read_json,
)
from .relay import Relay

bp = Blueprint("openai_api", __name__)
log = logging.getLogger(__name__)

STREAM_ID_HEADER = "Chatstream-Stream-Id"
RESUME_TOKEN_HEADER = "Chatstream-Resume-Token"


answer_errors(bp)


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _no_route(exc: HTTPException) -> Response | HTTPException:
    """Under ``/v1/`` and ``/api/``, a path or method this server does not serve
    gets OpenAI's error shape, which SDKs read (not Flask's HTML page)."""
    if not request.path.startswith(ERROR_OBJECT_PATHS):
        return exc
    if exc.code == 405:
        allowed = ", ".join(exc.valid_methods or ())
        error = ProtocolError(
            "method_not_allowed", f"method: {request.method} is not served here"
        )
        response = refused(error)
        response.headers["Allow"] = allowed
        return response
    return refused(
        ProtocolError("not_found", f"path: {request.path!r} is not served here")
    )


@bp.after_request
def _cors(response: Response) -> Response:
    return cors(response, (STREAM_ID_HEADER, RESUME_TOKEN_HEADER))


@bp.route("/v1/chat/completions", methods=["OPTIONS"])
@bp.route("/v1/chat/completions/<completion_id>/events", methods=["OPTIONS"])
@bp.route("/v1/models", methods=["OPTIONS"])
@bp.route("/v1/models/<path:model_id>", methods=["OPTIONS"])
def _preflight(
    completion_id: str | None = None, model_id: str | None = None
) -> Response:
    """A browser's CORS preflight, answered for the origins Socket.IO accepts."""
    return preflight("Authorization, Content-Type, Last-Event-ID")


@bp.get("/v1/models")
def models() -> Response:
    """The models clients may choose, in OpenAI's list shape; the first is the
    default."""
    client()
    provider = relay().provider
    default = provider.default_model
    offered = [default, *(m for m in provider.models if m != default)]
    return jsonify(object="list", data=[_model(model) for model in offered])


@bp.get("/v1/models/<path:model_id>")
def model(model_id: str) -> Response:
    """One model clients may choose, as OpenAI's ``GET /v1/models/{id}`` gives it
    (model ids may hold slashes: ``Qwen/Qwen2.5-7B-Instruct``)."""
    client()
    if model_id not in relay().provider.models:
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
    core = relay()
    identity = client()
    body = parse_body(read_json(request.get_data(cache=False)), core.limits)
    sid, connection = attach(core, HTTP_SID_PREFIX, identity)
    try:
        stream = core.admit(sid, body.chat)
    except ProtocolError:
        core.disconnect(sid)
        raise
    completion = Completion(stream.id, body.chat.model, stream.created)
    if not body.stream:
        pieces, done = collect(core, sid, connection)
        whole = json.dumps(completion.whole(pieces, done)).encode()
        return Response(
            WholeBody(core, sid, completion.id, whole), mimetype="application/json"
        )
    first = connection.next()
    if first is not None and first[0] == "error":
        # Nothing was sent yet: the failure gets its HTTP status.
        core.disconnect(sid)
        raise as_error(first[1])
    events = SseResponse(
        core, sid, connection, completion, first, body.include_usage, stream.token
    )
    return _sse(events, stream.id, stream.token)


@bp.get("/v1/chat/completions/<completion_id>/events")
def resume_events(completion_id: str) -> Response:
    """Sent by an HTTP client whose stream was cut, with the resume token and the
    last ``id`` it holds (``Last-Event-ID``).

    That client receives every chunk after it, then the live ones and the end."""
    core = relay()
    identity = client()
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
    described = core.described(token)
    sid, connection = attach(core, HTTP_SID_PREFIX, identity)
    try:
        core.resume(sid, completion_id, token, after, identity)
    except ProtocolError:
        core.disconnect(sid)
        raise
    model, created = described or ("", 0)
    completion = Completion(completion_id, model, created)
    completion.started = after >= 0
    events = SseResponse(core, sid, connection, completion, None, True, token)
    return _sse(events, completion_id, token)


def _sse(events: SseResponse, stream_id: str, token: str) -> Response:
    response = event_stream(events)
    response.headers[STREAM_ID_HEADER] = stream_id
    response.headers[RESUME_TOKEN_HEADER] = token
    return response


class SseResponse(SseBody):
    """A streamed answer as ``chat.completion.chunk`` events, each chunk with its
    ``id: <seq>``, ending with ``data: [DONE]`` (or with the error)."""

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
        super().__init__(relay, sid, connection, completion.id, token, first)
        self._completion = completion
        self._include_usage = include_usage

    def render(self, event: str, payload: Any) -> Iterator[bytes]:
        if event == CHUNK:
            seq, piece = payload
            yield _event(self._completion.chunk(piece), seq)
        elif event == "done":
            yield _event(self._completion.finish(payload))
            if self._include_usage:
                yield _event(self._completion.usage_chunk(payload))
            yield b"data: [DONE]\n\n"
        else:
            # Mid-stream, the status is sent: the error is the last event, in the
            # shape OpenAI's SDKs raise.
            yield _event(error_body(payload["code"], payload["message"]))


def _event(data: dict[str, Any], seq: int | None = None) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if seq is None:
        return f"data: {text}\n\n".encode()
    return f"id: {seq}\ndata: {text}\n\n".encode()
