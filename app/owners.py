"""Who owns a conversation: the authenticated identity, or an anonymous browser's
signed cookie.

A static or signed token's identity owns its conversations from any device. Without
tokens configured, every client is anonymous; a browser then gets a random owner id
in a signed, HttpOnly, SameSite cookie (``chatstream_owner``) from the page or the
REST API, and sends it with every request, the Socket.IO handshake included.
Clearing the cookie loses access to those conversations: nothing else names them.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

from itsdangerous import URLSafeSerializer

log = logging.getLogger(__name__)

COOKIE = "chatstream_owner"
# Browsers keep a cookie at most 400 days.
MAX_AGE = 400 * 24 * 3600
_SALT = "chatstream.owner"
_ROOT = Path(__file__).resolve().parent.parent


def room(owner: str) -> str:
    """The Socket.IO room of every connection of ``owner``."""
    return "owner:" + owner


class Owners:
    """Reads and issues owner cookies with one secret."""

    def __init__(self, config: Mapping[str, Any]):
        secret = config.get("OWNER_SECRET") or config.get("AUTH_SECRET")
        self._serializer = URLSafeSerializer(
            secret or _kept_secret(config["OWNER_SECRET_FILE"]), salt=_SALT
        )

    def of(self, identity: str, environ: Mapping[str, Any]) -> str | None:
        """The owner of a request from ``identity``: itself when a token names it,
        else the cookie's anonymous owner, or None without a valid cookie."""
        if not identity.startswith("addr:"):
            return identity
        value = _cookie(environ)
        return self._anonymous(value) if value is not None else None

    def issue(self, identity: str, environ: Mapping[str, Any]) -> str | None:
        """A new cookie value for an anonymous request without a valid one."""
        if not identity.startswith("addr:") or self.of(identity, environ):
            return None
        return self._serializer.dumps(secrets.token_urlsafe(16))

    def anonymous_owner(self, value: str) -> str:
        """The owner a cookie value just issued names."""
        owner = self._anonymous(value)
        if owner is None:
            raise ValueError("not an owner cookie this server issued")
        return owner

    def set_cookie(self, response: Any, value: str, environ: Mapping[str, Any]) -> None:
        """Set the owner cookie on a Flask ``response``."""
        response.set_cookie(
            COOKIE,
            value,
            max_age=MAX_AGE,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=environ.get("wsgi.url_scheme") == "https",
        )

    def _anonymous(self, value: str) -> str | None:
        if not value.isascii():
            return None
        try:
            owner_id = self._serializer.loads(value)
        except Exception:
            # A tampered, truncated or foreign cookie names nobody.
            return None
        return "anon:" + owner_id if isinstance(owner_id, str) and owner_id else None


def _cookie(environ: Mapping[str, Any]) -> str | None:
    header = environ.get("HTTP_COOKIE")
    if not header:
        return None
    try:
        morsel = SimpleCookie(header).get(COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


def _kept_secret(path: str) -> str:
    """The secret kept in ``path``, made on first start: cookies stay valid across
    restarts. Several nodes set ``OWNER_SECRET`` instead."""
    file = Path(path)
    if not file.is_absolute():
        file = _ROOT / file
    try:
        return file.read_text().strip()
    except FileNotFoundError:
        pass
    file.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        # O_EXCL: of several workers starting at once, one writes; the rest read it.
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return file.read_text().strip()
    with os.fdopen(descriptor, "w") as out:
        out.write(secret)
    log.info("owner cookie secret created")
    return secret
