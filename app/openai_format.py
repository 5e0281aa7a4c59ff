"""OpenAI's chat completions format, as the HTTP transport speaks it: a request body
read into the relay's ``ChatRequest``, and the relay's events written as
``chat.completion.chunk`` and ``chat.completion`` objects and OpenAI-shaped errors.

The body's messages and parameters are checked by ``chat_request``, the same rules
as a Socket.IO ``chat``'s; every parameter the relay does not own goes upstream as
it came.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from .chat_request import (
    ChatRequest,
    Limits,
    check_messages,
    check_offered,
    check_params,
)
from .errors import ProtocolError, text_error
from .providers.base import ANSWER, REASONING, REFUSAL, TOOL_CALL, Piece
from .toolcalls import assemble

# HTTP status and OpenAI error type of each error code.
STATUS = {
    "invalid_request": (400, "invalid_request_error"),
    "host_not_allowed": (400, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "forbidden_origin": (403, "permission_error"),
    "resume_denied": (403, "permission_error"),
    "model_not_found": (404, "not_found_error"),
    "not_found": (404, "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "busy": (429, "rate_limit_error"),
    "rate_limited": (429, "rate_limit_error"),
    "upstream_rate_limited": (429, "rate_limit_error"),
    "upstream_error": (400, "invalid_request_error"),
    "upstream_not_found": (404, "not_found_error"),
    "upstream_auth": (502, "api_error"),
    "upstream_bad_response": (502, "api_error"),
    "internal": (500, "api_error"),
    "shutting_down": (503, "api_error"),
    "interrupted": (503, "api_error"),
    "upstream_unavailable": (503, "api_error"),
    "upstream_timeout": (504, "api_error"),
    "history_unavailable": (503, "api_error"),
    # Every route's, under /v1 in this shape (app/http_limits.py).
    "request_timeout": (408, "invalid_request_error"),
    "body_too_large": (413, "invalid_request_error"),
    "too_many_connections": (429, "rate_limit_error"),
    "content_filtered": (400, "invalid_request_error"),
    "moderation_unavailable": (503, "api_error"),
}


# The body's fields this transport reads itself; the rest are request parameters.
# ``background`` is this product's extension, named after the Responses API's: the
# generation goes on when the client disconnects, for a resume to pick up.
_OWN_FIELDS = ("messages", "model", "stream", "stream_options", "background")


class Body:
    """A valid request: the relay's ``ChatRequest`` and how to answer it."""

    def __init__(self, chat: ChatRequest, stream: bool, usage: bool, background: bool):
        self.chat = chat
        self.stream = stream
        self.include_usage = usage
        self.background = background


def new_id() -> str:
    """A completion's id, which is also its request id for the relay."""
    return "chatcmpl-" + secrets.token_hex(12)


def read_json(raw: bytes) -> Any:
    """A request body's JSON, or ``invalid_request``: for a body that is not JSON,
    nests deeper than the parser goes, or holds a string that is not text."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ProtocolError(
            "invalid_request", "body: nested too deeply to be a chat request"
        ) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ProtocolError("invalid_request", f"body: not JSON ({exc})") from None
    # A lone surrogate can only come as a \u escape: without one, nothing to look for.
    if b"\\u" in raw:
        message = text_error(data, "body")
        if message is not None:
            raise ProtocolError("invalid_request", message)
    return data


def parse_body(data: Any, limits: Limits) -> Body:
    """Read a ``POST /v1/chat/completions`` body, or raise ``ProtocolError`` naming
    the field (``model_not_found`` for a model that is not offered)."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "body: must be a JSON object")
    stream = _flag(data, "stream")
    background = _flag(data, "background")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ProtocolError("invalid_request", "stream_options: must be an object")
    usage = _flag(options or {}, "include_usage", "stream_options.")
    model = check_offered(data.get("model"), limits)
    chat = ChatRequest(
        id=new_id(),
        messages=check_messages(data.get("messages"), limits),
        model=model,
        params=check_params(
            {k: v for k, v in data.items() if k not in _OWN_FIELDS}, limits
        ),
        survives_disconnect=background,
    )
    return Body(chat, stream, usage, background)


def _flag(data: dict[str, Any], name: str, prefix: str = "") -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProtocolError("invalid_request", f"{prefix}{name}: must be true or false")
    return value


# -- what the relay sends, in OpenAI's shapes ------------------------------------------


class Completion:
    """One completion's fixed fields, and its pieces as they stream."""

    def __init__(self, completion_id: str, model: str, created: int):
        self.id = completion_id
        self.model = model
        self.created = created
        self.started = False

    def chunk(self, piece: Piece) -> dict[str, Any]:
        """A ``chat.completion.chunk`` carrying one chunk event's piece."""
        choice_delta = _delta(piece)
        if not self.started:
            # OpenAI's first chunk names the role.
            choice_delta = {"role": "assistant", **choice_delta}
            self.started = True
        choice: dict[str, Any] = {
            "index": 0,
            "delta": choice_delta,
            "finish_reason": None,
        }
        if len(piece) > 2:
            choice["logprobs"] = {_logprobs_field(piece): piece[2]}
        return self._chunk([choice])

    def finish(self, done: dict[str, Any]) -> dict[str, Any]:
        """The last chunk with a choice: its ``finish_reason``."""
        choice = {"index": 0, "delta": {}, "finish_reason": done["finish_reason"]}
        return self._chunk([choice], done)

    def usage_chunk(self, done: dict[str, Any]) -> dict[str, Any]:
        """The chunk ``stream_options.include_usage`` asks for: no choices."""
        return {**self._chunk([], done), "usage": usage(done)}

    def whole(self, pieces: list[Piece], done: dict[str, Any]) -> dict:
        """The ``chat.completion`` of a request made without ``stream``."""
        texts: dict[str, list[str]] = {ANSWER: [], REASONING: [], REFUSAL: []}
        logprobs: dict[str, list[Any]] = {}
        for piece in pieces:
            if piece[0] != TOOL_CALL:
                texts[piece[0]].append(piece[1])
                if len(piece) > 2:
                    logprobs.setdefault(_logprobs_field(piece), []).extend(piece[2])
        answer = "".join(texts[ANSWER])
        tool_calls = done.get("tool_calls") or assemble(
            piece[1] for piece in pieces if piece[0] == TOOL_CALL
        )
        message: dict[str, Any] = {
            "role": "assistant",
            # OpenAI's: null when the answer is tool calls or a refusal alone.
            "content": answer if answer or not (tool_calls or texts[REFUSAL]) else None,
            "refusal": "".join(texts[REFUSAL]) or None,
        }
        if texts[REASONING]:
            message["reasoning_content"] = "".join(texts[REASONING])
        if tool_calls:
            message["tool_calls"] = tool_calls
        whole: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": done.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": done["finish_reason"],
                    "logprobs": logprobs or None,
                }
            ],
            "usage": usage(done),
        }
        if done.get("system_fingerprint"):
            whole["system_fingerprint"] = done["system_fingerprint"]
        return whole

    def _chunk(
        self, choices: list[dict[str, Any]], done: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        # Known once the upstream has said it: on the last chunks.
        if done is not None and done.get("system_fingerprint"):
            chunk["system_fingerprint"] = done["system_fingerprint"]
        return chunk


def _logprobs_field(piece: Piece) -> str:
    """Where OpenAI puts a piece's log probabilities: a refusal's apart."""
    return "refusal" if piece[0] == REFUSAL else "content"


def _delta(piece: Piece) -> dict[str, Any]:
    """A piece as OpenAI's ``delta``."""
    kind = piece[0]
    if kind == TOOL_CALL:
        fragment = piece[1]
        call: dict[str, Any] = {"index": fragment["index"]}
        if "id" in fragment:
            call["id"] = fragment["id"]
            call["type"] = "function"
        function = {"arguments": fragment["arguments"]}
        if "name" in fragment:
            function = {"name": fragment["name"], **function}
        call["function"] = function
        return {"tool_calls": [call]}
    if kind == ANSWER:
        return {"content": piece[1]}
    if kind == REFUSAL:
        return {"refusal": piece[1]}
    return {"reasoning_content": piece[1]}


def usage(done: dict[str, Any]) -> dict[str, Any]:
    """A ``done`` event's usage in OpenAI's shape."""
    counted = done["usage"]
    return {
        "prompt_tokens": counted["prompt_tokens"],
        "completion_tokens": counted["completion_tokens"],
        "total_tokens": counted["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": counted.get("cached_tokens", 0)},
        "completion_tokens_details": {"reasoning_tokens": counted["reasoning_tokens"]},
    }


# Where every error, a refusal before the route included, takes ``error_body``'s
# shape: OpenAI's API, and the conversations' (app/conversations_api.py).
ERROR_OBJECT_PATHS = ("/v1/", "/api/")


def error_body(code: str, message: str) -> dict[str, Any]:
    """OpenAI's error object; ``param`` names the field when the message does."""
    field, _, rest = message.partition(": ")
    param = field if rest and " " not in field else None
    return {
        "error": {
            "message": message,
            "type": STATUS.get(code, (500, "api_error"))[1],
            "param": param,
            "code": code,
        }
    }


def status_of(code: str) -> int:
    return STATUS.get(code, (500, "api_error"))[0]
