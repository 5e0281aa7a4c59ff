"""The HTTP/1.1 transport under the ``openai`` client: one body read per iteration.

httpx's default transport parses with h11, in pure Python, and hands a streamed body
over one HTTP chunk at a time: ~12 µs of parsing per SSE event, one iteration per
event, however many arrived together. This transport parses with httptools (llhttp,
in C, ~0.4 µs an event) and yields, per iteration, every body byte that one socket
read brought. A reader that waits between iterations (the relay, while it paces a
stream's events) then gets all the events that arrived meanwhile in one read, and
pays for one wake-up instead of one per event.

It is an ``httpx2.BaseTransport``, plugged into the ``openai`` client through its
documented ``http_client`` option: the package still builds every request (auth,
headers, timeouts), raises its status errors and owns the response. Connections are
kept alive per origin; an idle one the server has closed is dropped before reuse.
Errors are raised as httpx's own exceptions, which the ``openai`` package and the
provider map as they map the default transport's.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator

import httptools
import httpx2

READ_BYTES = 65536
# Idle connections kept per origin; more streams than this in flight open more.
MAX_IDLE_PER_ORIGIN = 4096

Origin = tuple[str, str, int]
# The response extension that holds the body's reader (``reads``).
_BODY = "chatstream.body"


class _Message:
    """httptools' callbacks for one response: status, headers, then body pieces."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once the message is complete the parser forgets it.
        self.keep_alive = self.parser.should_keep_alive()


class StreamingTransport(httpx2.BaseTransport):
    """HTTP/1.1 over keep-alive sockets, for a client whose responses stream."""

    def __init__(self, max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN) -> None:
        self._idle: dict[Origin, list[socket.socket]] = {}
        self._max_idle = max_idle_per_origin
        self._lock = threading.Lock()
        self._tls = None

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        default_port = 443 if url.scheme == "https" else 80
        origin = (url.scheme, url.host, url.port or default_port)
        timeouts = request.extensions.get("timeout", {})
        data = _head(request) + request.read()
        # A kept-alive connection may have been closed by the server just now; a
        # request that got no byte of answer on one is sent again on a new one.
        sock = self._reuse(origin)
        if sock is not None:
            try:
                return self._exchange(request, origin, sock, data, timeouts)
            except _NoAnswer:
                sock.close()
        sock = self._connect(request, origin, timeouts)
        try:
            return self._exchange(request, origin, sock, data, timeouts)
        except _NoAnswer:
            sock.close()
            raise httpx2.RemoteProtocolError(
                "the server closed the connection without answering", request=request
            ) from None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for sock in socks:
                sock.close()

    # -- connections -------------------------------------------------------------------

    def _reuse(self, origin: Origin) -> socket.socket | None:
        while True:
            with self._lock:
                socks = self._idle.get(origin)
                if not socks:
                    return None
                sock = socks.pop()
            # An idle connection has nothing to read unless the server closed it.
            try:
                readable = select.select([sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = [sock]
            if not readable:
                return sock
            sock.close()

    def _release(self, origin: Origin, sock: socket.socket) -> None:
        with self._lock:
            socks = self._idle.setdefault(origin, [])
            if len(socks) < self._max_idle:
                socks.append(sock)
                return
        sock.close()

    def _connect(
        self, request: httpx2.Request, origin: Origin, timeouts: dict
    ) -> socket.socket:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeouts.get("connect"))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    # The same verification as httpx's default transport.
                    self._tls = httpx2.create_ssl_context()
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except TimeoutError as exc:
            message = str(exc) or "timed out"
            raise httpx2.ConnectTimeout(message, request=request) from exc
        except OSError as exc:
            raise httpx2.ConnectError(str(exc), request=request) from exc
        return sock

    # -- one request and its response --------------------------------------------------

    def _exchange(
        self,
        request: httpx2.Request,
        origin: Origin,
        sock: socket.socket,
        data: bytes,
        timeouts: dict,
    ) -> httpx2.Response:
        message = _Message()
        parser = message.parser
        answered = False
        try:
            sock.settimeout(timeouts.get("write"))
            sock.sendall(data)
            sock.settimeout(timeouts.get("read"))
            while True:
                received = sock.recv(READ_BYTES)
                if not received:
                    if not answered:
                        raise _NoAnswer
                    raise httpx2.RemoteProtocolError(
                        "the server closed the connection mid-headers", request=request
                    )
                answered = True
                parser.feed_data(received)
                if message.headers_done and parser.get_status_code() >= 200:
                    break
                if message.headers_done:
                    # An interim 1xx answer: the real one follows.
                    message.headers_done = False
                    message.headers.clear()
        except _NoAnswer:
            raise
        except httpx2.HTTPError:
            sock.close()
            raise
        except TimeoutError as exc:
            sock.close()
            raise httpx2.ReadTimeout("timed out", request=request) from exc
        except (OSError, httptools.HttpParserError) as exc:
            sock.close()
            if not answered and isinstance(exc, OSError):
                raise _NoAnswer from exc
            raise httpx2.RemoteProtocolError(str(exc), request=request) from exc
        body = _Body(self, request, origin, sock, parser, message)
        return httpx2.Response(
            parser.get_status_code(),
            headers=message.headers,
            stream=body,
            # Extensions are where httpx lets a transport hand out its own objects.
            extensions={"http_version": b"HTTP/1.1", _BODY: body},
        )


class _NoAnswer(Exception):
    """The connection closed before any byte of the answer."""


class _Body(httpx2.SyncByteStream):
    """The response body: each iteration is what one read of the socket brought."""

    def __init__(
        self,
        transport: StreamingTransport,
        request: httpx2.Request,
        origin: Origin,
        sock: socket.socket,
        parser: httptools.HttpResponseParser,
        message: _Message,
    ) -> None:
        self._transport = transport
        self._request = request
        self._origin = origin
        self._sock: socket.socket | None = sock
        self._parser = parser
        self._message = message
        # Set while a task is blocked reading; a close from another task (an abort)
        # then only wakes it, and it closes the socket on its way out.
        self._reading = False
        self._closing = False
        names = {name.lower() for name, _ in message.headers}
        # Neither length nor chunks: the body ends when the server closes.
        self._until_close = (
            b"content-length" not in names and b"transfer-encoding" not in names
        )

    def __iter__(self) -> Iterator[bytes]:
        message = self._message
        if message.body:
            yield self._take()
        sock = self._sock
        while not message.complete and sock is not None and not self._closing:
            try:
                self._reading = True
                try:
                    received = sock.recv(READ_BYTES)
                finally:
                    self._reading = False
                    if self._closing:
                        sock.close()
                if self._closing:
                    raise httpx2.ReadError(
                        "closed while reading", request=self._request
                    )
                if not received:
                    if self._until_close:
                        message.complete = True
                        break
                    raise httpx2.RemoteProtocolError(
                        "the server closed the connection before the body ended",
                        request=self._request,
                    )
                self._parser.feed_data(received)
            except TimeoutError as exc:
                raise httpx2.ReadTimeout("timed out", request=self._request) from exc
            except httptools.HttpParserError as exc:
                raise httpx2.RemoteProtocolError(
                    str(exc), request=self._request
                ) from exc
            except OSError as exc:
                raise httpx2.ReadError(str(exc), request=self._request) from exc
            if message.body:
                yield self._take()

    def _finish_if_ready(self, sock: socket.socket) -> None:
        """Read the end of the body when it has already arrived: a reader stops at
        the SSE stream's [DONE], and the end of the HTTP body comes just after it.
        Never waits for it."""
        try:
            while not self._message.complete and select.select([sock], [], [], 0)[0]:
                received = sock.recv(READ_BYTES)
                if not received:
                    return
                self._parser.feed_data(received)
        except (OSError, ValueError, httptools.HttpParserError):
            return

    def _take(self) -> bytes:
        body = self._message.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        return data

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._reading:
            # Another task is blocked in recv: shutting the socket down wakes it
            # (closing it would not, under plain threads), and it closes the socket.
            self._closing = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                sock.close()
            return
        if not self._message.complete and not self._until_close:
            self._finish_if_ready(sock)
        # Reused only when this body was read to its end; closing one early (a stop)
        # closes the connection, which is what tells the server to stop generating.
        if self._message.complete and self._message.keep_alive:
            self._transport._release(self._origin, sock)
        else:
            sock.close()


def reads(response: httpx2.Response) -> Iterator[bytes]:
    """``response``'s body, one socket read per item. Straight from this transport
    when the body came through it unencoded: httpx's own iteration adds four
    generator levels and its decoders to every read."""
    body = response.extensions.get(_BODY)
    if body is not None and "content-encoding" not in response.headers:
        return iter(body)
    return response.iter_bytes()


def _head(request: httpx2.Request) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    lines += [name + b": " + value for name, value in request.headers.raw]
    return b"\r\n".join(lines) + b"\r\n\r\n"
