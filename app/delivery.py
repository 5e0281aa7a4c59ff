"""Delivery to Socket.IO clients: the one module that knows python-socketio's insides.

The relay hands each event for a connection to its ``Connection``. A connection on
this node gets it directly: the event is written once as Socket.IO's EVENT packet in
the default namespace, the text python-socketio would write, and handed to Engine.IO
the way python-socketio's manager hands each packet. That skips the emit machinery for
rooms, callbacks and binary attachments, which one text event to one client does not
need (it was a quarter of the relay's time under load), and, with several nodes, the
Redis round trip. A client connected to another node is reached through the message
queue (``RemoteConnection``).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Protocol

from engineio.packet import MESSAGE
from engineio.packet import Packet as EioPacket
from flask_socketio import SocketIO

from .providers.base import ANSWER, Kind

# Compact JSON, as python-socketio writes its packets; one encoder, made once.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class Connection(Protocol):
    """Where a stream's events go: one client connection, of some transport."""

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        """Send one ``chunk`` event."""

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Send any other event (``done``, ``error``)."""


def chunk_payload(request_id: str, seq: int, kind: Kind, delta: str) -> dict:
    """A ``chunk`` event's payload, as the README's protocol table has it."""
    payload: dict[str, Any] = {"id": request_id, "seq": seq, "delta": delta}
    if kind != ANSWER:
        payload["kind"] = kind
    return payload


def chunk_packet(request_id: str, seq: int, kind: Kind, delta: str) -> str:
    """A ``chunk`` EVENT packet's text; the same JSON as ``chunk_payload`` gives,
    written without building the dict (it is most of what the relay sends)."""
    tail = "}]" if kind == ANSWER else ',"kind":' + _quote(kind) + "}]"
    return (
        '2["chunk",{"id":'
        + _quote(request_id)
        + ',"seq":'
        + str(seq)
        + ',"delta":'
        + _quote(delta)
        + tail
    )


class LocalConnection:
    """A client connected to this node: packets straight to its Engine.IO socket."""

    __slots__ = ("_send", "_eio_sid")

    def __init__(self, socketio: SocketIO, sid: str):
        server = socketio.server
        self._eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        self._send = server._send_eio_packet

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        packet = chunk_packet(request_id, seq, kind, delta)
        self._send(self._eio_sid, EioPacket(MESSAGE, packet))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._send(self._eio_sid, EioPacket(MESSAGE, "2" + _encode([event, payload])))


class RemoteConnection:
    """A client connected to another node: through the Socket.IO message queue."""

    __slots__ = ("_socketio", "_sid")

    def __init__(self, socketio: SocketIO, sid: str):
        self._socketio = socketio
        self._sid = sid

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        self.send("chunk", chunk_payload(request_id, seq, kind, delta))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._socketio.emit(event, payload, to=self._sid)


class _Gone:
    """A connection that closed: what is sent to it goes nowhere (a resume can still
    fetch it)."""

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        pass

    def send(self, event: str, payload: dict[str, Any]) -> None:
        pass


GONE = _Gone()
