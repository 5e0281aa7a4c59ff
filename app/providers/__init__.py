"""The one place that decides which model provider runs."""

from collections.abc import Mapping
from typing import Any

from .base import Provider, Result, UpstreamError, Usage
from .demo import DemoProvider
from .openai_compat import OpenAIProvider

__all__ = ["Provider", "Result", "UpstreamError", "Usage", "make_provider"]

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def make_provider(config: Mapping[str, Any]) -> Provider:
    """The demo model unless an upstream is configured (or LLM_PROVIDER says so)."""
    choice = config["LLM_PROVIDER"]
    if choice == "auto":
        configured = config["OPENAI_API_KEY"] or config["OPENAI_BASE_URL"]
        choice = "openai" if configured else "demo"
    if choice == "demo":
        return DemoProvider(config["DEMO_TTFT"], config["DEMO_TOKENS_PER_SECOND"])
    if choice != "openai":
        raise ValueError(f"LLM_PROVIDER must be auto, demo or openai, not {choice!r}")
    default_model = config["LLM_MODEL"] or DEFAULT_OPENAI_MODEL
    models = list(config["LLM_MODELS"]) or [default_model]
    if default_model not in models:
        models.insert(0, default_model)
    return OpenAIProvider(
        api_key=config["OPENAI_API_KEY"],
        base_url=config["OPENAI_BASE_URL"],
        models=models,
        default_model=default_model,
        connect_timeout=config["UPSTREAM_CONNECT_TIMEOUT"],
        read_timeout=config["UPSTREAM_READ_TIMEOUT"],
        stream_usage=config["UPSTREAM_STREAM_USAGE"],
        think_tags=config["THINK_TAGS"],
    )
