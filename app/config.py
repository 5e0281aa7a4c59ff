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

    # Who may connect
    AUTH_TOKENS = _list("AUTH_TOKENS")
    AUTH_SECRET = os.environ.get("AUTH_SECRET", "")
    CORS_ALLOWED_ORIGINS = _list("CORS_ALLOWED_ORIGINS")
    TRUSTED_PROXIES = _list("TRUSTED_PROXIES")

    # Limits
    MAX_CONCURRENT_PER_CONNECTION = _int("MAX_CONCURRENT_PER_CONNECTION", 3)
    MAX_STREAMS_PER_IDENTITY = _int("MAX_STREAMS_PER_IDENTITY", 12)
    CHATS_PER_MINUTE = _int("CHATS_PER_MINUTE", 60)
    MAX_MESSAGES = _int("MAX_MESSAGES", 100)
    MAX_PROMPT_CHARS = _int("MAX_PROMPT_CHARS", 10000)
    MAX_TOKENS_CAP = _int("MAX_TOKENS_CAP", 4096)
    # Engine.IO closes a connection that sends a bigger message; it stays above
    # MAX_PROMPT_CHARS even at six bytes per character (JSON \u escapes) so that a long
    # prompt gets an error event instead.
    MAX_MESSAGE_BYTES = _int("MAX_MESSAGE_BYTES", 65536)
    # What may wait for a client that does not read; past it the connection closes.
    MAX_QUEUED_BYTES = _int("MAX_QUEUED_BYTES", 1048576)
    # Open connections this process takes (app/admission.py); 0 means 90 % of what
    # the server holds: gunicorn's worker_connections, or its threads for gthread.
    MAX_CONNECTIONS = _int("MAX_CONNECTIONS", 0)
    # Above the per-identity cap, so that several users behind one NAT fit.
    MAX_CONNECTIONS_PER_ADDRESS = _int("MAX_CONNECTIONS_PER_ADDRESS", 100)
    MAX_CONNECTIONS_PER_IDENTITY = _int("MAX_CONNECTIONS_PER_IDENTITY", 50)
    HANDSHAKES_PER_MINUTE = _int("HANDSHAKES_PER_MINUTE", 120)
