"""OpenAI's chat completions format, as the HTTP transport speaks it: a request body
read into the relay's ``ChatRequest``, and the relay's events written as
``chat.completion.chunk`` and ``chat.completion`` objects and OpenAI-shaped errors.

The request is checked by ``protocol.parse_chat``, the same rules as a Socket.IO
``chat``; only the shape differs.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .protocol import ChatRequest, Limits, ProtocolError, parse_chat
from .providers.base import ANSWER, Kind

# HTTP status and OpenAI error type of each error code.
STATUS = {
    "invalid_request": (400, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "forbidden_origin": (403, "permission_error"),
    "resume_denied": (403, "permission_error"),
    "model_not_found": (404, "not_found_error"),
    "busy": (429, "rate_limit_error"),
    "rate_limited": (429, "rate_limit_error"),
    "upstream_rate_limited": (429, "rate_limit_error"),
    "upstream_error": (400, "invalid_request_error"),
    "upstream_not_found": (404, "not_found_error"),
    "upstream_auth": (502, "api_error"),
    "internal": (500, "api_error"),
    "shutting_down": (503, "api_error"),
    "interrupted": (503, "api_error"),
    "upstream_unavailable": (503, "api_error"),
    "upstream_timeout": (504, "api_error"),
}


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[_Part] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Body(BaseModel):
    # OpenAI's SDKs send fields this relay has no use for (top_p, user, …): ignored,
    # as an OpenAI-compatible server does. Types are checked strictly.
    model_config = ConfigDict(extra="ignore", strict=True)

    messages: list[_Message]
    model: str | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = None
    # This product's extension, named after the Responses API's: the generation
    # goes on when the client disconnects, for a resume to pick up.
    background: bool = False


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


def parse_body(data: Any, limits: Limits) -> Body:
    """Read a ``POST /v1/chat/completions`` body, or raise ``ProtocolError`` naming
    the field (``model_not_found`` for a model that is not offered)."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "body: must be a JSON object")
    try:
        body = _Body.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = _field(first["loc"])
        raise ProtocolError("invalid_request", f"{field}: {first['msg']}") from None
    if body.n not in (None, 1):
        raise ProtocolError("invalid_request", "n: only one choice is generated")
    if body.model is not None and body.model not in limits.models:
        raise ProtocolError(
            "model_not_found",
            f"model: {body.model!r} is not offered; choose one of "
            + ", ".join(repr(m) for m in limits.models),
        )
    messages = []
    for index, message in enumerate(body.messages):
        messages.append({"role": message.role, "content": _text(index, message)})
    options: dict[str, Any] = {}
    if body.temperature is not None:
        options["temperature"] = float(body.temperature)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    payload = {"id": new_id(), "messages": messages, "options": options}
    if body.model is not None:
        payload["model"] = body.model
    try:
        chat = parse_chat(payload, limits)
    except ProtocolError as exc:
        # The Socket.IO payload nests the options; the HTTP body does not.
        raise ProtocolError(exc.code, exc.message.removeprefix("options.")) from None
    chat.survives_disconnect = body.background
    usage = body.stream_options is not None and body.stream_options.include_usage
    return Body(chat, body.stream, usage, body.background)


def _text(index: int, message: _Message) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part_index, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise ProtocolError(
                "invalid_request",
                f"messages[{index}].content[{part_index}].type: only text parts "
                "are accepted",
            )
        texts.append(part.text)
    return "".join(texts)


# How pydantic names the member of a union in an error's location: not a field.
_UNION_MEMBERS = {"str", "float", "list[_Part]"}


def _field(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part not in _UNION_MEMBERS:
            name += f".{part}" if name else str(part)
    return name or "body"


# -- what the relay sends, in OpenAI's shapes ------------------------------------------


class Completion:
    """One completion's fixed fields, and its text as it streams."""

    def __init__(self, completion_id: str, model: str, created: int):
        self.id = completion_id
        self.model = model
        self.created = created
        self.started = False

    def chunk(self, kind: Kind, delta: str) -> dict[str, Any]:
        """A ``chat.completion.chunk`` carrying one chunk event's text."""
        field = "content" if kind == ANSWER else "reasoning_content"
        choice_delta: dict[str, Any] = {field: delta}
        if not self.started:
            # OpenAI's first chunk names the role.
            choice_delta = {"role": "assistant", **choice_delta}
            self.started = True
        return self._chunk([{"index": 0, "delta": choice_delta, "finish_reason": None}])

    def finish(self, done: dict[str, Any]) -> dict[str, Any]:
        """The last chunk with a choice: its ``finish_reason``."""
        choice = {"index": 0, "delta": {}, "finish_reason": done["finish_reason"]}
        return self._chunk([choice])

    def usage_chunk(self, done: dict[str, Any]) -> dict[str, Any]:
        """The chunk ``stream_options.include_usage`` asks for: no choices."""
        return {**self._chunk([]), "usage": usage(done)}

    def whole(self, answer: str, reasoning: str, done: dict[str, Any]) -> dict:
        """The ``chat.completion`` of a request made without ``stream``."""
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": done.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": done["finish_reason"],
                    "logprobs": None,
                }
            ],
            "usage": usage(done),
        }

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def usage(done: dict[str, Any]) -> dict[str, Any]:
    """A ``done`` event's usage in OpenAI's shape."""
    counted = done["usage"]
    return {
        "prompt_tokens": counted["prompt_tokens"],
        "completion_tokens": counted["completion_tokens"],
        "total_tokens": counted["total_tokens"],
        "completion_tokens_details": {"reasoning_tokens": counted["reasoning_tokens"]},
    }


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
