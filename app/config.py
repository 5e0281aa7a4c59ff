"""Configuration, read once from environment variables.

Every key equals its environment variable; ``OPENAI_*`` keep the openai package's names.
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


class Config:
    # Server
    SECRET_KEY = os.environ.get("SECRET_KEY") or os.urandom(24).hex()
    ASYNC_MODE = os.environ.get("ASYNC_MODE", "eventlet")
    WEB_DIST_DIR = os.environ.get(
        "WEB_DIST_DIR",
        os.path.join(
            os.path.dirname(os.path.dirname(__file__)), "client", "web", "dist"
        ),
    )

    # Model provider: "demo", "openai", or "auto" (openai when OPENAI_API_KEY or
    # OPENAI_BASE_URL is set, demo otherwise)
    LLM_PROVIDER = os.environ.get("LLM_PROVIDER", "auto")
    LLM_MODEL = os.environ.get("LLM_MODEL", "")
    LLM_MODELS = _list("LLM_MODELS")
    SYSTEM_PROMPT = os.environ.get("SYSTEM_PROMPT", "")

    # OpenAI-compatible upstream
    OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
    OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "")
    UPSTREAM_CONNECT_TIMEOUT = float(os.environ.get("UPSTREAM_CONNECT_TIMEOUT", "5"))
    UPSTREAM_READ_TIMEOUT = float(os.environ.get("UPSTREAM_READ_TIMEOUT", "60"))
    UPSTREAM_MAX_RETRIES = int(os.environ.get("UPSTREAM_MAX_RETRIES", "2"))
    UPSTREAM_STREAM_USAGE = _bool("UPSTREAM_STREAM_USAGE", True)

    # Offline demo model
    DEMO_TTFT = float(os.environ.get("DEMO_TTFT", "0.4"))
    DEMO_TOKENS_PER_SECOND = float(os.environ.get("DEMO_TOKENS_PER_SECOND", "40"))

    # Limits
    MAX_CONCURRENT_PER_CONNECTION = int(
        os.environ.get("MAX_CONCURRENT_PER_CONNECTION", "3")
    )
    MAX_MESSAGES = int(os.environ.get("MAX_MESSAGES", "100"))
    MAX_PROMPT_CHARS = int(os.environ.get("MAX_PROMPT_CHARS", "32000"))
    MAX_TOKENS_CAP = int(os.environ.get("MAX_TOKENS_CAP", "4096"))
