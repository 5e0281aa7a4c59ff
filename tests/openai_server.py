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
    [[reasoning:N]]     N reasoning words before the answer, one per chunk, paced
                        as content chunks (the first is due at ttft); they are
                        build_reasoning(messages, N)
    [[reasoning_field:F]]
                        where the reasoning goes: reasoning_content (the default:
                        delta.reasoning_content, as DeepSeek, llama.cpp, LiteLLM
                        and older vLLM send it), reasoning (delta.reasoning, as
                        OpenRouter, Ollama and newer vLLM) or think (inline in
                        delta.content, "<think>" opening the first reasoning chunk
                        and "</think>" closing the last, as a server without a
                        reasoning parser sends it)
    [[split_think]]     with think, cut each tag across two chunks: "<th" in a
                        chunk of its own just before the first reasoning chunk,
                        which starts "ink>"; the last one ends "</thi" and "nk>"
                        follows at once in a chunk of its own (HTTP 400 without
                        [[reasoning_field:think]])
    [[reply:B]]         the reply is the UTF-8 text whose base64 is B (markdown,
                        say) instead of build_reply's, streamed as split_reply's
                        whitespace-led pieces, one per content chunk, which
                        concatenate to it ([[tokens:N]] does not apply)

N in the ``*_after`` directives counts content chunks only (an N past the end of
the reply means after the last one, before the finish chunk); the pause before
the fault is the one the next content chunk would have had. Reasoning chunks
(``think`` ones and split tags included) never count: the fault comes after all
of the reasoning and N answer chunks. The ``*_choices``, ``empty_deltas`` and
``keepalive`` extras come before each reasoning chunk too. An unknown or malformed
directive is answered with HTTP 400, so a typo in a test fails loudly.

``max_tokens`` (or ``max_completion_tokens``) counts reasoning words first, then
answer words: one that ends inside the reasoning streams that much of it (with
``think``, no closing tag) and no answer. Either cut finishes with ``length``.
Usage counts reasoning and answer words in ``completion_tokens`` (a tag is no
token); with ``[[reasoning:N]]`` it adds ``completion_tokens_details:
{"reasoning_tokens": R}``, R the reasoning words sent. A whole (non-streamed)
completion carries the reasoning the same way, in ``message.reasoning_content``,
``message.reasoning`` or inline in ``content``.

A request record holds ``n, model, messages, stream, stream_options, max_tokens,
temperature, authorization_present, status, started_at, ended_at, outcome,
chunks_sent``. ``outcome`` is ``streaming`` or ``stalled`` while the stream is open,
then ``completed``, ``client_closed`` (the client left first; ``ended_at`` is when
that was seen), ``aborted`` (``close_after``), ``error_status`` or
``error_midstream``. ``chunks_sent`` counts ``data: {...}`` events (reasoning ones
included), not ``[DONE]``.

The server is a small HTTP/1.1 server on asyncio's transports (keep-alive,
pipelining, chunked request bodies, ``Expect: 100-continue``, flow control; other
HTTP versions get 505), so that one process feeds a thousand paced streams: one
pacer for the whole process wakes when the next chunk is due (no more often than
every ``PACER_TICK`` seconds, so a busy server writes hundreds of chunks a wake)
and writes every due chunk of every stream, each its own SSE event in its own
HTTP chunk, on an absolute schedule (paced chunk k is due at ttft + k / tps).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import heapq
import http
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from typing import Any

DEFAULT_MODEL = "test-model"
MAX_RECORDS = 10_000
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")
REASONING_FIELDS = ("reasoning_content", "reasoning", "think")
OPEN_OUTCOMES = ("streaming", "stalled")
# While chunks are due faster than this, the pacer wakes this often and writes
# every one due: a wake per chunk would cost more than the chunk.
PACER_TICK = 0.002
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
# How many chunks one stream writes at once (with --tps 0) before letting the
# others, and the socket, go on.
WRITE_BATCH = 256

log = logging.getLogger("tests.openai_server")

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
_REPLY_PIECE = re.compile(r"\s*\S+|\s+")
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
    reasoning: int | None = None
    reasoning_field: str = "reasoning_content"
    split_think: bool = False
    reply: str | None = None  # decoded from [[reply:B]]


_FLAGS = frozenset(
    ("no_usage", "usage_in_choice", "null_choices", "empty_choices")
    + ("empty_deltas", "keepalive", "split_think")
)
_NUMBERS = frozenset(
    ("status", "error_after", "stall_after", "close_after", "tokens", "ttft", "tps")
    + ("reasoning",)
)
_CHOICES = {"finish": FINISH_REASONS, "reasoning_field": REASONING_FIELDS}
_TEXTS = frozenset(("reply",))


class DirectiveError(ValueError):
    """A directive in the prompt is unknown or has a bad value."""


def parse_directives(text: str) -> tuple[Directives, str]:
    """Return the directives found in `text` and the text without them."""
    directives = Directives()
    for match in _DIRECTIVE.finditer(text):
        name, raw = match.group(1).lower(), match.group(2)
        value = None if raw is None else raw.strip()
        setattr(directives, name, _directive_value(name, value, match.group(0)))
    if directives.split_think and directives.reasoning_field != "think":
        raise DirectiveError("[[split_think]] needs [[reasoning_field:think]]")
    return directives, _DIRECTIVE.sub("", text).strip()


def _directive_value(name: str, value: str | None, source: str) -> Any:
    if name in _FLAGS:
        if value is not None:
            raise DirectiveError(f"{source}: this directive takes no value")
        return True
    if name not in _NUMBERS and name not in _CHOICES and name not in _TEXTS:
        raise DirectiveError(f"unknown test-server directive {source}")
    if value is None:
        raise DirectiveError(f"{source}: this directive needs a value")
    if name in _TEXTS:
        try:
            return base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise DirectiveError(f"{source}: not base64 of UTF-8 text") from None
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise DirectiveError(f"{source}: not one of {', '.join(_CHOICES[name])}")
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


def _filler(seed: bytes, count: int) -> list[str]:
    count = max(count, 0)
    numbers = struct.unpack(f">{count}H", hashlib.shake_256(seed).digest(2 * count))
    return [_FILLER[number % len(_FILLER)] for number in numbers]


def _pieces(words: list[str]) -> list[str]:
    """Words as stream pieces: a space before all but the first, a full stop last."""
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    if pieces and not pieces[-1].endswith("."):
        pieces[-1] += "."
    return pieces


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
    words += _filler(json.dumps(texts).encode(), count - len(words))
    return _pieces(words[:count])


def split_reply(text: str) -> list[str]:
    """The pieces [[reply:B]] streams its text in: each run of whitespace goes
    with the word after it, so the pieces concatenate to the text."""
    return _REPLY_PIECE.findall(text)


def build_reasoning(messages: Sequence[Mapping[str, Any]], count: int) -> list[str]:
    """The `count` reasoning pieces streamed before the reply by [[reasoning:N]].

    Filler words chosen by hashing the conversation (other words than the
    reply's), the first capitalised; like build_reply's tokens they concatenate
    to the reasoning text, which ends with a full stop, and a cut is a prefix.
    """
    texts = [(str(m.get("role")), _plain_text(m)) for m in messages]
    words = _filler(b"reasoning " + json.dumps(texts).encode(), count)
    if words:
        words[0] = words[0].capitalize()
    return _pieces(words)


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


# --- HTTP/1.1 ---------------------------------------------------------------


class _BadRequest(Exception):
    """The bytes on a connection are not an HTTP/1.1 request this server takes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case; repeated ones joined by ", "
    body: bytes
    keep_alive: bool


@dataclass
class _Reply:
    """A whole response: JSON, sent with a content-length."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(
        payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_LAST_CHUNK = b"0\r\n\r\n"
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


@lru_cache(maxsize=1)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def _head(status: int, headers: Mapping[str, str], keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_PHRASES.get(status, '')}",
        f"date: {_http_date(int(time.time()))}",
        "server: chatstream-test",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path (no query) and headers of an HTTP/1.1 request head."""
    try:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    if version != "HTTP/1.1":
        raise _BadRequest(505, f"{version} is not served; HTTP/1.1 is")
    if not method.isalpha() or not target:
        raise _BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise _BadRequest(400, f"malformed header line {line[:40]!r}")
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if target.startswith(("http://", "https://")):  # absolute-form
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return method, target.partition("?")[0], headers


def _chunked_body(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body from `start`: (body, end), or None if incomplete."""
    parts, at = [], start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(bytes(buffer[at:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            raise _BadRequest(400, "malformed chunk size") from None
        if size < 0 or sum(map(len, parts)) + size > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        at = line_end + 2
        if size == 0:
            break
        if len(buffer) < at + size + 2:
            return None
        if buffer[at + size : at + size + 2] != b"\r\n":
            raise _BadRequest(400, "malformed chunk")
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2
    while True:  # trailers, up to the empty line
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        if line_end == at:
            return b"".join(parts), at + 2
        at = line_end + 2


class _Connection(asyncio.Protocol):
    """One client connection: its requests, one at a time, and their responses."""

    def __init__(self, service: _Service) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered
        self.keep_alive = True
        self.closed = False
        self.paused = False  # the transport's buffer is full
        self.continued = False  # "100 Continue" sent for the request in the buffer
        self.stream: _Stream | None = None
        self.on_close: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.service.connections.add(self)
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, and
        # socket.create_server's are not: without it, Nagle holds each chunk until
        # the reader's delayed ACK (~40 ms), as no streaming model server does.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()
        elif len(self.buffer) > MAX_HEAD + MAX_BODY:
            self.transport.pause_reading()  # a pipelining client that never stops

    def eof_received(self) -> bool:
        return False  # a client that stops sending has left: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.service.connections.discard(self)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None:
            self.stream.resume()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def respond(self, reply: _Reply, *, head_only: bool = False) -> None:
        body = _json_bytes(reply.payload)
        headers = {"content-type": "application/json", **reply.headers}
        headers["content-length"] = str(len(body))
        self.write(_head(reply.status, headers, self.keep_alive))
        if not head_only:
            self.write(body)
        self.finish()

    def finish(self) -> None:
        """The response is complete: go on with the next request, or close."""
        self.busy, self.stream, self.on_close = False, None, None
        if self.closed:
            return
        if not self.keep_alive:
            self.transport.close()
            return
        self.transport.resume_reading()
        if self.buffer:
            asyncio.get_running_loop().call_soon(self._next_request)

    def _next_request(self) -> None:
        if self.busy or self.closed:
            return
        try:
            request = self._parse()
        except _BadRequest as exc:
            self.busy, self.keep_alive, self.buffer = True, False, bytearray()
            self.respond(_Reply(exc.status, error_body(str(exc), exc.status)))
            return
        if request is None:
            return
        self.busy, self.keep_alive = True, request.keep_alive
        try:
            reply = self.service.handle(self, request)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            if self.stream is not None:  # the head is out: all it can do
                self.abort()
                return
            reply = _Reply(500, error_body("The test server failed.", 500))
        if reply is not None:
            self.respond(reply, head_only=request.method == "HEAD")

    def _parse(self) -> _Request | None:
        buffer = self.buffer
        while buffer.startswith(b"\r\n"):  # stray line ends between requests
            del buffer[:2]
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            return None
        method, path, headers = _parse_head(bytes(buffer[:head_end]))
        start = head_end + 4
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower() != "chunked":
                raise _BadRequest(501, "only chunked transfer-encoding is understood")
            if "content-length" in headers:
                raise _BadRequest(400, "both content-length and transfer-encoding")
            self._continue(headers)
            parsed = _chunked_body(buffer, start)
            if parsed is None:
                return None
            body, end = parsed
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "malformed content-length") from None
            if not 0 <= length <= MAX_BODY:
                raise _BadRequest(413, "request body too large")
            end = start + length
            if len(buffer) < end:
                self._continue(headers)
                return None
            body = bytes(buffer[start:end])
        del buffer[:end]
        self.continued = False
        options = headers.get("connection", "").lower().split(",")
        keep_alive = "close" not in (option.strip() for option in options)
        return _Request(method, path, headers, body, keep_alive)

    def _continue(self, headers: Mapping[str, str]) -> None:
        if headers.get("expect", "").lower() == "100-continue" and not self.continued:
            self.continued = True
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection mid-body: what is written goes, then a FIN."""
        if not self.closed:
            self.transport.close()


# --- Streams and their pacer ---------------------------------------------------


class _Pacer:
    """One timer for every stream of the process: writes each chunk when due.

    A chunk due sooner than PACER_TICK after the last wake waits for the next
    one, so a busy server wakes every PACER_TICK and writes hundreds of chunks a
    wake, and an idle one wakes at each chunk's own time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = PACER_TICK):
        self.loop, self.tick = loop, tick
        # (when, the request's number: a stream is in here at most once, stream)
        self.due: list[tuple[float, int, _Stream]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.last_wake = -math.inf
        self.waking = False

    def add(self, when: float, stream: _Stream) -> None:
        heapq.heappush(self.due, (when, stream.n, stream))
        if not self.waking and when < self.timer_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        when = max(when, self.last_wake + self.tick)
        if when >= self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at, self.timer = when, self.loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self.timer, self.timer_at = None, math.inf
        now = self.last_wake = self.loop.time()
        due, self.waking = self.due, True
        try:
            # asyncio may run a timer up to its clock's resolution early.
            while due and due[0][0] <= now + 1e-6:
                heapq.heappop(due)[2].pump(now)
        finally:
            self.waking = False
            if due:
                self._arm(due[0][0])


@dataclass
class _Completion:
    """Everything one accepted request needs."""

    record: dict[str, Any]
    directives: Directives
    model: str
    reasoning: list[str]  # already cut by max_tokens
    reasoning_cut: bool  # max_tokens ended inside the reasoning
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    ttft: float
    interval: float
    completion_id: str
    created: int
    request_id: str = ""


def _usage(completion: _Completion) -> dict[str, Any]:
    reasoning = len(completion.reasoning)
    completion_tokens = reasoning + len(completion.tokens)
    usage: dict[str, Any] = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": completion.prompt_tokens + completion_tokens,
    }
    if completion.directives.reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _think_pieces(completion: _Completion) -> list[str]:
    """The reasoning as inline content: tags on the first and last pieces."""
    pieces = list(completion.reasoning)
    if pieces:
        pieces[0] = "<think>" + pieces[0]
        if not completion.reasoning_cut:
            pieces[-1] += "</think>"
    return pieces


class _Stream:
    """One streamed completion on its connection, advanced by the pacer."""

    def __init__(self, connection: _Connection, completion: _Completion) -> None:
        self.connection, self.completion = connection, completion
        self.record, self.directives = completion.record, completion.directives
        self.pacer = connection.service.pacer
        self.transport = connection.transport
        self.n = completion.record["n"]
        self.done = False  # nothing more will be written
        self.blocked = False  # waiting for the transport to drain
        self.slot = 0  # paced chunks written: reasoning, then answer
        self.interval = completion.interval
        think = self.directives.reasoning_field == "think"
        self.reasoning = _think_pieces(completion) if think else completion.reasoning
        answers = len(completion.tokens)
        self.slots = len(self.reasoning) + answers
        # A fault set past the end of the reply comes after the last content chunk.
        self.error_at, self.close_at, self.stall_at = faults = tuple(
            None if after is None else len(self.reasoning) + min(after, answers)
            for after in (
                self.directives.error_after,
                self.directives.close_after,
                self.directives.stall_after,
            )
        )
        # Paced chunks up to here need no check for a fault or the end.
        self.plain_end = min([self.slots, *(at for at in faults if at is not None)])
        # Every content chunk is the same JSON but for its text: encode the rest once.
        prefix = {
            "id": completion.completion_id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": None,
        }
        head = _COMPACT.encode(prefix)[:-1]
        head = f'data: {head},"choices":[{{"index":0,"delta":{{"'
        tail = '},"logprobs":null,"finish_reason":null}]'
        tail += ',"usage":null}\n\n' if completion.include_usage else "}\n\n"
        self.content_head = (head + 'content":').encode()
        field_name = "content" if think else self.directives.reasoning_field
        self.reasoning_head = (head + field_name + '":').encode()
        self.tail = tail.encode()
        self.payloads = self._paced_payloads()
        # Answer chunks with no extras are made straight from their encoded text.
        self.extras = (
            self.directives.keepalive
            or self.directives.null_choices
            or self.directives.empty_choices
            or self.directives.empty_deltas
        )
        self.fast_from = math.inf if self.extras else len(self.reasoning)
        self.texts = [b""] * len(self.reasoning)
        self.texts += [_json_text(token) for token in completion.tokens]
        self.fixed = len(self.content_head) + len(self.tail)
        # An absolute schedule, as a model's own pace: the time spent writing each
        # chunk must not push every later one back (a drift of a millisecond a
        # token is a tenth of a second by the end of a benchmark's stream).
        self.start = self.pacer.loop.time() + completion.ttft

    def begin(self) -> None:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-request-id": self.completion.request_id,
            "transfer-encoding": "chunked",
        }
        connection = self.connection
        connection.stream = self
        connection.on_close = self.client_left
        parts = [_head(200, headers, connection.keep_alive)]
        if self.directives.keepalive:
            parts.append(_KEEPALIVE)
        role = {"role": "assistant", "content": "", "refusal": None}
        parts.append(self.event(_choice(role)))
        connection.write(b"".join(parts))
        self.pump(self.pacer.loop.time())

    def pump(self, now: float) -> None:
        """Write every chunk due by `now`, then wait for the pacer, or end."""
        # The hot path, tens of thousands of times a second: one chunk is due and
        # the next one is not.
        slot, start, interval = self.slot, self.start, self.interval
        limit = now + 1e-6
        if (
            self.fast_from <= slot < self.plain_end - 1
            and start + slot * interval <= limit < start + (slot + 1) * interval
            and not (self.done or self.blocked or self.connection.paused)
        ):
            self.slot = slot + 1
            self.record["chunks_sent"] += 1
            text = self.texts[slot]
            self.transport.write(
                b"%x\r\n%b%b%b\r\n"
                % (self.fixed + len(text), self.content_head, text, self.tail)
            )
            self.pacer.add(start + (slot + 1) * interval, self)
            return
        self._pump(limit)

    def _pump(self, limit: float) -> None:
        connection = self.connection
        if self.done or self.blocked or connection.paused:
            self.blocked = not self.done
            return
        slot, end, start, interval = (
            self.slot,
            self.plain_end,
            self.start,
            self.interval,
        )
        out = []
        while slot < end:
            due = start + slot * interval
            if due > limit:
                self.slot = slot
                self.pacer.add(due, self)
                if out:  # the transport, straight: a closed one has made us done
                    self.transport.write(out[0] if len(out) == 1 else b"".join(out))
                return
            out.append(self.payload(slot))
            slot += 1
            if len(out) == WRITE_BATCH and slot < end:
                # Let the other streams, and the socket, have a turn.
                self.slot = slot
                connection.write(b"".join(out))
                self.blocked = connection.paused
                if not self.blocked:
                    self.pacer.loop.call_soon(self.resume, True)
                return
        self.slot = slot
        out.append(self.last_step(limit))
        connection.write(b"".join(out))
        if self.record["outcome"] == "aborted":
            connection.abort()
        elif self.done and self.record["outcome"] not in OPEN_OUTCOMES:
            connection.finish()

    def last_step(self, limit: float) -> bytes:
        """At a fault, or after the last paced chunk: what comes, if it is due."""
        slot = self.slot
        if slot == self.slots and slot not in (
            self.error_at,
            self.close_at,
            self.stall_at,
        ):
            return self.finish()
        due = self.start + slot * self.interval
        if due > limit:
            self.pacer.add(due, self)
            return b""
        if slot == self.error_at:
            answered = slot - len(self.reasoning)
            message = f"Injected error after {answered} content chunks."
            self.record["chunks_sent"] += 1
            data = _json_bytes_compact(error_body(message, 500))
            self.end("error_midstream")
            return _http_chunk(b"data: %b\n\n" % data) + _LAST_CHUNK
        if slot == self.close_at:
            self.end("aborted")
        else:
            self.record["outcome"] = "stalled"
            self.done = True  # until the client leaves
        return b""

    def resume(self, turn: bool = False) -> None:
        """Go on after the transport drained, or after a turn given to the others."""
        if self.blocked or turn:
            self.blocked = False
            self.pump(self.pacer.loop.time())

    def payload(self, slot: int) -> bytes:
        """The bytes of paced slot `slot`, which is the next one."""
        if slot < self.fast_from:
            return next(self.payloads)
        self.record["chunks_sent"] += 1
        text = self.texts[slot]
        return b"%x\r\n%b%b%b\r\n" % (
            self.fixed + len(text),
            self.content_head,
            text,
            self.tail,
        )

    def _paced_payloads(self) -> Iterator[bytes]:
        """The bytes of each slot before fast_from: its chunks, extras first."""
        directives, extras = self.directives, self.extras
        slots = [(self.reasoning_head, [piece]) for piece in self.reasoning]
        if directives.split_think and slots:
            first, last = slots[0][1], slots[-1][1]
            first[:] = [first[0][:3], first[0][3:]]  # "<th", "ink>word"
            if last[-1].endswith("</think>"):  # "word</thi", "nk>"
                last[-1:] = [last[-1][:-3], "nk>"]
        if extras:
            slots += [(self.content_head, [token]) for token in self.completion.tokens]
        for slot, (head, pieces) in enumerate(slots):
            parts = self._extras(slot) if extras else []
            for piece in pieces:
                parts.append(self._text_chunk(head, piece))
            yield b"".join(parts)

    def _text_chunk(self, head: bytes, text: str) -> bytes:
        self.record["chunks_sent"] += 1
        return _http_chunk(b"%b%b%b" % (head, _json_text(text), self.tail))

    def _extras(self, slot: int) -> list[bytes]:
        directives, parts = self.directives, []
        if directives.keepalive:
            parts.append(_KEEPALIVE)
        if directives.null_choices:
            parts.append(self.event(None))
        if directives.empty_choices:
            parts.append(self.event([]))
        if directives.empty_deltas:
            parts.append(
                self.event(_choice({"content": "" if slot % 2 == 0 else None}))
            )
        return parts

    def event(self, choices: list[dict[str, Any]] | None, **extra: Any) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.completion.completion_id,
            "object": "chat.completion.chunk",
            "created": self.completion.created,
            "model": self.completion.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.completion.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        self.record["chunks_sent"] += 1
        return _http_chunk(b"data: %b\n\n" % _json_bytes_compact(chunk))

    def finish(self) -> bytes:
        completion, directives, parts = self.completion, self.directives, []
        usage = None if directives.no_usage else _usage(completion)
        reason = completion.finish_reason
        if reason == "tool_calls":
            call = {
                "index": 0,
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": "lookup", "arguments": "{}"},
            }
            parts.append(self.event(_choice({"tool_calls": [call]})))
        if directives.usage_in_choice and usage is not None:
            parts.append(self.event(_choice({}, reason), usage=usage))
        else:
            parts.append(self.event(_choice({}, reason)))
            if completion.include_usage and usage is not None:
                parts.append(self.event([], usage=usage))
        parts += [_http_chunk(b"data: [DONE]\n\n"), _LAST_CHUNK]
        self.end("completed")
        return b"".join(parts)

    def end(self, outcome: str) -> None:
        self.done = True
        self.record.update(outcome=outcome, ended_at=time.time())

    def client_left(self) -> None:
        self.done = True
        if self.record["outcome"] in OPEN_OUTCOMES:
            self.end("client_closed")


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[Any]:
    return [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    ]


_KEEPALIVE = _http_chunk(b": keep-alive\n\n")


@lru_cache(maxsize=4096)
def _json_text(text: str) -> bytes:
    """A token as a JSON string; the filler words come again and again."""
    return json.dumps(text).encode()


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _json_bytes_compact(payload: Any) -> bytes:
    """JSON as the SSE events carry it (ASCII, no spaces), made once per chunk."""
    return _COMPACT.encode(payload).encode()


# --- The endpoints -------------------------------------------------------------


class _Service:
    """The endpoints of one server, with its request records."""

    def __init__(self, settings: Settings, pacer: _Pacer) -> None:
        self.settings = settings
        self.pacer = pacer
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.counter = 0
        self.connections: set[_Connection] = set()
        self.routes: dict[str, tuple[str, Callable[..., _Reply | None]]] = {
            "/v1/chat/completions": ("POST", self.chat_completions),
            "/v1/models": ("GET", self.list_models),
            "/_requests": ("GET", self.list_requests),
            "/_reset": ("POST", self.reset),
        }

    def handle(self, connection: _Connection, request: _Request) -> _Reply | None:
        """The reply to `request`, or None when the endpoint answers by itself."""
        method, endpoint = request.method, self.routes.get(request.path)
        if endpoint is None or method not in (endpoint[0], "HEAD"):
            status = 404 if endpoint is None else 405
            error = {
                "message": f"Invalid URL ({method} {request.path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            headers = {} if endpoint is None else {"allow": endpoint[0]}
            return _Reply(status, {"error": error}, headers)
        if method == "HEAD" and endpoint[0] != "GET":
            return _Reply(405, error_body("Method Not Allowed", 405))
        return endpoint[1](connection, request)

    def list_requests(self, connection: _Connection, request: _Request) -> _Reply:
        return _Reply(200, list(self.records))

    def reset(self, connection: _Connection, request: _Request) -> _Reply:
        self.records.clear()
        return _Reply(200, {"ok": True})

    def list_models(self, connection: _Connection, request: _Request) -> _Reply:
        if (refusal := self._check_auth(request)) is not None:
            return refusal
        names = self.settings.models or (DEFAULT_MODEL,)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "test-server"}
            for name in names
        ]
        return _Reply(200, {"object": "list", "data": data})

    def chat_completions(
        self, connection: _Connection, request: _Request
    ) -> _Reply | None:
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
        answer = self._answer(request, record)
        request_id = "req_" + secrets.token_hex(16)
        if isinstance(answer, _Reply):
            record.update(status=answer.status, outcome="error_status")
            record["ended_at"] = time.time()
            answer.headers["x-request-id"] = request_id
            return answer
        answer.request_id = request_id
        if record["stream"]:
            _Stream(connection, answer).begin()
            return None
        self._answer_whole_later(connection, answer)
        return None

    def _answer(
        self, request: _Request, record: dict[str, Any]
    ) -> _Reply | _Completion:
        if (refusal := self._check_auth(request)) is not None:
            return refusal
        try:
            body = json.loads(request.body)
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
        reasoning = build_reasoning(messages, directives.reasoning or 0)
        if directives.reply is not None:
            tokens = split_reply(directives.reply)
        else:
            tokens = build_reply(messages, count)
        finish_reason, reasoning_cut = "stop", False
        if max_tokens is not None and max_tokens < len(reasoning) + len(tokens):
            finish_reason = "length"
            reasoning_cut = max_tokens < len(reasoning)
            reasoning = reasoning[:max_tokens]
            tokens = tokens[: max_tokens - len(reasoning)]
        tps = directives.tps if directives.tps is not None else self.settings.tps
        return _Completion(
            record=record,
            directives=directives,
            model=model,
            reasoning=reasoning,
            reasoning_cut=reasoning_cut,
            tokens=tokens,
            finish_reason=directives.finish or finish_reason,
            prompt_tokens=count_prompt_tokens(messages),
            include_usage=bool((stream_options or {}).get("include_usage")),
            ttft=directives.ttft if directives.ttft is not None else self.settings.ttft,
            interval=1 / tps if tps > 0 else 0.0,
            completion_id="chatcmpl-" + secrets.token_urlsafe(21)[:28],
            created=int(time.time()),
        )

    def _answer_whole_later(
        self, connection: _Connection, completion: _Completion
    ) -> None:
        record = completion.record

        def answer() -> None:
            record.update(outcome="completed", ended_at=time.time())
            reply = _Reply(200, _whole_completion(completion))
            reply.headers["x-request-id"] = completion.request_id
            connection.respond(reply)

        def client_left() -> None:
            timer.cancel()
            record.update(outcome="client_closed", ended_at=time.time())

        timer = self.pacer.loop.call_later(completion.ttft, answer)
        connection.on_close = client_left

    def _check_auth(self, request: _Request) -> _Reply | None:
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
) -> _Reply:
    return _Reply(status, error_body(message, status, param=param, code=code))


def _invalid_request(body: dict[str, Any]) -> _Reply | None:
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


def _whole_completion(completion: _Completion) -> dict[str, Any]:
    content = "".join(completion.tokens)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if completion.directives.reasoning is not None:
        field_name = completion.directives.reasoning_field
        if field_name == "think":
            message["content"] = "".join(_think_pieces(completion)) + content
        else:
            message[field_name] = "".join(completion.reasoning)
    message.update(refusal=None, annotations=[])
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": completion.finish_reason,
    }
    return {
        "id": completion.completion_id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [choice],
        "usage": _usage(completion),
        "system_fingerprint": None,
    }


# --- Running it ----------------------------------------------------------------


async def serve(
    settings: Settings,
    sock: socket.socket,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve on the bound socket `sock` until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    service = _Service(settings, _Pacer(loop))
    server = await loop.create_server(
        lambda: _Connection(service), sock=sock, backlog=2048
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if on_ready is not None:
        on_ready()
    async with server:
        await stop.wait()
        server.close()
        for connection in list(service.connections):
            connection.abort()


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
    logging.basicConfig(level=logging.WARNING)
    # Binding here lets --port 0 report the port it got.
    sock = socket.create_server((args.host, args.port), backlog=2048)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host

    def announce() -> None:
        print(f"listening on http://{host}:{port}", flush=True)

    asyncio.run(serve(settings, sock, announce))


if __name__ == "__main__":
    main()
