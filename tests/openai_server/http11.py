"""HTTP/1.1 on asyncio's transports: requests parsed off a connection (keep-alive,
pipelining, chunked bodies, ``Expect: 100-continue``), whole JSON replies, and the
flow control a stream writes under."""

from __future__ import annotations

import asyncio
import http
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .errors import error_body

if TYPE_CHECKING:
    from .endpoints import Service
    from .streams import Stream

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

log = logging.getLogger("tests.openai_server")


class BadRequest(Exception):
    """The bytes on a connection are not an HTTP/1.1 request this server takes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case; repeated ones joined by ", "
    body: bytes
    keep_alive: bool


@dataclass
class Reply:
    """A whole response: JSON, sent with a content-length."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


def json_bytes(payload: Any) -> bytes:
    return json.dumps(
        payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


@lru_cache(maxsize=1)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def response_head(status: int, headers: Mapping[str, str], keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_PHRASES.get(status, '')}",
        f"date: {_http_date(int(time.time()))}",
        "server: chatstream-test",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path (no query) and headers of an HTTP/1.1 request head."""
    try:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if version != "HTTP/1.1":
        raise BadRequest(505, f"{version} is not served; HTTP/1.1 is")
    if not method.isalpha() or not target:
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise BadRequest(400, f"malformed header line {line[:40]!r}")
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if target.startswith(("http://", "https://")):  # absolute-form
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return method, target.partition("?")[0], headers


def chunked_body(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body from `start`: (body, end), or None if incomplete."""
    parts, at = [], start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(bytes(buffer[at:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "malformed chunk size") from None
        if size < 0 or sum(map(len, parts)) + size > MAX_BODY:
            raise BadRequest(413, "request body too large")
        at = line_end + 2
        if size == 0:
            break
        if len(buffer) < at + size + 2:
            return None
        if buffer[at + size : at + size + 2] != b"\r\n":
            raise BadRequest(400, "malformed chunk")
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2
    while True:  # trailers, up to the empty line
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        if line_end == at:
            return b"".join(parts), at + 2
        at = line_end + 2


class Connection(asyncio.Protocol):
    """One client connection: its requests, one at a time, and their responses."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered
        self.keep_alive = True
        self.closed = False
        self.paused = False  # the transport's buffer is full
        self.continued = False  # "100 Continue" sent for the request in the buffer
        self.stream: Stream | None = None
        self.on_close: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.service.connections.add(self)
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, and
        # socket.create_server's are not: without it, Nagle holds each chunk until
        # the reader's delayed ACK (~40 ms), as no streaming model server does.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()
        elif len(self.buffer) > MAX_HEAD + MAX_BODY:
            self.transport.pause_reading()  # a pipelining client that never stops

    def eof_received(self) -> bool:
        return False  # a client that stops sending has left: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.service.connections.discard(self)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None:
            self.stream.resume()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def respond(self, reply: Reply, *, head_only: bool = False) -> None:
        body = json_bytes(reply.payload)
        headers = {"content-type": "application/json", **reply.headers}
        headers["content-length"] = str(len(body))
        self.write(response_head(reply.status, headers, self.keep_alive))
        if not head_only:
            self.write(body)
        self.finish()

    def finish(self) -> None:
        """The response is complete: go on with the next request, or close."""
        self.busy, self.stream, self.on_close = False, None, None
        if self.closed:
            return
        if not self.keep_alive:
            self.transport.close()
            return
        self.transport.resume_reading()
        if self.buffer:
            asyncio.get_running_loop().call_soon(self._next_request)

    def _next_request(self) -> None:
        if self.busy or self.closed:
            return
        try:
            request = self._parse()
        except BadRequest as exc:
            self.busy, self.keep_alive, self.buffer = True, False, bytearray()
            self.respond(Reply(exc.status, error_body(str(exc), exc.status)))
            return
        if request is None:
            return
        self.busy, self.keep_alive = True, request.keep_alive
        try:
            reply = self.service.handle(self, request)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            if self.stream is not None:  # the head is out: all it can do
                self.abort()
                return
            reply = Reply(500, error_body("The test server failed.", 500))
        if reply is not None:
            self.respond(reply, head_only=request.method == "HEAD")

    def _parse(self) -> Request | None:
        buffer = self.buffer
        while buffer.startswith(b"\r\n"):  # stray line ends between requests
            del buffer[:2]
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > MAX_HEAD:
                raise BadRequest(431, "request head too large")
            return None
        method, path, headers = parse_head(bytes(buffer[:head_end]))
        start = head_end + 4
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower() != "chunked":
                raise BadRequest(501, "only chunked transfer-encoding is understood")
            if "content-length" in headers:
                raise BadRequest(400, "both content-length and transfer-encoding")
            self._continue(headers)
            parsed = chunked_body(buffer, start)
            if parsed is None:
                return None
            body, end = parsed
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest(400, "malformed content-length") from None
            if not 0 <= length <= MAX_BODY:
                raise BadRequest(413, "request body too large")
            end = start + length
            if len(buffer) < end:
                self._continue(headers)
                return None
            body = bytes(buffer[start:end])
        del buffer[:end]
        self.continued = False
        options = headers.get("connection", "").lower().split(",")
        keep_alive = "close" not in (option.strip() for option in options)
        return Request(method, path, headers, body, keep_alive)

    def _continue(self, headers: Mapping[str, str]) -> None:
        if headers.get("expect", "").lower() == "100-continue" and not self.continued:
            self.continued = True
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection mid-body: what is written goes, then a FIN."""
        if not self.closed:
            self.transport.close()
