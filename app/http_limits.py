"""HTTP request bodies, bounded while they arrive, on every route.

- ``body_too_large`` (413): a body over ``MAX_BODY_BYTES``. A ``Content-Length``
  over it is answered before a byte of the body is read; a chunked body is counted
  as it is read and refused at the first byte past the cap.
- ``request_timeout`` (408): no byte of the body for ``REQUEST_READ_TIMEOUT``
  seconds, however the application reads it.
- ``too_many_connections`` (429): a request whose body is still arriving holds a
  place of its address under ``MAX_CONNECTIONS_PER_ADDRESS``, beside the address's
  open Socket.IO sessions, from its headers until its body is read: one address
  cannot take every connection of the worker with bodies it never finishes. (A
  long-polling client's messages to its own session are not counted twice: the
  session holds the place.)

Each refusal then closes the connection: the rest of the body is never read. Under
``/v1`` and ``/api`` the body is OpenAI's error object; elsewhere ``{code, message,
retryable}``.
A request without a body passes through untouched.

Each refusal is counted in ``chat_connections_refused_total`` under its code.

The time a request's line and headers may take is gunicorn's business: its gevent
and eventlet workers give them ``keepalive`` seconds; its gthread worker gives them
no limit, so ``internals.watch_request_heads`` adds one. The read timeout needs
gunicorn's socket (``internals.request_socket``); without gunicorn (``python
wsgi.py``) only the size cap and the count apply.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from . import internals
from .admission import Admission
from .auth import client_address
from .errors import RETRYABLE, ProtocolError
from .openai_format import ERROR_OBJECT_PATHS, error_body

log = logging.getLogger(__name__)

# What one read of the body asks the server for: a read of "everything" is done in
# pieces of this size, so that the cap is checked between them.
READ_BYTES = 65536
# A body the application left unread is read to its end, and the connection kept,
# when this little is left; a bigger rest closes the connection instead.
DRAIN_BYTES = 65536
# After refusing a body that may still be arriving, what comes is read and dropped
# for this long before the connection closes: closed with unread bytes, it would be
# reset, and the client could lose the refusal it had not read yet.
LINGER_SECONDS = 2.0

_STATUS = {
    "invalid_request": "400 Bad Request",
    "body_too_large": "413 Content Too Large",
    "request_timeout": "408 Request Timeout",
    "too_many_connections": "429 Too Many Requests",
}


class BodyRefused(ProtocolError):
    """A request body broke a limit while it was being read."""

    def __init__(self, code: str, message: str, retry_after: int | None = None):
        super().__init__(code, message, None, retry_after)


class HttpLimits:
    """``MAX_BODY_BYTES``, ``REQUEST_READ_TIMEOUT`` and the per-address count of
    requests whose body is arriving, as a WSGI middleware."""

    def __init__(self, config: Mapping[str, Any], admission: Admission):
        self.max_body: int = config["MAX_BODY_BYTES"]
        self.read_timeout: float = config["REQUEST_READ_TIMEOUT"]
        self.trusted_proxies: list[str] = config["TRUSTED_PROXIES"]
        self.admission = admission
        timeout = BodyRefused(
            "request_timeout",
            f"request: nothing arrived for {self.read_timeout:g} s; send it whole",
        )
        internals.watch_request_heads(self.read_timeout, _raw_response(timeout))

    def middleware(self, wsgi_app: Callable) -> Callable:
        def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            internals.request_head_read(environ)
            length = environ.get("CONTENT_LENGTH")
            chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
            if not chunked and (not length or length == "0"):
                return wsgi_app(environ, start_response)
            return self._with_body(wsgi_app, environ, start_response, length, chunked)

        return app

    def _with_body(
        self,
        wsgi_app: Callable,
        environ: dict[str, Any],
        start_response: Callable,
        length: str | None,
        chunked: bool,
    ) -> Iterable[bytes]:
        try:
            size = None if chunked else int(length or 0)
        except ValueError:
            size = None  # gunicorn refuses a malformed length before this
        if size is not None and size > self.max_body:
            refused = BodyRefused(
                "body_too_large",
                f"body: {size} bytes; the limit is {self.max_body}",
            )
            return self._refuse(refused, environ, start_response)
        release: Callable[[], None] = _nothing
        if not _of_a_session(environ):
            address = client_address(environ, self.trusted_proxies)
            refusal = self.admission.take_request(address)
            if refusal is not None:
                refused = BodyRefused(
                    refusal.code, refusal.message, refusal.retry_after
                )
                return self._refuse(refused, environ, start_response)
            release = partial(self.admission.release_request, address)
        body = BoundedBody(
            environ["wsgi.input"],
            size,
            self.max_body,
            internals.request_socket(environ),
            self.read_timeout,
            release,
        )
        environ["wsgi.input"] = body
        # The application's status and headers wait until it has returned: a
        # body that broke a limit meanwhile is answered with the limit's instead.
        deferred = _Deferred(start_response)
        try:
            try:
                result = wsgi_app(environ, deferred)
            except Exception:
                if body.refused is None:
                    raise
                result = None
            if body.refused is not None and not deferred.forwarded:
                # Whatever the application made of the failed read (an error
                # response, a 500), the answer is the limit's.
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                return self._refuse(body.refused, environ, start_response)
            if not body.finish():
                internals.stop_reading(environ)
            deferred.forward()
            return result
        finally:
            body.release()

    def _refuse(
        self,
        refused: BodyRefused,
        environ: Mapping[str, Any],
        start_response: Callable,
    ) -> Iterable[bytes]:
        self.admission.count_refusal(refused.code)
        return _refuse(refused, environ, start_response)


def _of_a_session(environ: Mapping[str, Any]) -> bool:
    """A long-polling client's message to its Engine.IO session, which holds a
    place of its address already: refused for the address's other places, its
    session could not even be closed."""
    return environ.get("PATH_INFO", "").startswith(
        "/socket.io/"
    ) and "sid" in urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))


def _nothing() -> None:
    pass


class _Deferred:
    """A ``start_response`` that holds the application's call until ``forward``,
    then passes every call straight on (an application may call it late, from its
    response's iteration)."""

    def __init__(self, start_response: Callable):
        self._start_response = start_response
        self._call: tuple[Any, ...] | None = None
        self._write: Callable[[bytes], Any] | None = None
        self.forwarded = False

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], Any]:
        if self.forwarded:
            self._write = self._start_response(status, headers, exc_info)
            return self._write
        self._call = (status, headers, exc_info)
        return self._write_now

    def forward(self) -> None:
        if not self.forwarded:
            self.forwarded = True
            if self._call is not None:
                self._write = self._start_response(*self._call)

    def _write_now(self, data: bytes) -> Any:
        # WSGI's legacy write(): the headers go first.
        self.forward()
        assert self._write is not None
        return self._write(data)


class BoundedBody:
    """A request's ``wsgi.input``: read with a timeout, counted against the cap, and
    its address's place given back once it has all arrived."""

    def __init__(
        self,
        stream: Any,
        size: int | None,
        limit: int,
        sock: socket.socket | None,
        timeout: float,
        release: Callable[[], None],
    ):
        self._stream = stream
        # Bytes still announced by Content-Length; None for a chunked body.
        self._left = size
        self._limit = limit
        self._sock = sock
        self._timeout = timeout
        self._release = release
        self._released = False
        self._lock = threading.Lock()
        self.read_bytes = 0
        self.done = size == 0
        self.refused: BodyRefused | None = None

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            pieces = []
            while piece := self._read(READ_BYTES):
                pieces.append(piece)
            return b"".join(pieces)
        return self._read(size)

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = READ_BYTES
        return self._call(self._stream.readline, size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def _read(self, size: int) -> bytes:
        if self._left is not None:
            size = min(size, self._left)
        if size <= 0 or self.done:
            self._arrived()
            return b""
        return self._call(self._stream.read, size)

    def _call(self, read: Callable[[int], bytes], size: int) -> bytes:
        if self.refused is not None:
            raise self.refused
        # One byte past the cap is enough to know that the body breaks it.
        size = min(size, self._limit - self.read_bytes + 1)
        try:
            with internals.read_timeout(self._sock, self._timeout):
                data = read(size)
        except TimeoutError:
            self.refused = BodyRefused(
                "request_timeout",
                f"body: nothing arrived for {self._timeout:g} s; send it whole",
            )
            raise self.refused from None
        except Exception as exc:
            # gunicorn's parser on a malformed chunk, or a body cut off: the
            # client's fault, never the server's 500.
            self.refused = BodyRefused(
                "invalid_request",
                f"body: could not be read ({type(exc).__name__}: a malformed "
                "chunk, or the body ended before its length)",
            )
            raise self.refused from None
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            self.refused = BodyRefused(
                "body_too_large", f"body: over the limit of {self._limit} bytes"
            )
            raise self.refused
        if self._left is not None:
            self._left -= len(data)
        if not data or self._left == 0:
            self._arrived()
        return data

    def _arrived(self) -> None:
        self.done = True
        self.release()

    def finish(self) -> bool:
        """Read what the application left of a small body, so that the connection
        can serve its next request; False when the rest is too big or broke a
        limit, and the connection must close."""
        if self.done:
            return True
        if self.refused is not None or (
            self._left is not None and self._left > DRAIN_BYTES
        ):
            return False
        try:
            drained = 0
            while drained <= DRAIN_BYTES and (piece := self._read(READ_BYTES)):
                drained += len(piece)
        except (BodyRefused, OSError):
            return False
        return self.done

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._release()


def _payload(refused: BodyRefused, path: str) -> bytes:
    if path.startswith(ERROR_OBJECT_PATHS):
        return json.dumps(error_body(refused.code, refused.message)).encode()
    payload = {"code": refused.code, "message": refused.message}
    return json.dumps({**payload, "retryable": RETRYABLE[refused.code]}).encode()


def _raw_response(refused: BodyRefused) -> bytes:
    """``refused`` as a whole HTTP response, for a request not yet read to its path."""
    body = _payload(refused, "")
    head = (
        f"HTTP/1.1 {_STATUS[refused.code]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refusal:
    """A refusal's body; once it is written, the connection closes (``close``)."""

    def __init__(self, body: bytes, environ: Mapping[str, Any], linger: bool):
        self._body = body
        self._environ = environ
        self._linger = linger

    def __iter__(self) -> Iterator[bytes]:
        return iter((self._body,))

    def close(self) -> None:
        if self._linger:
            internals.linger(self._environ, LINGER_SECONDS)
        else:
            internals.stop_reading(self._environ)


def _refuse(
    refused: BodyRefused, environ: Mapping[str, Any], start_response: Callable
) -> Iterable[bytes]:
    """Answer ``refused`` and close the connection after the answer: what is left
    of the body is not read."""
    body = _payload(refused, environ.get("PATH_INFO", ""))
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    if refused.retry_after is not None:
        headers.append(("Retry-After", str(refused.retry_after)))
    # Counted in chat_connections_refused_total; a line each would let a client
    # write the log as fast as it sends requests.
    log.debug("request refused: %s: %s", refused.code, refused.message)
    start_response(_STATUS[refused.code], headers)
    # A body that timed out is not arriving; one refused for its size or its
    # address may be.
    return _Refusal(body, environ, linger=refused.code != "request_timeout")
