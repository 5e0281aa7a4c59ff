"""What clients send on Engine.IO: bounded while it arrives, and dropped quietly when
it is not Engine.IO or Socket.IO.

- A message over ``MAX_MESSAGE_BYTES`` closes its connection before the server has
  buffered it: on a WebSocket as soon as a frame header announces more than the
  limit, counting a fragmented message's frames together (close code 1009); on
  long-polling as soon as a POST's ``Content-Length`` says so, before a byte of its
  body is read, or, for a chunked body, at the first byte past the limit (HTTP 413
  ``message_too_big``, and the session ends). Counted in
  ``chat_oversized_messages{transport}``.
- A packet that Engine.IO or python-socketio cannot decode is dropped and counted
  in ``chat_malformed_packets``; the connection goes on. The log says so at most
  once a minute per connection, in one short line, however many come.

``internals.install_websockets`` and ``internals.drop_malformed`` put this in
Engine.IO's path; ``middleware`` puts it in front of the polling transport.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import internals
from .metrics import Metrics

log = logging.getLogger(__name__)

# A connection's malformed packets are logged at most this often.
LOG_EVERY_SECONDS = 60.0
_PATH = "/socket.io/"
_MESSAGE_TOO_BIG = 1009  # RFC 6455's close code


class FrameGate:
    """Reads a client's WebSocket frame headers as their bytes arrive (RFC 6455,
    5.2), and says when a data message's frames announce more than ``limit`` bytes
    together: a frame's length counts as soon as the header gives it, before its
    mask key and payload arrive, and the frames of a fragmented message add up until
    the one with FIN. Control frames, which may come between fragments, do not
    count. Nothing is kept but the header being read."""

    __slots__ = ("limit", "_head", "_skip", "_message")

    def __init__(self, limit: int):
        self.limit = limit
        self._head = bytearray()
        self._skip = 0  # mask key and payload bytes of the current frame to pass
        self._message = 0  # the current data message's bytes so far

    def feed(self, data: bytes) -> bool:
        """Take the next bytes read from the client; False once a message is over
        the limit (the connection is then to be closed)."""
        at, end = 0, len(data)
        while at < end:
            if self._skip:
                step = min(self._skip, end - at)
                self._skip -= step
                at += step
                continue
            need = _length_end(self._head) - len(self._head)
            self._head += data[at : at + need]
            at += min(need, end - at)
            if len(self._head) < _length_end(self._head):
                continue
            head = self._head
            fin, opcode, length = _parse_header(head)
            self._skip = (4 if head[1] & 0x80 else 0) + length
            head.clear()
            if opcode & 0x8:
                continue  # a control frame: at most 125 bytes, in no message
            self._message += length
            if self._message > self.limit:
                return False
            if fin:
                self._message = 0
        return True


def _length_end(head: bytearray) -> int:
    """Where a header's length ends, as far as its first two bytes tell (2 until
    they are in)."""
    if len(head) < 2:
        return 2
    return 2 + {126: 2, 127: 8}.get(head[1] & 0x7F, 0)


def _parse_header(head: bytearray) -> tuple[bool, int, int]:
    """(FIN, opcode, payload length) of a header read to its length."""
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack_from("!H", head, 2)[0]
    elif length == 127:
        length = struct.unpack_from("!Q", head, 2)[0]
    return bool(head[0] & 0x80), head[0] & 0x0F, length


def close_frame(code: int, reason: str) -> bytes:
    """A server's close frame (RFC 6455, 5.5.1)."""
    payload = struct.pack("!H", code) + reason.encode()
    return b"\x88" + bytes((len(payload),)) + payload


class Inbound:
    """``MAX_MESSAGE_BYTES`` while messages arrive, and malformed packets dropped,
    for every connection of this process."""

    def __init__(self, config: Mapping[str, Any], metrics: Metrics):
        self.max_message_bytes: int = config["MAX_MESSAGE_BYTES"]
        self.close_frame = close_frame(
            _MESSAGE_TOO_BIG, f"message over {self.max_message_bytes} bytes"
        )
        self._oversized = metrics.oversized
        self._malformed = metrics.malformed
        # Engine.IO session id -> (when its last line was logged, drops since).
        self._logged: dict[str, tuple[float, int]] = {}
        self._pruned_at = time.monotonic()
        self._lock = threading.Lock()

    def gate(self) -> FrameGate:
        """A new WebSocket's frame gate."""
        return FrameGate(self.max_message_bytes)

    def oversized(self, eio_sid: str, transport: str) -> None:
        """A message over the limit closed the connection ``eio_sid``."""
        self._oversized.labels(transport).inc()
        # One line: the connection ends with it.
        log.warning(
            "connection %s closed: a message over MAX_MESSAGE_BYTES (%d) on %s",
            eio_sid,
            self.max_message_bytes,
            transport,
        )

    def malformed(self, eio_sid: str, problem: str) -> None:
        """A packet of ``eio_sid`` was dropped: ``problem`` says why, in one line."""
        self._malformed.inc()
        now = time.monotonic()
        with self._lock:
            last, dropped = self._logged.get(eio_sid, (None, 0))
            if last is not None and now - last < LOG_EVERY_SECONDS:
                self._logged[eio_sid] = (last, dropped + 1)
                return
            self._logged[eio_sid] = (now, 0)
            if now - self._pruned_at > LOG_EVERY_SECONDS:
                # Connections that stopped sending them are forgotten.
                self._pruned_at = now
                self._logged = {
                    sid: entry
                    for sid, entry in self._logged.items()
                    if now - entry[0] < LOG_EVERY_SECONDS
                }
        more = f"; {dropped} more since its last line" if dropped else ""
        log.warning(
            "connection %s: malformed packet dropped (%s)%s", eio_sid, problem, more
        )

    # -- long-polling -----------------------------------------------------------------

    def middleware(self, wsgi_app: Callable, socketio: Any) -> Callable:
        """``wsgi_app`` with each long-polling POST to Engine.IO bounded by
        ``MAX_MESSAGE_BYTES`` and checked before Engine.IO reads it."""

        def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            if environ.get("REQUEST_METHOD") != "POST" or not environ.get(
                "PATH_INFO", ""
            ).startswith(_PATH):
                return wsgi_app(environ, start_response)
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            eio_sid = query.get("sid", [""])[0]
            body = self._read(environ)
            if body is None:
                self.oversized(eio_sid, "polling")
                if eio_sid:
                    internals.end_session(socketio, eio_sid)
                return _too_big(self.max_message_bytes, start_response)
            try:
                problem = internals.payload_problem(body.decode())
            except UnicodeDecodeError:
                problem = "not UTF-8"
            if problem is not None and eio_sid:
                # Engine.IO would log a traceback and answer "ok": dropped, as a
                # malformed WebSocket message is.
                self.malformed(eio_sid, problem)
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok"]
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            return wsgi_app(environ, start_response)

        return app

    def _read(self, environ: dict[str, Any]) -> bytes | None:
        """The POST's body, or None when it is over the limit: known from its
        ``Content-Length`` before a byte is read, or, chunked, at the first byte
        past it."""
        limit = self.max_message_bytes
        length = environ.get("CONTENT_LENGTH")
        stream = environ["wsgi.input"]
        if length:
            try:
                size = int(length)
            except ValueError:
                return None
            return None if size > limit else stream.read(size)
        if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return b""
        body = stream.read(limit + 1)
        return None if len(body) > limit else body


def _too_big(limit: int, start_response: Callable) -> list[bytes]:
    body = json.dumps(
        {
            "code": "message_too_big",
            "message": f"message: over MAX_MESSAGE_BYTES ({limit} bytes)",
            "retryable": False,
        }
    ).encode()
    # The rest of the body is left unread: the middleware in front of this one
    # (http_limits) closes the connection after this answer rather than read it.
    start_response(
        "413 Content Too Large",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
