"""Error codes, and the error every transport answers a refused request with.

The README's error table is the human-readable form of ``RETRYABLE``.
"""

import math
import re
from typing import Any

# Error codes sent in ``error`` events, with whether retrying can help.
RETRYABLE = {
    "invalid_request": False,
    "unknown_id": False,
    "busy": True,
    "rate_limited": True,
    "resume_denied": False,
    "shutting_down": True,
    "interrupted": True,
    "upstream_auth": False,
    "upstream_not_found": False,
    "upstream_rate_limited": True,
    "upstream_unavailable": True,
    "upstream_timeout": True,
    "upstream_error": False,
    # The upstream answered something that is not its API: a chunk that is not JSON.
    "upstream_bad_response": True,
    "internal": False,
    # The HTTP transport's own (openai_api.py); Socket.IO has them as connect errors
    # or as invalid_request.
    "unauthorized": False,
    "forbidden_origin": False,
    # Any request whose Host is not allowed (app/origins.py).
    "host_not_allowed": False,
    "model_not_found": False,
    # Under /v1/: a path or a method that is not served.
    "not_found": False,
    "method_not_allowed": False,
    # Refused connections (app/admission.py, the connect handler): a refused
    # handshake's HTTP body, or a connect error's data.
    "too_many_connections": False,
    "handshake_rate_limited": True,
    "server_full": True,
    # HTTP request bodies (app/http_limits.py).
    "body_too_large": False,
    "request_timeout": True,
    # The conversation store (app/conversations.py) failed: unreachable, full, busy.
    "history_unavailable": True,
    # Moderation (app/moderation): a message that did not pass the content filter,
    # and one that could not be checked (the moderator failed, MODERATION_ON_ERROR
    # block).
    "content_filtered": False,
    "moderation_unavailable": True,
}

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "cancelled")


class ProtocolError(Exception):
    """A request the server answers with an ``error`` event and a negative ack."""

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retryable = RETRYABLE[code]
        # Seconds after which a retry can succeed, when the server knows.
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.retry_after is not None:
            data["retry_after"] = max(1, math.ceil(self.retry_after))
        if self.request_id is not None:
            data = {"id": self.request_id, **data}
        return data


def already_live(request_id: str) -> ProtocolError:
    return ProtocolError(
        "invalid_request",
        f"id: {request_id!r} is already live on this connection",
        request_id,
    )


def resume_denied(request_id: str) -> ProtocolError:
    return ProtocolError(
        "resume_denied",
        f"id: no resumable request {request_id!r} with this token",
        request_id,
    )


def interrupted(request_id: str) -> dict[str, Any]:
    """The error event of a request whose generating node died."""
    return ProtocolError(
        "interrupted",
        "the server generating this answer stopped; retry",
        request_id,
    ).payload()


# A UTF-16 surrogate on its own: JSON's "\ud800" decodes to one, and it is no text
# (it cannot be encoded to go upstream, to a log or to a tokenizer).
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_error(data: Any, root: str = "payload") -> str | None:
    """Where ``data`` holds a string (a value or a key) with a lone surrogate: an
    ``invalid_request`` message naming that field; None when it holds none.
    Iterative, so that the deepest JSON a parser accepts is walked too."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                # A key is named as its escapes: the message must be text too.
                name = (path or root).encode("utf-8", "backslashreplace").decode()
                return f"{name}: holds a lone UTF-16 surrogate, which is not text"
        elif isinstance(value, dict):
            items = list(value.items())
            for key, item in reversed(items):
                name = f"{path}.{key}" if path else str(key)
                stack.append((item, name))
                stack.append((key, name))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                stack.append((value[index], f"{path}[{index}]"))
    return None
