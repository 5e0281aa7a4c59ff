"""Where events go: each client connection's ``Connection``.

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
A sender that has much to send at once (a resume's replay) asks ``drained`` before
each part, and so goes at the pace the client reads.

``WebSocketOut`` writes to a plain socket (the green one, and the OS socket under
it); how Engine.IO's WebSocket is taken over to use it, and the names of Engine.IO's
sessions, come from ``internals``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Literal, Protocol

from engineio.packet import MESSAGE
from engineio.packet import Packet as EioPacket
from flask_socketio import SocketIO

from .internals import engineio_route
from .providers.base import ANSWER, TOOL_CALL, Piece

# Compact JSON, as python-socketio writes its packets; one encoder, made once.
_encode = json.JSONEncoder(separators=(",", ":")).encode


# Session ids of HTTP clients start with their transport's prefix (``openai_api.py``,
# ``responses/``); Socket.IO's never hold a colon. The node that holds the
# connection follows it.
HTTP_SID_PREFIX = "http:"
RESPONSES_SID_PREFIX = "responses:"
TRANSPORTS = ("socketio", "http", "responses")
# How often ``WebSocketOut.drained`` looks whether Engine.IO's queue has emptied.
_QUEUE_LOOK_SECONDS = 0.01

# What ``Connection.drained`` found: at most the bytes asked for wait unsent; more
# still wait after the time given; or the connection has closed, and what is sent
# to it goes nowhere.
Drain = Literal["drained", "waiting", "closed"]


def transport_of(sid: str) -> str:
    """The transport a connection id belongs to: ``socketio``, ``http`` (chat
    completions) or ``responses``."""
    if sid.startswith(HTTP_SID_PREFIX):
        return "http"
    return "responses" if sid.startswith(RESPONSES_SID_PREFIX) else "socketio"


class Connection(Protocol):
    """Where a stream's events go: one client connection, of some transport."""

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        """Send one ``chunk`` event."""

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Send any other event (``done``, ``error``)."""

    def moved(self, request_id: str) -> None:
        """A resume took ``request_id`` to another connection: nothing more of it
        comes here."""

    def drained(self, low: int, timeout: float) -> Drain:
        """Wait up to ``timeout`` seconds until at most ``low`` bytes of this
        connection's events wait to be sent."""


def chunk_payload(request_id: str, seq: int, piece: Piece) -> dict:
    """A ``chunk`` event's payload, as the README's protocol table has it."""
    kind = piece[0]
    payload: dict[str, Any] = {"id": request_id, "seq": seq}
    if kind == TOOL_CALL:
        payload["kind"] = kind
        payload["tool_call"] = piece[1]
        return payload
    payload["delta"] = piece[1]
    if kind != ANSWER:
        payload["kind"] = kind
    if len(piece) > 2:
        payload["logprobs"] = piece[2]
    return payload


def chunk_packet(request_id: str, seq: int, piece: Piece) -> str:
    """A ``chunk`` EVENT packet's text; the same JSON as ``chunk_payload`` gives,
    written without building the dict (it is most of what the relay sends)."""
    kind = piece[0]
    head = '2["chunk",{"id":' + _quote(request_id) + ',"seq":' + str(seq)
    if kind == TOOL_CALL:
        return head + ',"kind":"tool_call","tool_call":' + _encode(piece[1]) + "}]"
    text = head + ',"delta":' + _quote(piece[1])
    if kind != ANSWER:
        text += ',"kind":' + _quote(kind)
    if len(piece) > 2:
        text += ',"logprobs":' + _encode(piece[2])
    return text + "}]"


def send_chunks(
    connection: Connection,
    request_id: str,
    pieces: Sequence[Piece],
    index: int,
    budget: int,
    first_seq: int = 0,
) -> int:
    """Send ``pieces`` from ``index`` as ``chunk`` events (``pieces[i]`` has seq
    ``first_seq + i``) until about ``budget`` bytes have gone, one at least; return
    the index to go on from."""
    sent, end = 0, len(pieces)
    while index < end and sent < budget:
        piece = pieces[index]
        seq = first_seq + index
        connection.send_chunk(request_id, seq, piece)
        # As written on a WebSocket (escapes and all), and a frame header.
        sent += len(chunk_packet(request_id, seq, piece)) + 10
        index += 1
    return index


class LocalConnection:
    """A client connected to this node: on its WebSocket when it has one, else
    through its Engine.IO socket's queue."""

    __slots__ = ("_send", "_eio_sid")

    def __init__(self, socketio: SocketIO, sid: str):
        self._eio_sid, self._send = engineio_route(socketio, sid)

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        self._packet(chunk_packet(request_id, seq, piece))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._packet("2" + _encode([event, payload]))

    def moved(self, request_id: str) -> None:
        pass  # the connection goes on with its other requests

    def drained(self, low: int, timeout: float) -> Drain:
        out = _WEBSOCKETS.get(self._eio_sid)
        # On long-polling, Engine.IO's queue holds what waits, with no cap to meet.
        return "drained" if out is None else out.drained(low, timeout)

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

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        self.send("chunk", chunk_payload(request_id, seq, piece))

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._socketio.emit(event, payload, to=self._sid)

    def moved(self, request_id: str) -> None:
        pass

    def drained(self, low: int, timeout: float) -> Drain:
        # The message queue tells nothing of the client's pace: a replay to another
        # node's client goes through that node instead (``forwarding.py``).
        return "drained"


class _Gone:
    """A connection that closed: what is sent to it goes nowhere (a resume can still
    fetch it)."""

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        pass

    def send(self, event: str, payload: dict[str, Any]) -> None:
        pass

    def moved(self, request_id: str) -> None:
        pass

    def drained(self, low: int, timeout: float) -> Drain:
        return "closed"


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
        sock: socket.socket,
        raw: socket.socket,
        limit: int,
        start_task: Callable[..., Any],
        on_overflow: Callable[[], None],
    ):
        # The green socket, whose sendall waits for the client (this task only), and
        # the OS socket under it, whose send with MSG_DONTWAIT never waits.
        self._sock = sock
        self._raw = raw
        self._limit = limit
        self._start_task = start_task
        self._on_overflow = on_overflow
        self._pending = bytearray()
        # Bytes the draining task took from _pending and is writing now.
        self._inflight = 0
        self._flushing = False
        self._lock = threading.Lock()
        # Notified as the draining task's writes complete, and at the close.
        self._progress = threading.Condition(self._lock)
        self.closed = False

    def takes_events(self) -> bool:
        """Whether the relay's events may be written here now (``internals``
        replaces it with one that also asks Engine.IO)."""
        return not self.closed

    def engineio_holds(self) -> bool:
        """Whether Engine.IO's queue holds packets for this socket, which its
        writer task writes here in one go (``internals`` replaces it)."""
        return False

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
                    self._close()
                    raise
                if sent == len(frame):
                    return
                frame = frame[sent:]
            self._pending += frame
            if len(self._pending) > self._limit:
                self._close()
                overflow = True
            else:
                overflow = False
                if not self._flushing:
                    self._flushing = True
                    self._start_task(self._flush)
        if overflow:
            self._drop()
            self._on_overflow()

    def drained(self, low: int, timeout: float) -> Drain:
        """Wait up to ``timeout`` seconds until at most ``low`` bytes wait to be
        written (the kernel's buffer aside)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self.closed:
                    return "closed"
                held = self.engineio_holds()
                if not held and len(self._pending) + self._inflight <= low:
                    return "drained"
                left = deadline - time.monotonic()
                if left <= 0:
                    return "waiting"
                # Engine.IO's writer says nothing when its queue empties, and does
                # so within moments: looked at again soon.
                self._progress.wait(min(left, _QUEUE_LOOK_SECONDS) if held else left)

    def close(self) -> None:
        """The WebSocket has closed: nothing more is written."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self._progress.notify_all()

    def _flush(self) -> None:
        while True:
            with self._lock:
                self._inflight = 0
                self._progress.notify_all()
                data = bytes(self._pending)
                self._pending.clear()
                if not data or self.closed:
                    self._flushing = False
                    return
                self._inflight = len(data)
            try:
                # The green socket's sendall waits for the client, this task only.
                self._sock.sendall(data)
            except OSError:
                with self._lock:
                    self._close()
                    self._inflight = 0
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


class WebSocketWriters:
    """Makes each WebSocket's ``WebSocketOut`` as it opens, and forgets it as it
    closes (``internals.install_websockets`` calls both)."""

    def __init__(
        self,
        limit: int,
        start_task: Callable[..., Any],
        on_overflow: Callable[[str], None],
    ):
        self.limit = limit
        self.start_task = start_task
        self.on_overflow = on_overflow

    def opened(self, eio_sid: str, sock: Any, raw: Any) -> WebSocketOut:
        out = WebSocketOut(
            sock, raw, self.limit, self.start_task, lambda: self.on_overflow(eio_sid)
        )
        _WEBSOCKETS[eio_sid] = out
        return out

    def closed(self, eio_sid: str, out: WebSocketOut) -> None:
        if _WEBSOCKETS.get(eio_sid) is out:
            del _WEBSOCKETS[eio_sid]
        out.close()
