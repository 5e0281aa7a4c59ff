"""The relay's REST API of stored conversations (``/api/conversations``), as the
client calls it: who it is to the server (a token, or the anonymous owner cookie),
the calls, and their errors as ``ChatError``."""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from client.errors import ChatConnectionError, ChatError

# The cookie that names an anonymous owner (the server's app/owners.py).
OWNER_COOKIE = "chatstream_owner"
# The most conversations the server lists in one page.
MAX_PAGE = 100
# What a cookie value may hold here: a signed value is URL-safe base64 and dots; one
# read from a file that holds anything else is not sent.
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,4096}")
# The statuses after which the same call may succeed.
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def valid_cookie(value: Any) -> bool:
    """Whether ``value`` can be an owner cookie's value."""
    return isinstance(value, str) and _COOKIE_VALUE.fullmatch(value) is not None


def reason(exc: Exception) -> str:
    """The gist of a connection failure; requests' own text names pools and
    retries."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text


def http_base(url: str) -> str:
    """The HTTP origin of the server at ``url`` (``ws(s)://`` becomes
    ``http(s)://``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


class Api:
    """Calls to one server's REST API as one owner.

    With ``token`` the token is the owner (``Authorization: Bearer``). Without, the
    owner is the anonymous one the ``chatstream_owner`` cookie names: ``cookie``
    holds its value, is sent with every call, and is replaced by the one a response
    sets (the server sets one when the call carried none, or one it could not
    read).
    """

    def __init__(
        self, url: str, *, token: str | None, cookie: str | None, timeout: float
    ) -> None:
        self.url = url
        self.base = http_base(url)
        self.token = token
        self.cookie = cookie if valid_cookie(cookie) else None
        self.timeout = timeout

    def headers(self) -> dict[str, str]:
        """What names the owner: for these calls and for the Socket.IO handshake
        (a fresh dict each time: python-engineio consumes its ``Cookie``)."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.cookie:
            return {"Cookie": f"{OWNER_COOKIE}={self.cookie}"}
        return {}

    def call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON the call answers, or ``ChatError`` with the server's code."""
        try:
            response = requests.request(
                method,
                self.base + path,
                params=params,
                headers={"Accept": "application/json", **self.headers()},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ChatConnectionError(
                "connection_failed",
                f"cannot connect to {self.url}: {reason(exc)}",
                retryable=True,
            ) from exc
        with response:
            issued = response.cookies.get(OWNER_COOKIE)
            if not self.token and valid_cookie(issued):
                self.cookie = issued
            if response.status_code >= 400:
                raise _error(response)
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise ChatError(
                    "bad_response",
                    f"{method} {path}: the server's answer is not JSON",
                ) from None

    def introduce(self) -> None:
        """Get (or confirm) the owner cookie of an anonymous client: any answer of
        the API sets it when the call carried no valid one. A server that refuses
        (it wants a token) or has no API leaves the client as it was: its own
        refusal comes at the Socket.IO connect."""
        try:
            self.call("GET", "/api/conversations", {"limit": 1})
        except ChatConnectionError:
            raise
        except ChatError:
            pass

    def conversations(self, q: str | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` conversations, newest first (pages followed as needed)."""
        found: list[dict[str, Any]] = []
        before: str | None = None
        while len(found) < limit:
            params: dict[str, Any] = {"limit": min(MAX_PAGE, limit - len(found))}
            if q:
                params["q"] = q
            if before:
                params["before"] = before
            page = self.call("GET", "/api/conversations", params)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise ChatError(
                    "bad_response", "GET /api/conversations: no data in the answer"
                )
            found += data
            before = page.get("next_cursor")
            if not data or not before:
                break
        return found[:limit]

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        """The conversation with all its messages (every branch, oldest first)."""
        path = "/api/conversations/" + quote(conversation_id, safe="")
        found = self.call("GET", path)
        if not isinstance(found, dict) or not isinstance(found.get("messages"), list):
            raise ChatError(
                "bad_response", "GET /api/conversations/{id}: no messages in the answer"
            )
        return found


def _error(response: requests.Response) -> ChatError:
    """The server's ``{"error": {code, message}}``, or the status when the body is
    not that (a proxy's page)."""
    error: Any = None
    with contextlib.suppress(ValueError, AttributeError):
        error = response.json().get("error")
    status = response.status_code
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return ChatError(
            "not_found" if status == 404 else "http_error",
            f"{response.request.method} {urlsplit(response.url).path}: "
            f"HTTP {status} {response.reason}",
            retryable=status in _RETRYABLE,
        )
    code = error["code"]
    return ChatError(
        code,
        str(error.get("message") or f"HTTP {status}"),
        retryable=status in _RETRYABLE or code == "history_unavailable",
    )
