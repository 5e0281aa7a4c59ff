"""Delivery to Socket.IO clients: the one module that knows python-socketio's and
python-engineio's insides.

The relay hands each event for a connection to its ``Connection``. A client on this
node gets it directly: the event is written once as Socket.IO's EVENT packet in the
default namespace, the text python-socketio would write. On a WebSocket it is framed
and written to the socket by the task that produced it (``WebSocketOut``), which
skips python-socketio's emit machinery (rooms, callbacks, binary attachments) and
Engine.IO's queue and writer task, woken once per event: together over a third of
the relay's time. Engine.IO's own packets (acks, pings) go through the same writer,
so nothing interleaves. A client still on HTTP long-polling gets its events through
Engine.IO's queue; with several nodes, a client of another node through the message
queue (``RemoteConnection``).

What a client does not read waits, up to ``MAX_QUEUED_BYTES`` per connection; past
that the connection is closed, and its answers wait to be resumed, as after any drop.

Two more things taken from those insides live here: the packet class that skips
the scan for binary parts (``TextPacket``), and Engine.IO's origin rule, which the
HTTP transport applies as Socket.IO does (``origin_allowed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Protocol

from engineio.packet import MESSAGE
from engineio.packet import Packet as EioPacket
from flask_socketio import SocketIO
from socketio.packet import Packet

from .providers.base import ANSWER, Kind

log = logging.getLogger(__name__)

# Compact JSON, as python-socketio writes its packets; one encoder, made once.
_encode = json.JSONEncoder(separators=(",", ":")).encode


# Session ids of HTTP clients (``openai_api.py``) start with this; Socket.IO's
# never hold a colon. The node that holds the connection follows it.
HTTP_SID_PREFIX = "http:"
TRANSPORTS = ("socketio", "http")


class TextPacket(Packet):
    """Every payload this server sends is JSON text, so the scan of each outgoing
    payload for binary parts (an eighth of the emit path's time) is skipped."""

    uses_binary_events = False


def origin_allowed(socketio: SocketIO, environ: dict[str, Any], origin: str) -> bool:
    """Whether a browser at ``origin`` may use this server: Engine.IO's rule for
    ``cors_allowed_origins`` (same origin when unset, any origin for ``*``)."""
    allowed = socketio.server.eio._cors_allowed_origins(environ)
    return allowed is None or origin in allowed  # None: any origin


def transport_of(sid: str) -> str:
    """The transport a connection id belongs to: ``socketio`` or ``http``."""
    return "http" if sid.startswith(HTTP_SID_PREFIX) else "socketio"


class Connection(Protocol):
    """Where a stream's events go: one client connection, of some transport."""

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        """Send one ``chunk`` event."""

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Send any other event (``done``, ``error``)."""

    def moved(self, request_id: str) -> None:
        """A resume took ``request_id`` to another connection: nothing more of it
        comes here."""


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
    """A client connected to this node: on its WebSocket when it has one, else
    through its Engine.IO socket's queue."""

    __slots__ = ("_send", "_eio_sid")

    def __init__(self, socketio: SocketIO, sid: str):
        server = socketio.server
        self._eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        self._send = server._send_eio_packet

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        self._packet(chunk_packet(request_id, seq, kind, delta))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._packet("2" + _encode([event, payload]))

    def moved(self, request_id: str) -> None:
        pass  # the connection goes on with its other requests

    def _packet(self, text: str) -> None:
        out = _WEBSOCKETS.get(self._eio_sid)
        if out is not None and out.takes_events():
            # A socket that fails under the write is a dropped client: the disconnect
            # follows, and the text waits in the stream for a resume. The generation
            # goes on.
            with contextlib.suppress(OSError):
                out.send_text("4" + text)  # Engine.IO's MESSAGE packet
        else:
            self._send(self._eio_sid, EioPacket(MESSAGE, text))


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

    def moved(self, request_id: str) -> None:
        pass


class _Gone:
    """A connection that closed: what is sent to it goes nowhere (a resume can still
    fetch it)."""

    def send_chunk(self, request_id: str, seq: int, kind: Kind, delta: str) -> None:
        pass

    def send(self, event: str, payload: dict[str, Any]) -> None:
        pass

    def moved(self, request_id: str) -> None:
        pass


GONE = _Gone()


# -- WebSocket writes ------------------------------------------------------------------

# Engine.IO session id -> the writer of its WebSocket, while it has one.
_WEBSOCKETS: dict[str, WebSocketOut] = {}


class WebSocketOut:
    """Every write to one client's WebSocket. A frame goes out at once, from the
    task that made it, when the socket takes it whole; otherwise it waits, in order,
    in a buffer that a task of its own drains as the client reads. Past ``limit``
    bytes waiting, the connection is closed (``on_overflow``)."""

    def __init__(
        self,
        eio_socket: Any,
        sock: socket.socket,
        limit: int,
        start_task: Callable[..., Any],
        on_overflow: Callable[[str], None],
    ):
        self._eio_socket = eio_socket
        self._sock = sock
        # The OS socket under the green one: eventlet keeps it in fd, gevent in _sock
        # (eventlet's _sock is the green socket itself). A send to it with
        # MSG_DONTWAIT never waits, in any async mode.
        self._raw = getattr(sock, "fd", None) or getattr(sock, "_sock", None) or sock
        self._limit = limit
        self._start_task = start_task
        self._on_overflow = on_overflow
        self._pending = bytearray()
        self._flushing = False
        self._lock = threading.Lock()
        self.closed = False

    def takes_events(self) -> bool:
        """True once the connection is on this WebSocket and Engine.IO holds nothing
        queued from before (which must not be overtaken)."""
        eio_socket = self._eio_socket
        return eio_socket.upgraded and not self.closed and eio_socket.queue.empty()

    def send_text(self, text: str) -> None:
        self.write(_text_frame(text.encode()))

    def write(self, frame: bytes) -> None:
        with self._lock:
            if self.closed:
                raise OSError("the WebSocket is closed")
            if not self._pending and not self._flushing:
                try:
                    sent = self._raw.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.closed = True
                    raise
                if sent == len(frame):
                    return
                frame = frame[sent:]
            self._pending += frame
            if len(self._pending) > self._limit:
                self.closed = True
                overflow = True
            else:
                overflow = False
                if not self._flushing:
                    self._flushing = True
                    self._start_task(self._flush)
        if overflow:
            self._drop()
            self._on_overflow(self._eio_socket.sid)

    def _flush(self) -> None:
        while True:
            with self._lock:
                data = bytes(self._pending)
                self._pending.clear()
                if not data or self.closed:
                    self._flushing = False
                    return
            try:
                # The green socket's sendall waits for the client, this task only.
                self._sock.sendall(data)
            except OSError:
                with self._lock:
                    self.closed = True
                    self._flushing = False
                return

    def _drop(self) -> None:
        """Close the connection under a client that stopped reading: shutting the
        socket down ends its reader too, which disconnects the session."""
        with self._lock:
            self._pending.clear()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def _text_frame(payload: bytes) -> bytes:
    """A server's (unmasked) final text frame, RFC 6455; no extension is in use:
    ``app._without_websocket_compression`` declines them all."""
    size = len(payload)
    if size < 126:
        return b"\x81" + bytes((size,)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def install_websocket_writer(
    socketio: SocketIO, limit: int, on_overflow: Callable[[str], None]
) -> None:
    """Route every WebSocket of ``socketio``'s Engine.IO server through a
    ``WebSocketOut``: its own writes and the relay's events alike."""
    eio = socketio.server.eio
    base = eio._async["websocket"]
    start_task = eio.start_background_task

    class WebSocket(base):  # type: ignore[misc, valid-type]
        def __init__(self, handler: Callable[[Any], Any], server: Any):
            eio_socket = handler.__self__

            def handle(ws: Any) -> Any:
                # simple-websocket's wrapper keeps its socket in ws.ws.sock,
                # eventlet's WebSocket in ws.socket.
                inner = getattr(ws, "ws", None)
                sock = inner.sock if inner is not None else ws.socket
                out = WebSocketOut(eio_socket, sock, limit, start_task, on_overflow)
                if inner is not None:
                    ws.send = out.send_text
                else:
                    ws.send = lambda message, **kw: out.write(
                        ws._pack_message(message, **kw)
                    )
                    # eventlet writes a line for each socket closed under it, with no
                    # line break: to the log, at debug level.
                    ws.log = _DebugLog()
                _WEBSOCKETS[eio_socket.sid] = out
                try:
                    return handler(ws)
                finally:
                    _WEBSOCKETS.pop(eio_socket.sid, None)
                    out.closed = True

            super().__init__(handle, server)

    eio._async = {**eio._async, "websocket": WebSocket}


class _DebugLog:
    def write(self, text: str) -> None:
        log.debug("websocket: %s", text.strip())
