"""Socket.IO event handlers. Each reply goes to the requesting connection only."""

import logging
from typing import Any

from flask import current_app, request
from flask_socketio import emit

from . import socketio
from .protocol import ProtocolError, parse_chat, parse_stop
from .relay import Relay

log = logging.getLogger(__name__)


def _relay() -> Relay:
    return current_app.extensions["relay"]


def _reject(exc: ProtocolError) -> dict[str, Any]:
    # Both an error event and a negative ack: clients that do not ask for acks learn
    # of the rejection too.
    emit("error", exc.payload(), to=request.sid)
    return {"ok": False, "error": {"code": exc.code, "message": exc.message}}


@socketio.on("chat")
def chat(data: Any = None, *_: Any) -> dict[str, Any]:
    """Sent by a client to start a generation.

    The client that sent it receives the ack, then ``chunk`` events and one ``done``
    or ``error``."""
    try:
        chat_request = parse_chat(data, _relay().limits)
        _relay().start(request.sid, chat_request)
    except ProtocolError as exc:
        return _reject(exc)
    return {"ok": True, "id": chat_request.id, "model": chat_request.model}


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


@socketio.on("disconnect")
def disconnect(*_: Any) -> None:
    """Raised by the server when a client's connection ends.

    Nobody receives a reply; the client's generations are cancelled."""
    _relay().client_gone(request.sid)


@socketio.on_error_default
def on_error(exc: Exception) -> dict[str, Any]:
    """Raised by the server when a handler fails unexpectedly.

    The client whose event failed receives an ``internal`` error; the server goes on."""
    log.exception("event handler failed", exc_info=exc)
    return _reject(ProtocolError("internal", "the server failed to handle the event"))
