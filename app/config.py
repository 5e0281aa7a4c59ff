"""Configuration, read once from environment variables; one set but empty means its
default.

Every key equals its environment variable; ``OPENAI_*`` keep the openai package's names.
``.env.example`` documents each one.
"""

import os


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(name: str, default: str = "") -> list[str]:
    raw = os.environ.get(name, default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class Config:
    # Server
    # No SECRET_KEY: nothing here uses Flask's cookie session, and without a key
    # Flask skips opening one for each Socket.IO event.
    ASYNC_MODE = os.environ.get("ASYNC_MODE") or "gevent"
    WEB_DIST_DIR = os.environ.get("WEB_DIST_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "client", "web", "dist"
    )
    SHUTDOWN_GRACE_SECONDS = _float("SHUTDOWN_GRACE_SECONDS", 20)

    # Model provider
    LLM_PROVIDER = os.environ.get("LLM_PROVIDER") or "auto"
    LLM_MODEL = os.environ.get("LLM_MODEL", "")
    LLM_MODELS = _list("LLM_MODELS")
    SYSTEM_PROMPT = os.environ.get("SYSTEM_PROMPT", "")
    # Whether clients may send system and developer messages (after SYSTEM_PROMPT).
    CLIENT_SYSTEM_MESSAGES = _bool("CLIENT_SYSTEM_MESSAGES", True)

    # OpenAI-compatible upstream
    OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
    OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "")
    UPSTREAM_CONNECT_TIMEOUT = _float("UPSTREAM_CONNECT_TIMEOUT", 5)
    UPSTREAM_READ_TIMEOUT = _float("UPSTREAM_READ_TIMEOUT", 60)
    UPSTREAM_MAX_RETRIES = _int("UPSTREAM_MAX_RETRIES", 2)
    UPSTREAM_STREAM_USAGE = _bool("UPSTREAM_STREAM_USAGE", True)
    UPSTREAM_FAILURES_TO_TRIP = _int("UPSTREAM_FAILURES_TO_TRIP", 5)
    UPSTREAM_COOLDOWN_SECONDS = _float("UPSTREAM_COOLDOWN_SECONDS", 10)
    # Reasoning inline in the content, between <think> tags, streams as reasoning.
    THINK_TAGS = _bool("THINK_TAGS", True)

    # Offline demo model
    DEMO_TTFT = _float("DEMO_TTFT", 0.4)
    DEMO_TOKENS_PER_SECOND = _float("DEMO_TOKENS_PER_SECOND", 40)

    # Each stream sends one chunk event per this window, and reads its model once per
    # window, on a clock shared by all streams (app/pacing.py); 0 turns it off.
    COALESCE_WINDOW_MS = _float("COALESCE_WINDOW_MS", 40)

    # Resume
    RESUME_GRACE_SECONDS = _float("RESUME_GRACE_SECONDS", 30)

    # Several nodes: a Redis URL for the Socket.IO message queue, and one for stream
    # state (defaults to the queue's). With neither, everything stays in memory.
    SOCKETIO_MESSAGE_QUEUE = os.environ.get("SOCKETIO_MESSAGE_QUEUE", "")
    STREAM_STORE_URL = os.environ.get("STREAM_STORE_URL", "")
    NODE_ID = os.environ.get("NODE_ID", "")

    # Conversation history (app/history): SQLite, a relative path being under the
    # repository, or postgresql://… for several nodes.
    DATABASE_URL = os.environ.get("DATABASE_URL") or "sqlite:///data/chatstream.db"
    # Keep conversations (the Socket.IO chat's and the page's); false: stateless.
    HISTORY = _bool("HISTORY", True)
    # Signs an anonymous browser's owner cookie (app/owners.py): AUTH_SECRET when
    # empty, else a secret kept in OWNER_SECRET_FILE. Several nodes set one.
    OWNER_SECRET = os.environ.get("OWNER_SECRET", "")
    OWNER_SECRET_FILE = os.environ.get("OWNER_SECRET_FILE") or "data/owner_secret"

    # Moderation (app/moderation): off, keywords, openai or module:function.
    MODERATION = os.environ.get("MODERATION") or "off"
    MODERATION_KEYWORDS = os.environ.get("MODERATION_KEYWORDS", "")
    MODERATION_BASE_URL = os.environ.get("MODERATION_BASE_URL", "")
    MODERATION_API_KEY = os.environ.get("MODERATION_API_KEY", "")
    MODERATION_MODEL = os.environ.get("MODERATION_MODEL") or "omni-moderation-latest"
    # hold: nothing goes out before its window passed; stream: out at once, checked
    # just behind and taken back (Socket.IO only; HTTP always holds).
    MODERATION_MODE = os.environ.get("MODERATION_MODE") or "hold"
    MODERATION_WINDOW_CHARS = _int("MODERATION_WINDOW_CHARS", 200)
    MODERATION_OVERLAP_CHARS = _int("MODERATION_OVERLAP_CHARS", 50)
    MODERATION_REASONING = _bool("MODERATION_REASONING", True)
    MODERATION_ON_ERROR = os.environ.get("MODERATION_ON_ERROR") or "block"
    MODERATION_TIMEOUT = _float("MODERATION_TIMEOUT", 2)
    MODERATION_CONCURRENCY = _int("MODERATION_CONCURRENCY", 32)

    # Who may connect
    AUTH_TOKENS = _list("AUTH_TOKENS")
    AUTH_SECRET = os.environ.get("AUTH_SECRET", "")
    CORS_ALLOWED_ORIGINS = _list("CORS_ALLOWED_ORIGINS")
    TRUSTED_PROXIES = _list("TRUSTED_PROXIES")
    # Host names browsers may use besides addresses and localhost (app/origins.py);
    # empty: HOST, when that is a name.
    ALLOWED_HOSTS = _list("ALLOWED_HOSTS")
    HOST = os.environ.get("HOST") or "127.0.0.1"

    # Limits
    MAX_CONCURRENT_PER_CONNECTION = _int("MAX_CONCURRENT_PER_CONNECTION", 3)
    MAX_STREAMS_PER_IDENTITY = _int("MAX_STREAMS_PER_IDENTITY", 12)
    CHATS_PER_MINUTE = _int("CHATS_PER_MINUTE", 60)
    MAX_MESSAGES = _int("MAX_MESSAGES", 100)
    MAX_PROMPT_CHARS = _int("MAX_PROMPT_CHARS", 10000)
    MAX_TOKENS_CAP = _int("MAX_TOKENS_CAP", 4096)
    # A bigger message closes its connection as it arrives (app/inbound.py). Room for
    # a chat with a few images as data URLs (the page sends at most 4, each scaled
    # down to ~1568 px), and far above MAX_PROMPT_CHARS even at six bytes per
    # character (JSON \u escapes) so that a long prompt gets an error event instead.
    MAX_MESSAGE_BYTES = _int("MAX_MESSAGE_BYTES", 8 * 1024 * 1024)
    # What may wait for a client that does not read; past it the connection closes.
    MAX_QUEUED_BYTES = _int("MAX_QUEUED_BYTES", 1048576)
    # Largest HTTP request body (app/http_limits.py): room for the biggest chat the
    # other limits let through, a 15 MB image as base64 included.
    MAX_BODY_BYTES = _int("MAX_BODY_BYTES", 20 * 1024 * 1024)
    # Seconds a request body (and, under gthread, a request's headers) may go
    # without a byte arriving: then 408 and the connection closes.
    REQUEST_READ_TIMEOUT = _float("REQUEST_READ_TIMEOUT", 15)
    # Seconds one write of an HTTP stream may wait for a client that does not read.
    RESPONSE_WRITE_TIMEOUT = _float("RESPONSE_WRITE_TIMEOUT", 30)
    # Open connections this process takes (app/admission.py); 0 means 90 % of what
    # the server holds: gunicorn's worker_connections, or its threads for gthread.
    MAX_CONNECTIONS = _int("MAX_CONNECTIONS", 0)
    # Above the per-identity cap, so that several users behind one NAT fit.
    MAX_CONNECTIONS_PER_ADDRESS = _int("MAX_CONNECTIONS_PER_ADDRESS", 100)
    MAX_CONNECTIONS_PER_IDENTITY = _int("MAX_CONNECTIONS_PER_IDENTITY", 50)
    HANDSHAKES_PER_MINUTE = _int("HANDSHAKES_PER_MINUTE", 120)
