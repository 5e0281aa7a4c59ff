"""Any OpenAI-compatible server, through the official ``openai`` package.

The package builds and sends each request, raises its status errors, and hands the
streamed body over; this module splits the body's events itself, a read's worth at a
time (``sse.py``), and reads each chunk as the JSON object it is. Reasoning arrives
in ``delta.reasoning_content`` (DeepSeek, llama.cpp, LiteLLM, older vLLM), in
``delta.reasoning`` (OpenRouter, Ollama, newer vLLM), or in the content between
``<think>`` tags (a server with no reasoning parser).

Every failure is mapped to one of the protocol's error codes here, with a message of
this relay's own: the code, the upstream's HTTP status, and the field it rejected
when its error object names one (``param``). The upstream's own text goes to the log
only, redacted: it may quote the key it was sent, or name internal hosts and paths.
Its ``Retry-After`` is passed on, bounded to 1-300 s.
"""

import email.utils
import logging
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Generator
from typing import Any

import httpx2
import jiter
import openai

from ..chat_request import ChatRequest
from ..toolcalls import ToolCallReader
from .base import (
    ANSWER,
    REASONING,
    REFUSAL,
    TOOL_CALL,
    Abort,
    Batch,
    Result,
    UpstreamError,
    Usage,
)
from .reasoning import ThinkTags
from .sse import EventSplitter
from .transport import StreamingTransport, reads

log = logging.getLogger(__name__)

_KNOWN_FINISH = {"stop", "length", "content_filter", "tool_calls"}
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
# Keys of OpenAI ("sk-…"), Azure and most proxies look like long opaque tokens.
_SECRET = re.compile(r"(sk-[\w\-*.]{4,}|Bearer\s+\S+)")
# A rejected field's name, as OpenAI's error objects give it ("messages[0].content");
# anything else in ``param`` is not repeated.
_PARAM = re.compile(r"[A-Za-z_][\w.\[\]-]{0,63}")
# The range a Retry-After passed on to clients is held to, in seconds.
RETRY_AFTER_BOUNDS = (1, 300)


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
        think_tags: bool = True,
    ):
        self._api_key = api_key
        self._base_url = base_url or None
        self.models = models
        self.default_model = default_model
        self._timeout = openai.Timeout(read_timeout, connect=connect_timeout)
        self._stream_usage = stream_usage
        self._think_tags = think_tags
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
                    http_client=self._http_client(),
                )
            return self._client

    def _http_client(self) -> httpx2.Client | None:
        """httpx with the streaming transport, unless a proxy is configured for the
        upstream (that transport speaks to servers directly; httpx's default one
        honours HTTP(S)_PROXY)."""
        url = urllib.parse.urlsplit(self._base_url or "https://api.openai.com/v1")
        proxies = urllib.request.getproxies()
        if url.scheme in proxies and not urllib.request.proxy_bypass(url.hostname):
            log.info("an HTTP proxy is set for the upstream: using httpx's transport")
            return None
        return httpx2.Client(
            transport=StreamingTransport(),
            timeout=self._timeout,
            follow_redirects=True,
        )

    def redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return _SECRET.sub("[redacted]", text)

    def _error(self, exc: Exception, streaming: bool) -> UpstreamError:
        if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
            return UpstreamError(
                "upstream_timeout",
                "the upstream went silent mid-answer"
                if streaming
                else "the upstream did not answer in time",
            )
        if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
            return UpstreamError(
                "upstream_unavailable",
                "the upstream closed the stream before it finished"
                if streaming
                else "the upstream could not be reached",
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            log.warning(
                "the upstream answered HTTP %d: %s",
                status,
                self.redact(_upstream_message(exc)),
            )
            if isinstance(
                exc, (openai.AuthenticationError, openai.PermissionDeniedError)
            ):
                return UpstreamError(
                    "upstream_auth",
                    f"the upstream refused the server's credentials (HTTP {status})",
                )
            if isinstance(exc, openai.NotFoundError):
                return UpstreamError(
                    "upstream_not_found",
                    f"the upstream does not know this model or endpoint "
                    f"(HTTP {status})",
                )
            retry_after = _retry_after(exc.response)
            if isinstance(exc, openai.RateLimitError):
                return UpstreamError(
                    "upstream_rate_limited",
                    f"the upstream is rate limiting requests (HTTP {status}); retry "
                    "later",
                    retry_after,
                )
            if status >= 500:
                return UpstreamError(
                    "upstream_unavailable",
                    f"the upstream failed (HTTP {status}); retry later",
                    retry_after,
                )
            param = _param(exc)
            if param is not None:
                # Our words about a structured field: "param: ..." names it, as
                # every invalid_request does.
                return UpstreamError(
                    "upstream_error",
                    f"{param}: the upstream rejected this field (HTTP {status})",
                )
            return UpstreamError(
                "upstream_error",
                f"the upstream rejected the request (HTTP {status})",
            )
        log.warning(
            "the upstream's answer could not be read: %s", self.redact(repr(exc))
        )
        return UpstreamError(
            "upstream_bad_response", "the upstream's answer could not be read"
        )

    def _midstream(self, message: str) -> UpstreamError:
        """The upstream reported a failure inside its stream: a fault on its side
        (the stream's status was 200 already)."""
        log.warning("the upstream failed mid-stream: %s", self.redact(message))
        return UpstreamError("upstream_unavailable", "the upstream failed mid-answer")

    def _not_json(self, payload: bytes) -> UpstreamError:
        excerpt = payload[:200].decode("utf-8", "replace")
        log.warning(
            "the upstream sent a chunk that is not JSON: %s", self.redact(excerpt)
        )
        return UpstreamError(
            "upstream_bad_response", "the upstream sent a chunk that is not JSON"
        )

    def stream(
        self,
        request: ChatRequest,
        messages: list[dict[str, Any]],
        abort: Abort | None = None,
    ) -> Generator[Batch, None, Result]:
        # Every parameter the client sent goes on as it came (chat_request.py says
        # which ones the relay owns).
        kwargs: dict[str, Any] = {
            **request.params,
            "model": request.model,
            "messages": messages,
            "stream": True,
        }
        if self._stream_usage:
            kwargs["stream_options"] = {"include_usage": True}

        try:
            # The package's documented way to post any request: the same auth,
            # timeouts and status errors as ``chat.completions.create``, without its
            # typed transforms of every message (~2 ms a request), and the streamed
            # body left for this module to read.
            opened = self.client().post(
                "/chat/completions",
                body=kwargs,
                cast_to=object,
                stream=True,
                stream_cls=openai.Stream[object],
            )
        except openai.OpenAIError as exc:
            raise self._error(exc, streaming=False) from None
        if abort is not None:
            abort.on_abort(opened.close)

        chunks = _Chunks(request.model, ThinkTags() if self._think_tags else None)
        splitter = EventSplitter()
        # Closing the response, also when the caller closes this generator early, ends
        # the upstream HTTP response: that is what stops generation and billing.
        try:
            for data in reads(opened.response):
                batch: Batch = []
                for kind, payload in splitter.feed(data):
                    if payload[:6] == b"[DONE]":
                        chunks.finish(batch)
                        yield batch
                        return chunks.result()
                    chunks.read(kind, payload, batch, self)
                yield batch
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self._error(exc, streaming=True) from None
        finally:
            opened.close()
        # The stream ended without [DONE]: some servers never send it.
        tail: Batch = []
        chunks.finish(tail)
        if tail:
            yield tail
        return chunks.result()


class _Chunks:
    """What the chunks of one stream said so far: text, model, usage, finish."""

    def __init__(self, model: str, think: ThinkTags | None):
        self.model = model
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.system_fingerprint: str | None = None
        self._think = think
        self._tool_calls = ToolCallReader()

    def read(
        self, kind: bytes, payload: bytes, batch: Batch, provider: OpenAIProvider
    ) -> None:
        """Read one event's JSON into ``batch`` (text) and the stream's state."""
        try:
            chunk = jiter.from_json(payload)
        except ValueError:
            raise provider._not_json(payload) from None
        if not isinstance(chunk, dict):
            return
        error = chunk.get("error")
        if error or kind == b"error":
            raise provider._midstream(_error_message(error))
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.model = model
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str) and fingerprint:
            self.system_fingerprint = fingerprint
        self.usage = _usage(chunk.get("usage")) or self.usage
        # Some servers send chunks whose choices are empty or null.
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                start = len(batch)
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(reasoning, str) and reasoning:
                    batch.append((REASONING, reasoning))
                content = delta.get("content")
                if isinstance(content, str) and content:
                    if self._think is None:
                        batch.append((ANSWER, content))
                    else:
                        batch += self._think.feed(content)
                refusal = delta.get("refusal")
                if isinstance(refusal, str) and refusal:
                    batch.append((REFUSAL, refusal))
                logprobs = _logprobs(choice.get("logprobs"))
                if logprobs and len(batch) > start:
                    # The log probabilities of this delta's tokens ride with its
                    # last piece of text.
                    batch[-1] = (*batch[-1][:2], logprobs)
                if "tool_calls" in delta:
                    batch += [
                        (TOOL_CALL, fragment)
                        for fragment in self._tool_calls.read(delta["tool_calls"])
                    ]
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self.finish_reason = finish

    def finish(self, batch: Batch) -> None:
        """Add what the think-tag reader still holds to ``batch``."""
        if self._think is not None:
            batch += self._think.finish()

    def result(self) -> Result:
        finish_reason = self.finish_reason
        if finish_reason == "function_call":
            finish_reason = "tool_calls"
        elif finish_reason not in _KNOWN_FINISH:
            if finish_reason is not None:
                log.info("unknown finish_reason %r reported as stop", finish_reason)
            finish_reason = "stop"
        return Result(
            finish_reason=finish_reason,
            model=self.model,
            usage=self.usage,
            system_fingerprint=self.system_fingerprint,
        )


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    counts = [value.get(key) for key in _USAGE_KEYS]
    if not all(isinstance(count, int) for count in counts):
        return None
    return Usage(
        *counts,
        reasoning_tokens=_detail(value, "completion_tokens", "reasoning_tokens"),
        cached_tokens=_detail(value, "prompt_tokens", "cached_tokens"),
    )


def _detail(usage: dict[str, Any], counted: str, name: str) -> int | None:
    """One count of ``usage``'s ``<counted>_details``, when the upstream gave it."""
    details = usage.get(counted + "_details")
    count = details.get(name) if isinstance(details, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _logprobs(value: Any) -> list[Any] | None:
    """A choice's log probability entries (OpenAI's ``logprobs.content``, or
    ``logprobs.refusal`` for a refusal's tokens), when it has any."""
    if not isinstance(value, dict):
        return None
    entries = value.get("content") or value.get("refusal")
    return entries if isinstance(entries, list) and entries else None


def _error_message(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str) and error:
        return error
    return "An error occurred during streaming"


def _param(exc: openai.APIStatusError) -> str | None:
    """The field the upstream's error object says it rejected, when it names one."""
    param = getattr(exc, "param", None)
    if isinstance(param, str) and _PARAM.fullmatch(param):
        return param
    return None


def _retry_after(response: Any) -> int | None:
    """The upstream's ``Retry-After`` (or OpenAI's ``retry-after-ms``) in whole
    seconds within ``RETRY_AFTER_BOUNDS``; None when it sent none that reads."""
    headers = getattr(response, "headers", None) or {}
    seconds: float | None = None
    try:
        if headers.get("retry-after-ms"):
            seconds = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after"):
            value = headers["retry-after"].strip()
            try:
                seconds = float(value)
            except ValueError:
                # An HTTP date.
                seconds = email.utils.parsedate_to_datetime(value).timestamp()
                seconds -= time.time()
    except (TypeError, ValueError, OverflowError):
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    low, high = RETRY_AFTER_BOUNDS
    return min(max(math.ceil(seconds), low), high)


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return exc.message
