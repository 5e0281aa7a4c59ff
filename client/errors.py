"""The errors a request ends with."""

from __future__ import annotations


class ChatError(Exception):
    """A request that failed: ``code``, ``message`` and ``retryable``.

    ``code`` is one of the server's error codes, the code of a refused connection
    (``unauthorized``, ``too_many_connections``, ``handshake_rate_limited``,
    ``server_full``), or ``timeout``, ``connection_failed``, ``disconnected`` or
    ``lost_chunks`` (chunks that never arrived and could not be fetched again) for
    failures seen by the client; from the REST API of stored conversations, the
    server's code (``not_found``, ``history_unavailable``, ``unauthorized``, …), or
    ``http_error`` and ``bad_response`` for an answer that is not the API's.
    ``retryable`` is the server's word on the code (False when it said none), or
    the client's own for the codes it raises.
    """

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        # One argument only: OSError (see ChatConnectionError) would read three as
        # errno, strerror and filename.
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class ChatConnectionError(ChatError, ConnectionError):
    """The server cannot be reached, or the connection dropped mid-request."""
