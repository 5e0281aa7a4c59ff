"""An OpenAI-compatible streaming test server, the stand-in for the remote service.

Integration tests and benchmarks point the real `openai` package at it over HTTP::

    python -m tests.openai_server --port 0 [--host 127.0.0.1] [--ttft 0.05]
        [--tps 200] [--reply-tokens 30] [--api-key K] [--models a,b]

It prints one line, ``listening on http://HOST:PORT``, once it accepts requests
(``--port 0`` picks a free port and prints it). ``--api-key`` defaults to the
``TEST_SERVER_API_KEY`` environment variable; ``--tps 0`` streams without delay.

Endpoints: ``POST /v1/chat/completions`` (streamed with ``stream: true``, plain
``chat.completion`` JSON otherwise), ``GET /v1/models``, and for tests
``GET /_requests`` (one record per completion request, newest last, the last
10,000 kept) and ``POST /_reset`` (forget them).

The reply is deterministic: it quotes the first words of the last user message,
then adds filler words chosen by hashing the conversation, one word per content
chunk. Faults are chosen per request by directives in the last user message;
they combine, and are removed from the text before the reply is built:

    [[status:N]]        answer HTTP N (400-599) with an OpenAI error body
    [[error_after:N]]   after N content chunks send an error event, then end
    [[stall_after:N]]   after N content chunks send nothing until the client leaves
    [[close_after:N]]   after N content chunks drop the connection mid-body
    [[finish:R]]        finish_reason R: stop, length, content_filter, tool_calls
                        (tool_calls adds a tool-call delta before the finish chunk)
    [[no_usage]]        never send usage, even when stream_options asks for it
    [[usage_in_choice]] put usage on the finish chunk, no separate usage chunk
    [[null_choices]]    a chunk with "choices": null before each content chunk
    [[empty_choices]]   a chunk with "choices": [] before each content chunk
    [[empty_deltas]]    a chunk whose content is "" or null before each one
    [[keepalive]]       a ": keep-alive" comment before the role and each content chunk
    [[tokens:N]]        reply length in words (default --reply-tokens)
    [[ttft:S]]          seconds before the first content chunk (default --ttft)
    [[tps:N]]           content chunks per second after that (default --tps)

N in the ``*_after`` directives counts content chunks only (an N past the end of
the reply means after the last one, before the finish chunk); the pause before
the fault is the one the next content chunk would have had. An unknown or malformed
directive is answered with HTTP 400, so a typo in a test fails loudly.

A request record holds ``n, model, messages, stream, stream_options, max_tokens,
temperature, authorization_present, status, started_at, ended_at, outcome,
chunks_sent``. ``outcome`` is ``streaming`` or ``stalled`` while the stream is open,
then ``completed``, ``client_closed`` (the client left first; ``ended_at`` is when
that was seen), ``aborted`` (``close_after``), ``error_status`` or
``error_midstream``. ``chunks_sent`` counts ``data: {...}`` events, not ``[DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEFAULT_MODEL = "test-model"
MAX_RECORDS = 10_000
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")
OPEN_OUTCOMES = ("streaming", "stalled")

# (type, code) of the error body per status, as the real service words them.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("request_forbidden", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}

_DIRECTIVE = re.compile(r"\[\[\s*([A-Za-z_]+)\s*(?::([^\]]*))?\]\]")
_WORD = re.compile(r"[\w'-]+")
_FILLER_WORDS = """
river stone lantern meadow copper signal harbor orbit velvet canyon pepper
marble thunder willow ember quartz falcon tundra cedar beacon saffron glacier
compass lagoon timber nebula prism cobalt juniper harvest summit crystal delta
mosaic anchor breeze garnet horizon ivory jasmine kettle ledger mirror nectar
oasis pebble quill ripple sparrow tapestry umber vessel walnut yonder zephyr
amber bramble cinder dune fable grove hollow island
"""
_FILLER = tuple(_FILLER_WORDS.split())


@dataclass(frozen=True)
class Settings:
    """Server-wide defaults; directives override the pacing per request."""

    ttft: float = 0.05
    tps: float = 200.0
    reply_tokens: int = 30
    api_key: str | None = None
    models: tuple[str, ...] = ()  # empty: any model is served


@dataclass
class Directives:
    """The faults and overrides one request asked for."""

    status: int | None = None
    error_after: int | None = None
    stall_after: int | None = None
    close_after: int | None = None
    finish: str | None = None
    no_usage: bool = False
    usage_in_choice: bool = False
    null_choices: bool = False
    empty_choices: bool = False
    empty_deltas: bool = False
    keepalive: bool = False
    tokens: int | None = None
    ttft: float | None = None
    tps: float | None = None


_FLAGS = frozenset(
    ("no_usage", "usage_in_choice", "null_choices", "empty_choices")
    + ("empty_deltas", "keepalive")
)
_NUMBERS = frozenset(
    ("status", "error_after", "stall_after", "close_after", "tokens", "ttft", "tps")
)


class DirectiveError(ValueError):
    """A directive in the prompt is unknown or has a bad value."""


def parse_directives(text: str) -> tuple[Directives, str]:
    """Return the directives found in `text` and the text without them."""
    directives = Directives()
    for match in _DIRECTIVE.finditer(text):
        name, raw = match.group(1).lower(), match.group(2)
        value = None if raw is None else raw.strip()
        setattr(directives, name, _directive_value(name, value, match.group(0)))
    return directives, _DIRECTIVE.sub("", text).strip()


def _directive_value(name: str, value: str | None, source: str) -> Any:
    if name in _FLAGS:
        if value is not None:
            raise DirectiveError(f"{source}: this directive takes no value")
        return True
    if name not in _NUMBERS and name != "finish":
        raise DirectiveError(f"unknown test-server directive {source}")
    if value is None:
        raise DirectiveError(f"{source}: this directive needs a value")
    if name == "finish":
        if value not in FINISH_REASONS:
            raise DirectiveError(f"{source}: not one of {', '.join(FINISH_REASONS)}")
        return value
    try:
        number = float(value) if name in ("ttft", "tps") else int(value)
    except ValueError:
        raise DirectiveError(f"{source}: not a number") from None
    if number < 0 or (name == "status" and not 400 <= number <= 599):
        raise DirectiveError(f"{source}: out of range")
    return number


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _plain_text(message: Mapping[str, Any]) -> str:
    """The message text without directives, its whitespace normalised."""
    return " ".join(_DIRECTIVE.sub(" ", message_text(message)).split())


def last_user_index(messages: Sequence[Mapping[str, Any]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None


def build_reply(messages: Sequence[Mapping[str, Any]], count: int) -> list[str]:
    """The `count` reply tokens for a conversation; directives do not affect them.

    The first token has no leading space and every later one has one, so the
    tokens concatenate to the reply text, which ends with a full stop. A reply
    cut short by max_tokens is a prefix of the full one.
    """
    texts = [(str(m.get("role")), _plain_text(m)) for m in messages]
    last = last_user_index(messages)
    quoted = " ".join(_WORD.findall(texts[last][1])[:4]) if last is not None else ""
    words = f'You said "{quoted}".'.split() if quoted else ["You", "said", "nothing."]
    seed = json.dumps(texts).encode()
    stream = hashlib.shake_256(seed).digest(2 * max(count - len(words), 0))
    for offset in range(0, len(stream), 2):
        index = int.from_bytes(stream[offset : offset + 2]) % len(_FILLER)
        words.append(_FILLER[index])
    tokens = [word if i == 0 else " " + word for i, word in enumerate(words[:count])]
    if tokens and not tokens[-1].endswith("."):
        tokens[-1] += "."
    return tokens


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """A rough count: words of every message plus three per message."""
    return sum(len(message_text(m).split()) + 3 for m in messages)


def error_body(
    message: str,
    status: int,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    """An OpenAI-shaped `{"error": {...}}` body for `status`."""
    kind, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": type_ or kind,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


class _InjectedAbort(Exception):
    """Raised inside a stream body so the server drops the connection."""


class _QuietAbort(logging.Filter):
    """Keeps uvicorn from logging the traceback of an injected abort."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, _InjectedAbort)


_QUIET_ABORT = _QuietAbort()


class _RecordedStream(StreamingResponse):
    """A stream that closes its request record however the stream ends."""

    def __init__(
        self,
        content: AsyncGenerator[str, None],
        record: dict[str, Any],
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(content, headers=headers, media_type="text/event-stream")
        self.events = content
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Uvicorn's HTTP scopes are ASGI 2.3, so Starlette watches for
        # http.disconnect and cancels the body; that lands here promptly.
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.record["outcome"] in OPEN_OUTCOMES:
                self.record["outcome"] = "client_closed"
            self.record["ended_at"] = time.time()
            await self.events.aclose()


@dataclass
class _Completion:
    """Everything one accepted streaming request needs."""

    record: dict[str, Any]
    directives: Directives
    model: str
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    ttft: float
    interval: float
    completion_id: str
    created: int


class _Service:
    """The endpoints of one server, with its request records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.counter = 0

    async def list_requests(self, request: Request) -> Response:
        return JSONResponse(list(self.records))

    async def reset(self, request: Request) -> Response:
        self.records.clear()
        return JSONResponse({"ok": True})

    async def list_models(self, request: Request) -> Response:
        if (refusal := self._check_auth(request)) is not None:
            return refusal
        names = self.settings.models or (DEFAULT_MODEL,)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "test-server"}
            for name in names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(self, request: Request) -> Response:
        self.counter += 1
        record: dict[str, Any] = {
            "n": self.counter,
            "model": None,
            "messages": None,
            "stream": False,
            "stream_options": None,
            "max_tokens": None,
            "temperature": None,
            "authorization_present": "authorization" in request.headers,
            "status": 200,
            "started_at": time.time(),
            "ended_at": None,
            "outcome": "streaming",
            "chunks_sent": 0,
        }
        self.records.append(record)
        response = await self._answer(request, record)
        if response.status_code != 200:
            record.update(status=response.status_code, outcome="error_status")
        if not isinstance(response, _RecordedStream):
            record["ended_at"] = time.time()
        response.headers["x-request-id"] = "req_" + secrets.token_hex(16)
        return response

    async def _answer(self, request: Request, record: dict[str, Any]) -> Response:
        if (refusal := self._check_auth(request)) is not None:
            return refusal
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        model, messages = body.get("model"), body.get("messages")
        stream, stream_options = body.get("stream") is True, body.get("stream_options")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        record.update(
            model=model,
            messages=messages,
            stream=stream,
            stream_options=stream_options,
            max_tokens=max_tokens,
            temperature=body.get("temperature"),
        )
        if (problem := _invalid_request(body)) is not None:
            return problem
        if self.settings.models and model not in self.settings.models:
            message = (
                f"The model `{model}` does not exist or you do not have access to it."
            )
            return _error(404, message, code="model_not_found")

        last = last_user_index(messages)
        try:
            text = message_text(messages[last]) if last is not None else ""
            directives, _ = parse_directives(text)
        except DirectiveError as exc:
            return _error(400, str(exc), param="messages")
        if directives.status is not None:
            message = (
                f"Injected error: HTTP {directives.status} ([[status]] directive)."
            )
            return _error(directives.status, message)

        count = self.settings.reply_tokens
        count = directives.tokens if directives.tokens is not None else count
        tokens = build_reply(messages, count)
        finish_reason = "stop"
        if max_tokens is not None and max_tokens < len(tokens):
            tokens, finish_reason = tokens[:max_tokens], "length"
        tps = directives.tps if directives.tps is not None else self.settings.tps
        completion = _Completion(
            record=record,
            directives=directives,
            model=model,
            tokens=tokens,
            finish_reason=directives.finish or finish_reason,
            prompt_tokens=count_prompt_tokens(messages),
            include_usage=bool((stream_options or {}).get("include_usage")),
            ttft=directives.ttft if directives.ttft is not None else self.settings.ttft,
            interval=1 / tps if tps > 0 else 0.0,
            completion_id="chatcmpl-" + secrets.token_urlsafe(21)[:28],
            created=int(time.time()),
        )
        if not stream:
            return await _whole_completion(completion)
        headers = {"cache-control": "no-cache"}
        return _RecordedStream(_sse_events(completion), record, headers)

    def _check_auth(self, request: Request) -> Response | None:
        expected = self.settings.api_key
        if expected is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, received = header.partition(" ")
        if scheme.lower() == "bearer" and received.strip() == expected:
            return None
        if not received.strip():
            message = (
                "You didn't provide an API key. You need to provide your API key "
                "in an Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            # The real service quotes the key it got (partly masked); quoting
            # all of it lets tests prove the relay never passes it on.
            message = (
                f"Incorrect API key provided: {received.strip()}. You can find "
                "your API key at https://platform.openai.com/account/api-keys."
            )
        return _error(401, message, code="invalid_api_key")


def _error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, status, param=param, code=code), status)


def _invalid_request(body: dict[str, Any]) -> Response | None:
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        return _error(400, "you must provide a model parameter", param="model")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            param = f"messages[{index}]"
            return _error(400, f"Invalid value for '{param}'.", param=param)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return _error(400, "max_tokens must be a positive integer.", param="max_tokens")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        message = (
            "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        )
        return _error(400, message, param="stream_options")
    return None


def _usage(completion: _Completion, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": completion.prompt_tokens + completion_tokens,
    }


async def _whole_completion(completion: _Completion) -> Response:
    await asyncio.sleep(completion.ttft)
    completion.record["outcome"] = "completed"
    message = {
        "role": "assistant",
        "content": "".join(completion.tokens),
        "refusal": None,
        "annotations": [],
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": completion.finish_reason,
    }
    return JSONResponse(
        {
            "id": completion.completion_id,
            "object": "chat.completion",
            "created": completion.created,
            "model": completion.model,
            "choices": [choice],
            "usage": _usage(completion, len(completion.tokens)),
            "system_fingerprint": None,
        }
    )


async def _sse_events(completion: _Completion) -> AsyncGenerator[str, None]:
    """The SSE body of one streamed completion, faults included."""
    record, directives = completion.record, completion.directives

    def event(choices: list[dict[str, Any]] | None, **extra: Any) -> str:
        chunk: dict[str, Any] = {
            "id": completion.completion_id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if completion.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        record["chunks_sent"] += 1
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[Any]:
        return [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ]

    if directives.keepalive:
        yield ": keep-alive\n\n"
    yield event(choice({"role": "assistant", "content": "", "refusal": None}))
    tokens = completion.tokens
    # A fault set past the end of the reply comes after the last content chunk.
    error_at, close_at, stall_at = (
        None if after is None else min(after, len(tokens))
        for after in (
            directives.error_after,
            directives.close_after,
            directives.stall_after,
        )
    )
    # An absolute schedule, as a model's own pace: the time spent writing each chunk
    # must not push every later one back (a drift of a millisecond a token is a
    # tenth of a second by the end of a benchmark's stream).
    loop = asyncio.get_running_loop()
    start = loop.time() + completion.ttft
    for sent in range(len(tokens) + 1):
        if sent == len(tokens) and sent not in (error_at, close_at, stall_at):
            break
        await asyncio.sleep(max(start + sent * completion.interval - loop.time(), 0))
        if sent == error_at:
            record["outcome"] = "error_midstream"
            message = f"Injected error after {sent} content chunks."
            data = json.dumps(error_body(message, 500), separators=(",", ":"))
            record["chunks_sent"] += 1
            yield f"data: {data}\n\n"
            return
        if sent == close_at:
            record["outcome"] = "aborted"
            raise _InjectedAbort(f"connection dropped after {sent} content chunks")
        if sent == stall_at:
            record["outcome"] = "stalled"
            await asyncio.get_running_loop().create_future()
        if directives.keepalive:
            yield ": keep-alive\n\n"
        if directives.null_choices:
            yield event(None)
        if directives.empty_choices:
            yield event([])
        if directives.empty_deltas:
            yield event(choice({"content": "" if sent % 2 == 0 else None}))
        yield event(choice({"content": tokens[sent]}))

    usage = None if directives.no_usage else _usage(completion, len(tokens))
    if completion.finish_reason == "tool_calls":
        call = {
            "index": 0,
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": "lookup", "arguments": "{}"},
        }
        yield event(choice({"tool_calls": [call]}))
    if directives.usage_in_choice and usage is not None:
        yield event(choice({}, completion.finish_reason), usage=usage)
    else:
        yield event(choice({}, completion.finish_reason))
        if completion.include_usage and usage is not None:
            yield event([], usage=usage)
    yield "data: [DONE]\n\n"
    record["outcome"] = "completed"


async def _json_not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = f"Invalid URL ({request.method} {request.url.path})"
    error = {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    return JSONResponse({"error": error}, status)


def create_app(settings: Settings | None = None) -> Starlette:
    """The Starlette app of a test server; records live as long as the app."""
    service = _Service(settings or Settings())
    logging.getLogger("uvicorn.error").addFilter(_QUIET_ABORT)
    routes = [
        Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
        Route("/v1/models", service.list_models, methods=["GET"]),
        Route("/_requests", service.list_requests, methods=["GET"]),
        Route("/_reset", service.reset, methods=["POST"]),
    ]
    handlers = {404: _json_not_found, 405: _json_not_found}
    return Starlette(routes=routes, exception_handlers=handlers)


class _Server(uvicorn.Server):
    """Announces the address on stdout once it accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        assert sockets, "main() always hands uvicorn its bound socket"
        host, port = sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        print(f"listening on http://{host}:{port}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.openai_server",
        description="OpenAI-compatible streaming test server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument(
        "--ttft", type=float, default=Settings.ttft, help="seconds to first word"
    )
    parser.add_argument(
        "--tps", type=float, default=Settings.tps, help="words per second; 0: no delay"
    )
    parser.add_argument(
        "--reply-tokens", type=int, default=Settings.reply_tokens, help="reply length"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TEST_SERVER_API_KEY"),
        help="required bearer key (default $TEST_SERVER_API_KEY; none: open)",
    )
    parser.add_argument(
        "--models", default="", help="comma-separated models served; default any"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server until interrupted."""
    args = parse_args(argv)
    settings = Settings(
        ttft=args.ttft,
        tps=args.tps,
        reply_tokens=args.reply_tokens,
        api_key=args.api_key or None,
        models=tuple(name.strip() for name in args.models.split(",") if name.strip()),
    )
    # Binding here, not in uvicorn, lets --port 0 report the port it got.
    sock = socket.create_server((args.host, args.port))
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="asyncio",
        timeout_graceful_shutdown=1,
    )
    _Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
