"""OpenAI's Responses API over HTTP: ``POST /v1/responses`` and
``GET /v1/responses/{id}``, served from the relay's core.

A request is a client connection of its own to the relay, under a ``responses:``
session id (its own transport: its streams resume over it only, and are counted
under ``transport="responses"``), with the same admission, limits, generation, store
and caps as the Chat Completions transport (``http_transport.py``). Its body is
translated into a ``ChatRequest`` (``request.py``), and the relay's events into the
Responses API's (``events.py``).

A client that disconnects stops its generation, unless its request set
``background: true``: then it runs on for ``RESUME_GRACE_SECONDS``. A background
request without ``stream`` is answered at once with the response in progress, and
its generation runs to its end (``Unread``).
``GET /v1/responses/{id}`` gives the response object as it stands; with
``stream=true`` it replays the response's events after ``starting_after`` (every
one without it), then follows live, on any node (``ids.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from ..auth import may_resume
from ..chat_request import ChatRequest
from ..conversations import History
from ..delivery import RESPONSES_SID_PREFIX, Drain
from ..errors import ProtocolError
from ..http_transport import (
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
    new_sid,
    preflight,
    relay,
)
from ..openai_format import read_json
from ..providers.base import Piece
from ..relay import Relay
from ..streams import Event
from .events import ResponseEvents, encode, skeleton
from .ids import ResponseIds
from .request import echo, parse_body
from .stored import kept, read_back

bp = Blueprint("responses_api", __name__)


@bp.record_once
def _setup(state: Any) -> None:
    state.app.extensions["response_ids"] = ResponseIds(state.app.extensions["relay"])


def _ids() -> ResponseIds:
    return current_app.extensions["response_ids"]


answer_errors(bp)


@bp.after_request
def _cors(response: Response) -> Response:
    return cors(response)


@bp.route("/v1/responses", methods=["OPTIONS"])
@bp.route("/v1/responses/<response_id>", methods=["OPTIONS"])
def _preflight(response_id: str | None = None) -> Response:
    """A browser's CORS preflight, answered for the origins Socket.IO accepts."""
    return preflight("Authorization, Content-Type")


@bp.post("/v1/responses")
def create() -> Response:
    """Sent by an HTTP client (an OpenAI SDK, the Vercel AI SDK, curl) to start a
    generation.

    That client receives the answer: as the Responses API's server-sent events
    (``stream: true``), or as one response object at the end."""
    core = relay()
    identity = client()
    body = parse_body(read_json(request.get_data(cache=False)), core.limits)
    chat = kept(
        _history(),
        _owner(identity),
        body.chat,
        core.limits,
        body.store,
        body.previous_response_id,
    )
    body.echo["store"] = chat.turn is not None
    if chat.turn is not None:
        body.echo["conversation"] = {"id": chat.turn.conversation_id}
    if body.background and not body.stream:
        return _in_background(core, identity, chat, body.echo)
    sid, connection = attach(core, RESPONSES_SID_PREFIX, identity)
    try:
        stream = core.admit(sid, chat)
    except ProtocolError:
        core.disconnect(sid)
        raise
    _ids().add(stream.id, stream.token, body.echo)
    events = ResponseEvents(skeleton(stream.id, stream.created, chat.model, body.echo))
    if not body.stream:
        pieces, done = collect(core, sid, connection)
        whole = json.dumps(events.whole(pieces, ("done", done))).encode()
        return Response(
            WholeBody(core, sid, stream.id, whole), mimetype="application/json"
        )
    first = connection.next()
    if first is not None and first[0] == "error":
        # Nothing was sent yet: the failure gets its HTTP status.
        core.disconnect(sid)
        raise as_error(first[1])
    return event_stream(
        ResponseStream(core, sid, connection, events, stream.token, first)
    )


def _in_background(
    core: Relay, identity: str, chat: ChatRequest, repeated: dict[str, Any]
) -> Response:
    """Start a generation nobody reads as it comes, and answer at once with the
    response in progress: the client asks ``GET /v1/responses/{id}`` for it."""
    sid = new_sid(core, RESPONSES_SID_PREFIX)
    core.attach(sid, identity, Unread(core, sid))
    try:
        stream = core.admit(sid, chat)
    except ProtocolError:
        core.disconnect(sid)
        raise
    _ids().add(stream.id, stream.token, repeated)
    return jsonify(skeleton(stream.id, stream.created, chat.model, repeated))


class Unread:
    """The connection of a background request that is not streamed: nothing is
    sent (the stream keeps the answer, for ``GET``), and it stays connected until
    the answer ends, so that the generation runs to its end however long it takes;
    then, or when a streamed ``GET`` takes the stream over, it leaves."""

    def __init__(self, relay: Relay, sid: str):
        self._relay = relay
        self._sid = sid
        self._left = False

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        pass

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._leave()

    def moved(self, request_id: str) -> None:
        self._leave()

    def drained(self, low: int, timeout: float) -> Drain:
        return "closed"

    def _leave(self) -> None:
        if not self._left:
            self._left = True
            # Not here: the relay calls this holding the stream's lock.
            self._relay.socketio.start_background_task(
                self._relay.disconnect, self._sid
            )


@bp.get("/v1/responses/<response_id>")
def retrieve(response_id: str) -> Response:
    """Sent by an HTTP client for a response it started (its SDK's
    ``responses.retrieve``), on any node.

    That client receives the response object as it stands; with ``stream=true``,
    every event after ``starting_after``, then the live ones and the end."""
    core = relay()
    identity = client()
    streamed = _bool_arg("stream")
    after = _starting_after()
    found = _ids().get(response_id)
    described = core.described(found[0]) if found is not None else None
    if found is None or described is None:
        return _read_back(identity, response_id, streamed, after)
    token, repeated = found
    model, created = described
    events = ResponseEvents(skeleton(response_id, created, model, repeated))
    if not streamed:
        state = _state(core, token)
        if state is None or not may_resume(identity, state[0]):
            raise _no_response(response_id)
        return jsonify(events.whole(state[1], state[2]))
    sid, connection = attach(core, RESPONSES_SID_PREFIX, identity)
    try:
        # Every chunk again: the events after ``after`` are counted from the start.
        core.resume(sid, response_id, token, -1, identity)
    except ProtocolError as exc:
        core.disconnect(sid)
        if exc.code == "resume_denied":
            raise _no_response(response_id) from None
        raise
    return event_stream(
        ResponseStream(core, sid, connection, events, token, None, after)
    )


def _history() -> History | None:
    return current_app.extensions.get("history")


def _owner(identity: str) -> str | None:
    """Whose the caller's responses are, when the server can tell."""
    return current_app.extensions["owners"].of(identity, request.environ)


def _read_back(identity: str, response_id: str, streamed: bool, after: int) -> Response:
    """A kept response from the conversation store, once its stream is gone."""
    found = read_back(_history(), _owner(identity), response_id)
    if found is None:
        raise _no_response(response_id)
    message, pieces, terminal = found
    created = int(message.created_at.timestamp())
    model = message.model or relay().provider.default_model
    repeated = echo({}, {}, True, False)
    repeated["conversation"] = {"id": message.conversation_id}
    events = ResponseEvents(skeleton(response_id, created, model, repeated))
    if not streamed:
        return jsonify(events.whole(pieces, terminal))
    made = events.start()
    for piece in pieces:
        made += events.chunk(piece)
    made += events.end(*terminal)
    return event_stream([encode(e) for e in made if e["sequence_number"] > after])


def _no_response(response_id: str) -> ProtocolError:
    # Another user's response is as absent as one that never was.
    return ProtocolError(
        "not_found", f"response_id: no response {response_id!r} is kept here"
    )


def _bool_arg(name: str) -> bool:
    value = request.args.get(name)
    if value in (None, "", "false"):
        return False
    if value == "true":
        return True
    raise ProtocolError("invalid_request", f"{name}: must be true or false")


def _starting_after() -> int:
    value = request.args.get("starting_after")
    if value in (None, ""):
        return -1
    try:
        after = int(value)
    except ValueError:
        raise ProtocolError(
            "invalid_request", f"starting_after: {value!r} is not a sequence number"
        ) from None
    if after < 0:
        raise ProtocolError("invalid_request", "starting_after: must be 0 or more")
    return after


def _state(
    core: Relay, token: str
) -> tuple[str, list[Piece], tuple[str, dict] | None] | None:
    """Whose a stream is, its chunks so far and its end (None while it runs), from
    this node's store or the mirror of the node generating it."""
    stream = core.store.by_token(token)
    if stream is not None:
        with stream.lock:
            terminal: Event | None = stream.terminal
            return stream.identity, list(stream.parts), terminal
    if core.cluster is None:
        return None
    mirror = core.cluster.store.mirrored(token)
    if mirror is None:
        return None
    return (
        mirror.identity,
        core.cluster.store.mirrored_chunks(token, -1),
        mirror.terminal,
    )


class ResponseStream(SseBody):
    """A response's events as server-sent events: those after ``after`` (-1: all).

    Each relay event is written as the events it makes, in one write."""

    def __init__(
        self,
        relay: Relay,
        sid: str,
        connection: HttpConnection,
        events: ResponseEvents,
        token: str,
        first: tuple[str, Any] | None,
        after: int = -1,
    ):
        super().__init__(relay, sid, connection, events.id, token, first)
        self._encoder = events
        self._after = after

    def _events(self) -> Iterator[bytes]:
        head = self._written(self._encoder.start())
        if head:
            yield head
        yield from super()._events()

    def render(self, event: str, payload: Any) -> Iterator[bytes]:
        if event == CHUNK:
            made = self._encoder.chunk(payload[1])
        else:
            made = self._encoder.end(event, payload)
        data = self._written(made)
        if data:
            yield data

    def _written(self, made: list[dict[str, Any]]) -> bytes:
        after = self._after
        return b"".join(encode(e) for e in made if e["sequence_number"] > after)
