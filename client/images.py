"""Images attached to a prompt: local files as ``data:`` URLs, web URLs as they are."""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path

# The largest image file sent. OpenAI takes images of up to 20 MB, but the whole
# request goes over one Socket.IO message, and base64 makes a file a third larger.
MAX_IMAGE_BYTES = 8 * 1024 * 1024

ImageSource = str | os.PathLike[str]


def image_url(source: ImageSource) -> str:
    """The URL an ``image_url`` part carries for ``source``.

    An ``http(s)://`` URL or a ``data:image/…`` URL passes as it is (the relay never
    fetches a URL: the model's provider does). Anything else is a local file, read
    into a ``data:`` URL of its type (by its name's extension). Raises
    ``ValueError`` saying why for a file that is missing, unreadable, not an image,
    or larger than ``MAX_IMAGE_BYTES``.
    """
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        return source
    if isinstance(source, str) and source.startswith("data:"):
        if not source.startswith("data:image/"):
            raise ValueError(f"{source[:40]!r}…: a data: URL of an image is needed")
        return source
    path = Path(source)
    mime, _ = mimetypes.guess_type(path.name)
    if mime is None or not mime.startswith("image/"):
        raise ValueError(
            f"{str(path)!r} is not an image file (type {mime or 'unknown'}); "
            "attach a .png, .jpg, .gif or .webp file"
        )
    try:
        with path.open("rb") as file:
            # Read no more than the cap allows, whatever the file's size.
            data = file.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(
            f"{str(path)!r} is larger than {MAX_IMAGE_BYTES // 2**20} MiB, the "
            "largest image sent"
        )
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
