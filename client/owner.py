"""Where the command line keeps an anonymous owner's cookie between runs.

A server without tokens knows an anonymous client by its signed owner cookie alone:
without it, the next run is a new owner that sees none of the earlier conversations
(``--list``, ``--continue``). One file per server, named by its host and port:
``$XDG_CONFIG_HOME/chatstream/owner-HOST:PORT`` (``~/.config`` when unset), readable
by the user only (0600). Deleting it loses access to those conversations, as
clearing a browser's cookies does. With a token, the token is the owner and no file
is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from client.api import valid_cookie

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def cookie_path(url: str) -> Path:
    """The file that keeps the owner cookie for the server at ``url``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
    config = os.environ.get("XDG_CONFIG_HOME") or ""
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "chatstream" / f"owner-{host}:{port}"


def read_cookie(url: str) -> str | None:
    """The cookie kept for ``url``, None when there is none (or it is unreadable)."""
    try:
        value = cookie_path(url).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value if valid_cookie(value) else None


def save_cookie(url: str, value: str) -> Path:
    """Keep ``value`` for ``url``, readable by the user only; returns the file.
    Raises ``OSError`` when it cannot be written."""
    path = cookie_path(url)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written aside and renamed: a run that dies mid-write leaves the old cookie.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(value + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
