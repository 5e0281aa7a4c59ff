"""The conversations' REST API: an owner's conversations listed, searched, read,
renamed, deleted, exported and imported, and the images they show.

The caller is authenticated as on ``/v1``: a browser's ``Origin`` must be one
Socket.IO accepts, and with ``AUTH_TOKENS`` or ``AUTH_SECRET`` set, a Bearer token
names the owner. Without them every caller is anonymous and owns by the signed
``chatstream_owner`` cookie (app/owners.py); a request without a valid one is a new
owner, who owns nothing yet, and its response sets the cookie. Another owner's
conversation is ``not_found`` (404), exactly as one that does not exist.

Errors are JSON in the ``/v1`` shape: ``{"error": {"message", "type", "param",
"code"}}``; a failing store is 503 ``history_unavailable``, retryable.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from flask import (
    Blueprint,
    Response,
    after_this_request,
    current_app,
    jsonify,
    request,
)

from .conversations import History
from .errors import ProtocolError
from .history import Conversation
from .history.content import BLOB_SCHEME
from .history.models import ID_LENGTH
from .history.store import MAX_PAGE
from .http_transport import answer_errors, client, cors, preflight
from .openai_format import read_json

bp = Blueprint("conversations_api", __name__)

DEFAULT_PAGE = 50
# Longer than any words worth looking for; a cursor the listing gave is ~80.
MAX_QUERY_CHARS = 500
MAX_CURSOR_CHARS = 200
BLOBS = "/api/blobs/"
# An image fetched by the page is the same bytes for ever (its name is its hash).
BLOB_CACHE = "private, max-age=31536000, immutable"
# What a stored image may be shown as; any other type (SVG, which can hold scripts,
# among them) is a download.
INLINE_IMAGES = frozenset(
    ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp")
)
EXPORTS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}
_MEDIA_TYPE = re.compile(r"image/[a-z0-9][a-z0-9.+-]{0,100}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# -- who is asking ---------------------------------------------------------------------


def _owner() -> str:
    """The owner of this request's conversations, after the checks ``/v1`` makes.
    An anonymous caller without a valid cookie becomes a new owner, whose cookie
    the response sets (an error response's too)."""
    identity = client()
    owners = current_app.extensions["owners"]
    owner = owners.of(identity, request.environ)
    if owner is not None:
        return owner
    value = owners.issue(identity, request.environ)
    environ = request.environ

    @after_this_request
    def set_cookie(response: Response) -> Response:
        owners.set_cookie(response, value, environ)
        return response

    return owners.anonymous_owner(value)


def _history() -> History:
    history = current_app.extensions.get("history")
    if history is None:
        raise ProtocolError(
            "not_found", "this server keeps no conversations (HISTORY=false)"
        )
    return history


# -- errors and headers ----------------------------------------------------------------


answer_errors(bp)


@bp.after_request
def _headers(response: Response) -> Response:
    # Each response is what its Content-Type says, never a script a browser guessed.
    response.headers["X-Content-Type-Options"] = "nosniff"
    if "Cache-Control" not in response.headers:
        # An owner's conversations: never kept by a shared cache.
        response.headers["Cache-Control"] = "private, no-store"
    cors(response, ("Content-Disposition",))
    if "Access-Control-Allow-Origin" in response.headers:
        # An allowed page elsewhere may send the owner cookie, as it may to Socket.IO.
        response.headers["Access-Control-Allow-Credentials"] = "true"
    return response


@bp.route("/api/conversations", methods=["OPTIONS"])
@bp.route("/api/conversations/<conversation_id>", methods=["OPTIONS"])
@bp.route("/api/conversations/<conversation_id>/export", methods=["OPTIONS"])
@bp.route("/api/blobs/<sha256>", methods=["OPTIONS"])
def _preflight(conversation_id: str | None = None, sha256: str | None = None):
    """A browser's CORS preflight, answered for the origins Socket.IO accepts."""
    response = preflight("Authorization, Content-Type")
    response.headers["Access-Control-Allow-Methods"] = (
        "GET, POST, PATCH, DELETE, OPTIONS"
    )
    return response


# -- conversations ---------------------------------------------------------------------


@bp.get("/api/conversations")
def list_conversations() -> Response:
    """The owner's conversations, most recently updated first, a page at a time;
    ``q`` keeps those whose title or a message has its words."""
    owner = _owner()
    limit = _limit(request.args.get("limit"))
    before = request.args.get("before") or None
    if before is not None and len(before) > MAX_CURSOR_CHARS:
        raise ProtocolError("invalid_request", "before: not a cursor from this listing")
    q = request.args.get("q")
    if q is not None and len(q) > MAX_QUERY_CHARS:
        raise ProtocolError(
            "invalid_request", f"q: longer than {MAX_QUERY_CHARS} characters"
        )
    if q is not None and "\x00" in q:
        raise ProtocolError("invalid_request", "q: holds a NUL character")
    page = _history().list(owner, limit, before, q or None)
    return jsonify(
        data=[c.to_dict(messages=False) for c in page.conversations],
        next_cursor=page.next_cursor,
    )


@bp.post("/api/conversations")
def import_conversation() -> tuple[Response, int, dict[str, str]]:
    """Recreate a conversation from its JSON export (``…/export?format=json``), as
    a new conversation of the caller's, with new ids."""
    owner = _owner()
    document = read_json(request.get_data(cache=False))
    conversation = _history().import_json(owner, document)
    location = f"/api/conversations/{urllib.parse.quote(conversation.id)}"
    return jsonify(_conversation(conversation)), 201, {"Location": location}


@bp.get("/api/conversations/<conversation_id>")
def get_conversation(conversation_id: str) -> Response:
    """The conversation with every message of every branch, oldest first."""
    owner = _owner()
    conversation_id = _conversation_id(conversation_id)
    return jsonify(_conversation(_history().get(owner, conversation_id)))


@bp.patch("/api/conversations/<conversation_id>")
def rename_conversation(conversation_id: str) -> Response:
    """Set the title: ``{"title": "…"}``, 1 to 200 characters once each run of
    whitespace is one space."""
    owner = _owner()
    conversation_id = _conversation_id(conversation_id)
    body = read_json(request.get_data(cache=False))
    if not isinstance(body, dict):
        raise ProtocolError("invalid_request", "body: must be a JSON object")
    for key in body:
        if key != "title":
            raise ProtocolError("invalid_request", f"{key}: not a field to change")
    if not isinstance(body.get("title"), str):
        raise ProtocolError("invalid_request", "title: a string is required")
    if "\x00" in body["title"]:
        raise ProtocolError("invalid_request", "title: holds a NUL character")
    conversation = _history().rename(owner, conversation_id, body["title"])
    return jsonify(conversation.to_dict(messages=False))


@bp.delete("/api/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> Response:
    """Delete the conversation, its messages and the images only it shows."""
    owner = _owner()
    conversation_id = _conversation_id(conversation_id)
    _history().delete(owner, conversation_id)
    return Response(status=204)


@bp.get("/api/conversations/<conversation_id>/export")
def export_conversation(conversation_id: str) -> Response:
    """The conversation as a file: Markdown (the branch in view) or JSON (every
    branch and image; ``POST /api/conversations`` reads it back)."""
    owner = _owner()
    conversation_id = _conversation_id(conversation_id)
    format = request.args.get("format", "md")
    if format not in EXPORTS:
        raise ProtocolError("invalid_request", "format: md or json")
    history = _history()
    # The title names the file.
    title = history.summary(owner, conversation_id).title
    text = history.export(owner, conversation_id, format)
    response = Response(text, content_type=EXPORTS[format])
    response.headers["Content-Disposition"] = _attachment(title, format)
    return response


# -- images ----------------------------------------------------------------------------


@bp.get("/api/blobs/<sha256>")
def blob(sha256: str) -> Response:
    """An image one of the owner's messages shows, by its SHA-256."""
    owner = _owner()
    if not _SHA256.fullmatch(sha256):
        raise ProtocolError("invalid_request", "sha256: 64 lowercase hex digits")
    found = _history().blob(owner, sha256)
    media_type = found.media_type
    if not _MEDIA_TYPE.fullmatch(media_type):
        media_type = "application/octet-stream"
    response = Response(found.data, content_type=media_type)
    # Never a document that runs anything, even opened on its own.
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    if media_type not in INLINE_IMAGES:
        extension = media_type.partition("/")[2].partition("+")[0] or "bin"
        response.headers["Content-Disposition"] = (
            f'attachment; filename="{sha256[:16]}.{_safe_name(extension)}"'
        )
    response.headers["Cache-Control"] = BLOB_CACHE
    response.set_etag(sha256)
    return response.make_conditional(request)


# -- shapes ----------------------------------------------------------------------------


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE
    digits = raw.isascii() and raw.isdigit() and len(raw) <= 3
    if not digits or not 1 <= int(raw) <= MAX_PAGE:
        raise ProtocolError(
            "invalid_request", f"limit: a whole number from 1 to {MAX_PAGE}"
        )
    return int(raw)


def _conversation_id(value: str) -> str:
    """A conversation id from a path: one that no conversation can have is not
    found, without asking the store (PostgreSQL refuses a NUL in any text)."""
    if len(value) > ID_LENGTH or "\x00" in value:
        raise ProtocolError("not_found", "no such conversation")
    return value


def _conversation(conversation: Conversation) -> dict[str, Any]:
    """The conversation as JSON, its images' URLs being this API's."""
    data = conversation.to_dict()
    for message in data["messages"]:
        if isinstance(message["content"], list):
            message["content"] = [_with_url(part) for part in message["content"]]
    return data


def _with_url(part: Any) -> Any:
    image = part.get("image_url") if isinstance(part, dict) else None
    url = image.get("url") if isinstance(image, dict) else None
    if isinstance(url, str) and url.startswith(BLOB_SCHEME):
        return {**part, "image_url": {**image, "url": BLOBS + url[len(BLOB_SCHEME) :]}}
    return part


def _safe_name(text: str) -> str:
    return _UNSAFE_NAME.sub("-", text).strip("-.")[:80].strip("-.")


def _attachment(title: str | None, format: str) -> str:
    """A download named after the title: an ASCII name for every browser, and the
    title itself (RFC 6266's ``filename*``) for those that read it."""
    fallback = f"{_safe_name(title or '') or 'conversation'}.{format}"
    value = f'attachment; filename="{fallback}"'
    if title:
        name = " ".join(title.split())[:120] + f".{format}"
        value += f"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"
    return value
