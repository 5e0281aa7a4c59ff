"""Socket.IO event handlers. Each reply goes to the requesting connection only."""

import contextlib
import logging
from typing import Any, NoReturn

from flask import current_app, request
from flask_socketio import ConnectionRefusedError, emit, join_room

from . import socketio
from .admission import Admission
from .auth import Identity, Unauthorized, authenticate
from .chat_request import ChatRequest
from .conversations import History
from .errors import RETRYABLE, ProtocolError
from .internals import is_connected
from .owners import Owners, room
from .protocol import Keeping, parse_chat, parse_resume, parse_stop
from .relay import Relay

log = logging.getLogger(__name__)


def _relay() -> Relay:
    return current_app.extensions["relay"]


def _admission() -> Admission:
    return current_app.extensions["admission"]


def _history() -> History | None:
    return current_app.extensions["history"]


def _reject(exc: ProtocolError) -> dict[str, Any]:
    # Both an error event and a negative ack: clients that do not ask for acks learn
    # of the rejection too.
    emit("error", exc.payload(), to=request.sid)
    return {
        "ok": False,
        "error": {
            "code": exc.code,
            "message": exc.message,
            "retryable": exc.retryable,
        },
    }


# The connection's ``Identity`` and owner, kept in its WSGI environ: Flask-SocketIO
# hands that same dict to each of the connection's events, and python-socketio drops
# it with it.
_IDENTITY = "chatstream.identity"
_OWNER = "chatstream.owner"


@socketio.on("connect")
def connect(auth: Any = None) -> None:
    """Sent by a client opening a connection, with an optional ``{token}`` auth payload.

    The client receives the connection, or a connect error with the reason."""
    try:
        if request.sid in _relay().identities:
            return  # a client's own event named "connect", not a new connection
        _open(auth)
    except ConnectionRefusedError:
        raise
    except Exception:
        # Fail closed: python-socketio takes any answer but a refusal as consent.
        log.exception("connect handler failed")
        _undo_open(request.sid)
        _refuse("internal", "the server failed to check the connection")


def _open(auth: Any) -> None:
    try:
        identity = authenticate(auth, request.environ, current_app.config)
    except Unauthorized as exc:
        _refuse("unauthorized", str(exc))
    if not _admission().identities.take(request.sid, identity.name):
        who = "this address" if identity.name.startswith("addr:") else "this user"
        limit = _admission().identities.limit
        _refuse(
            "too_many_connections",
            f"{who} already holds {limit} connections; close one first",
        )
    request.environ[_IDENTITY] = identity
    owners: Owners = current_app.extensions["owners"]
    owner = owners.of(identity.name, request.environ)
    if owner is not None:
        request.environ[_OWNER] = owner
        # Where the owner's conversations are announced, on every node.
        join_room(room(owner))
    _relay().connect(request.sid, identity.name)


def _undo_open(sid: str) -> None:
    """Give back what a connection refused midway took: it gets no disconnect."""
    with contextlib.suppress(Exception):
        _admission().identities.release(sid)
    with contextlib.suppress(Exception):
        _relay().disconnect(sid)


def _check_token(request_id: str) -> None:
    """Refuse a new chat on a connection whose signed token has expired since."""
    identity: Identity | None = request.environ.get(_IDENTITY)
    if identity is not None and identity.expired():
        raise ProtocolError(
            "unauthorized",
            "the token has expired; reconnect with a new one",
            request_id,
        )


def _refuse(code: str, message: str) -> NoReturn:
    log.info("connection refused: %s: %s", code, message)
    _admission().count_refusal(code)
    raise ConnectionRefusedError(
        message, {"code": code, "retryable": RETRYABLE[code]}
    ) from None


@socketio.on("chat")
def chat(data: Any = None, *_: Any) -> dict[str, Any]:
    """Sent by a client to start a generation.

    The client that sent it receives the ack (with the resume token), then ``chunk``
    events and one ``done`` or ``error``."""
    try:
        chat_request, keeping = parse_chat(data, _relay().limits)
        _check_token(chat_request.id)
        chat_request = _kept(chat_request, keeping)
        stream = _relay().admit(request.sid, chat_request)
    except ProtocolError as exc:
        return _reject(exc)
    ack = {
        "ok": True,
        "id": chat_request.id,
        "model": chat_request.model,
        "resume_token": stream.token,
    }
    if chat_request.turn is not None:
        ack.update(chat_request.turn.ack())
    return ack


def _kept(chat_request: ChatRequest, keeping: Keeping) -> ChatRequest:
    """The request with its conversation's history, when the server keeps it: the
    store is on, the chat did not opt out, and the connection has an owner."""
    history = _history()
    owner = request.environ.get(_OWNER)
    if not keeping.store or history is None or owner is None:
        if keeping.conversation_id is not None:
            raise ProtocolError(
                "not_found",
                "conversation_id: no such conversation (this connection keeps none)",
                chat_request.id,
            )
        if not chat_request.messages:
            raise ProtocolError(
                "invalid_request", "messages: field required", chat_request.id
            )
        return chat_request
    return history.prepare(
        owner,
        chat_request,
        _relay().limits,
        keeping.conversation_id,
        keeping.parent_id,
    )


@socketio.on("stop")
def stop(data: Any = None, *_: Any) -> dict[str, Any]:
    """Sent by a client to cancel one of its live requests.

    The client that sent it receives the ack and the request's ``done`` (cancelled)."""
    try:
        request_id = parse_stop(data)
        _relay().stop(request.sid, request_id)
    except ProtocolError as exc:
        return _reject(exc)
    return {"ok": True, "id": request_id}


@socketio.on("resume")
def resume(data: Any = None, *_: Any) -> dict[str, Any]:
    """Sent by a client that reconnected, to pick up a request after its last ``seq``.

    The client that sent it receives the missing chunks, then the live ones and the
    terminal event (or the terminal event at once if the request has ended)."""
    try:
        request_id, token, after = parse_resume(data)
        replayed = _relay().resume(request.sid, request_id, token, after)
    except ProtocolError as exc:
        return _reject(exc)
    return {"ok": True, "id": request_id, "replayed": replayed}


@socketio.on("disconnect")
def disconnect(*_: Any) -> None:
    """Raised by the server when a client's connection ends.

    Nobody receives a reply; the client's generations wait for it to resume."""
    if is_connected(socketio, request.sid):
        # A client's own event named "disconnect": python-socketio hands it to this
        # handler too, but the connection is still open (a real disconnection is
        # marked as pending before the handler runs).
        return
    _admission().identities.release(request.sid)
    _relay().disconnect(request.sid)


@socketio.on_error_default
def on_error(exc: Exception) -> dict[str, Any]:
    """Raised by the server when a handler fails unexpectedly.

    The client whose event failed receives an ``internal`` error (a connect error
    for a connection being opened); the server goes on."""
    log.exception("event handler failed", exc_info=exc)
    if getattr(request, "event", {}).get("message") == "connect":
        # python-socketio takes any answer to a connect but a refusal as consent.
        raise ConnectionRefusedError(
            "the server failed to check the connection",
            {"code": "internal", "retryable": RETRYABLE["internal"]},
        )
    return _reject(ProtocolError("internal", "the server failed to handle the event"))
