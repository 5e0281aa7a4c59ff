"""Any OpenAI-compatible server, through the official ``openai`` package.

Every failure is mapped to one of the protocol's error codes here, with a message that
never carries the API key: some servers quote the key they were sent.
"""

import logging
import re
import threading
from collections.abc import Generator
from typing import Any

import openai

from ..protocol import ChatRequest
from .base import Result, UpstreamError, Usage

log = logging.getLogger(__name__)

_KNOWN_FINISH = {"stop", "length", "content_filter", "tool_calls"}
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
# Keys of OpenAI ("sk-…"), Azure and most proxies look like long opaque tokens.
_SECRET = re.compile(r"(sk-[\w\-*.]{4,}|Bearer\s+\S+)")


class OpenAIProvider:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        models: list[str],
        default_model: str,
        connect_timeout: float,
        read_timeout: float,
        stream_usage: bool,
    ):
        self._api_key = api_key
        self._base_url = base_url or None
        self.models = models
        self.default_model = default_model
        self._timeout = openai.Timeout(read_timeout, connect=connect_timeout)
        self._stream_usage = stream_usage
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    def client(self) -> openai.OpenAI:
        # Created on first use: OpenAI() raises without a key, and a server that never
        # chats should start without one.
        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    # Local servers (Ollama, vLLM, llama.cpp) accept any key.
                    api_key=self._api_key or "unused",
                    base_url=self._base_url,
                    timeout=self._timeout,
                    # The relay retries, and only while no text was sent.
                    max_retries=0,
                )
            return self._client

    def redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return _SECRET.sub("[redacted]", text)

    def _error(self, exc: Exception, streaming: bool) -> UpstreamError:
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamError(
                "upstream_timeout",
                "the upstream went silent mid-answer"
                if streaming
                else "the upstream did not answer in time",
            )
        if isinstance(exc, openai.APIConnectionError):
            return UpstreamError(
                "upstream_unavailable",
                "the upstream closed the stream before it finished"
                if streaming
                else "the upstream could not be reached",
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if isinstance(
                exc, (openai.AuthenticationError, openai.PermissionDeniedError)
            ):
                # The upstream's own message may quote the key: say nothing of it.
                return UpstreamError(
                    "upstream_auth",
                    f"the upstream refused the server's credentials (HTTP {status})",
                )
            detail = self.redact(_upstream_message(exc))
            if isinstance(exc, openai.NotFoundError):
                return UpstreamError(
                    "upstream_not_found",
                    f"the upstream does not know this model or endpoint "
                    f"(HTTP 404): {detail}",
                )
            if isinstance(exc, openai.RateLimitError):
                return UpstreamError(
                    "upstream_rate_limited",
                    f"the upstream is rate limiting requests (HTTP 429): {detail}",
                )
            if status >= 500:
                return UpstreamError(
                    "upstream_unavailable",
                    f"the upstream failed (HTTP {status}): {detail}",
                )
            return UpstreamError(
                "upstream_error",
                f"the upstream rejected the request (HTTP {status}): {detail}",
            )
        if isinstance(exc, openai.APIError):
            return UpstreamError(
                "upstream_error",
                f"the upstream reported an error mid-stream: "
                f"{self.redact(_upstream_message(exc))}",
            )
        return UpstreamError("upstream_error", self.redact(str(exc)))

    def stream(
        self, request: ChatRequest, messages: list[dict[str, str]]
    ) -> Generator[str, None, Result]:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": True,
        }
        if self._stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens

        try:
            # The package's documented way to post any request: the same auth,
            # timeouts, status errors and SSE decoding as ``chat.completions.create``,
            # but each chunk stays the JSON object it arrived as. Building the typed
            # ``ChatCompletionChunk`` cost ~95 µs a chunk, ten times the rest.
            stream = self.client().post(
                "/chat/completions",
                body=kwargs,
                cast_to=object,
                stream=True,
                stream_cls=openai.Stream[object],
            )
        except openai.OpenAIError as exc:
            raise self._error(exc, streaming=False) from None

        model = request.model
        finish_reason: str | None = None
        usage: Usage | None = None
        # Closing the stream, also when the caller closes this generator early, ends the
        # upstream HTTP response: that is what stops generation and billing.
        with stream:
            try:
                for chunk in stream:
                    if not isinstance(chunk, dict):
                        continue
                    model = _text(chunk.get("model")) or model
                    usage = _usage(chunk.get("usage")) or usage
                    # Some servers send chunks whose choices are empty or null.
                    for choice in chunk.get("choices") or ():
                        if not isinstance(choice, dict) or choice.get("index", 0):
                            continue
                        delta = choice.get("delta")
                        content = (
                            _text(delta.get("content"))
                            if isinstance(delta, dict)
                            else ""
                        )
                        if content:
                            yield content
                        finish_reason = _text(choice.get("finish_reason")) or (
                            finish_reason
                        )
            except openai.OpenAIError as exc:
                raise self._error(exc, streaming=True) from None

        if finish_reason == "function_call":
            finish_reason = "tool_calls"
        elif finish_reason not in _KNOWN_FINISH:
            if finish_reason is not None:
                log.info("unknown finish_reason %r reported as stop", finish_reason)
            finish_reason = "stop"
        return Result(finish_reason=finish_reason, model=model, usage=usage)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    counts = [value.get(key) for key in _USAGE_KEYS]
    if not all(isinstance(count, int) for count in counts):
        return None
    return Usage(*counts)


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return exc.message
