"""A message's content as stored: its text for search and titles, and image parts
by reference (the bytes go to the blobs table once, keyed by their SHA-256), back to
data URLs on request."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .records import InvalidInput

BLOB_SCHEME = "blob:"
TITLE_CHARS = 60
_DATA_URL = re.compile(
    r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*?)(?P<base64>;base64)?,(?P<data>.*)",
    re.DOTALL | re.IGNORECASE,
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Blob:
    sha256: str
    media_type: str
    data: bytes

    def data_url(self) -> str:
        encoded = base64.b64encode(self.data).decode("ascii")
        return f"data:{self.media_type};base64,{encoded}"


@dataclass(frozen=True)
class Stored:
    """A content as it goes into the messages table."""

    text: str
    parts: list[dict[str, Any]] | None
    # The blobs the parts point at: new ones carry their bytes; ``refs`` are the
    # ``blob:`` URLs the caller sent, which must already be this owner's.
    blobs: dict[str, Blob]
    refs: set[str]

    @property
    def content(self) -> str | list[dict[str, Any]]:
        """The content as read back: images by reference."""
        return self.text if self.parts is None else self.parts


def prepare(content: Any, field: str = "content") -> Stored:
    """Validate ``content`` (a string, or a list of OpenAI content parts) and move
    its data-URL images out to blobs."""
    if isinstance(content, str):
        return Stored(content, None, {}, set())
    if not isinstance(content, list):
        raise InvalidInput(f"{field}: a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    texts: list[str] = []
    blobs: dict[str, Blob] = {}
    refs: set[str] = set()
    for index, part in enumerate(content):
        where = f"{field}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidInput(f"{where}: an object with a string type")
        part = copy.deepcopy(part)
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidInput(f"{where}.text: a string")
            texts.append(part["text"])
        elif part["type"] == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise InvalidInput(f"{where}.image_url.url: a string")
            url = image["url"]
            if url.startswith(BLOB_SCHEME):
                sha = url[len(BLOB_SCHEME) :]
                if not _SHA256.fullmatch(sha):
                    raise InvalidInput(f"{where}.image_url.url: not a stored image")
                refs.add(sha)
            elif url[:5].lower() == "data:":
                blob = _blob_from_data_url(url, f"{where}.image_url.url")
                blobs[blob.sha256] = blob
                image["url"] = BLOB_SCHEME + blob.sha256
        parts.append(part)
    return Stored("\n".join(texts), parts, blobs, refs)


def referenced(parts: list[dict[str, Any]] | None) -> set[str]:
    """The blobs a stored content's parts point at."""
    found = set()
    for part in parts or ():
        url = _image_url(part)
        if url is not None and url.startswith(BLOB_SCHEME):
            found.add(url[len(BLOB_SCHEME) :])
    return found


def restore(
    parts: list[dict[str, Any]], blobs: dict[str, Blob]
) -> list[dict[str, Any]]:
    """The parts with each ``blob:`` URL back to its data URL."""
    restored = []
    for part in parts:
        url = _image_url(part)
        if url is not None and url.startswith(BLOB_SCHEME):
            blob = blobs.get(url[len(BLOB_SCHEME) :])
            if blob is not None:
                part = copy.deepcopy(part)
                part["image_url"]["url"] = blob.data_url()
        restored.append(part)
    return restored


def title_from(text: str, limit: int = TITLE_CHARS) -> str | None:
    """The first user message as a title: one line, cut at a word boundary."""
    text = _SPACE.sub(" ", text).strip()
    if not text:
        return None
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    # A word longer than half the title is cut inside; otherwise at its start.
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def _image_url(part: Any) -> str | None:
    if isinstance(part, dict) and part.get("type") == "image_url":
        image = part.get("image_url")
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            return image["url"]
    return None


def _blob_from_data_url(url: str, field: str) -> Blob:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidInput(f"{field}: not a valid data URL")
    media_type = match["type"].strip().lower()
    if not media_type.startswith("image/"):
        raise InvalidInput(f"{field}: a data:image/… URL")
    if match["base64"]:
        try:
            data = base64.b64decode(_SPACE.sub("", match["data"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{field}: the data URL is not valid base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(match["data"])
    return Blob(hashlib.sha256(data).hexdigest(), media_type, data)
