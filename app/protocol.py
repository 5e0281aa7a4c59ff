"""The Socket.IO protocol: payload validation and error codes.

The README's protocol table is the human-readable form of this module.
"""

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Error codes sent in ``error`` events, with whether retrying can help.
RETRYABLE = {
    "invalid_request": False,
    "unknown_id": False,
    "busy": True,
    "rate_limited": True,
    "resume_denied": False,
    "shutting_down": True,
    "interrupted": True,
    "upstream_auth": False,
    "upstream_not_found": False,
    "upstream_rate_limited": True,
    "upstream_unavailable": True,
    "upstream_timeout": True,
    "upstream_error": False,
    "internal": False,
    # The HTTP transport's own (openai_api.py); Socket.IO has them as connect errors
    # or as invalid_request.
    "unauthorized": False,
    "forbidden_origin": False,
    "model_not_found": False,
    # Refused connections (app/admission.py, the connect handler): a refused
    # handshake's HTTP body, or a connect error's data.
    "too_many_connections": False,
    "handshake_rate_limited": True,
    "server_full": True,
}

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "cancelled")


class ProtocolError(Exception):
    """A request the server answers with an ``error`` event and a negative ack."""

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retryable = RETRYABLE[code]
        # Seconds after which a retry can succeed, when the server knows.
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.request_id is not None:
            data = {"id": self.request_id, **data}
        return data


def already_live(request_id: str) -> ProtocolError:
    return ProtocolError(
        "invalid_request",
        f"id: {request_id!r} is already live on this connection",
        request_id,
    )


def resume_denied(request_id: str) -> ProtocolError:
    return ProtocolError(
        "resume_denied",
        f"id: no resumable request {request_id!r} with this token",
        request_id,
    )


def interrupted(request_id: str) -> dict[str, Any]:
    """The error event of a request whose generating node died."""
    return ProtocolError(
        "interrupted",
        "the server generating this answer stopped; retry",
        request_id,
    ).payload()


class _Strict(BaseModel):
    # Strict: "3" is not a number and true is not 1; extra keys name a typo.
    model_config = ConfigDict(strict=True, extra="forbid")


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str


class Options(_Strict):
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)


class _ChatPayload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(min_length=1, max_length=64)
    messages: list[Message] | None = None
    message: str | None = None
    model: str | None = None
    options: Options | None = None


class _StopPayload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(min_length=1, max_length=64)


class _ResumePayload(_StopPayload):
    token: str = Field(min_length=1, max_length=128)
    after: int = Field(ge=-1)


@dataclass
class ChatRequest:
    """A validated ``chat`` request."""

    id: str
    messages: list[dict[str, str]]
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    # Whether the generation runs on when its client disconnects, for a resume
    # (RESUME_GRACE_SECONDS); otherwise a disconnect stops it, as OpenAI's API does.
    survives_disconnect: bool = True


@dataclass
class Limits:
    models: list[str]
    default_model: str
    max_messages: int
    max_prompt_chars: int
    max_tokens_cap: int


def _field_name(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "payload"


def _invalid(exc: ValidationError, request_id: str | None) -> ProtocolError:
    first = exc.errors(include_url=False)[0]
    loc = tuple(part for part in first["loc"] if part not in ("tagged-union",))
    message = first["msg"]
    if first["type"] == "literal_error" and first.get("input") == "system":
        message = "'system' is not allowed; the server sets the system prompt"
    return ProtocolError(
        "invalid_request", f"{_field_name(loc)}: {message}", request_id
    )


def _readable_id(data: Any) -> str | None:
    """The request id, when the payload carries a usable one."""
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return None


def parse_chat(data: Any, limits: Limits) -> ChatRequest:
    """Validate a ``chat`` payload or raise ``ProtocolError`` naming the field."""
    request_id = _readable_id(data)
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "payload: must be an object")
    try:
        payload = _ChatPayload.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, request_id) from None

    if payload.messages is not None and payload.message is not None:
        raise ProtocolError(
            "invalid_request", "message: send either messages or message", request_id
        )
    if payload.message is not None:
        messages = [{"role": "user", "content": payload.message}]
    elif payload.messages is not None:
        messages = [m.model_dump() for m in payload.messages]
    else:
        raise ProtocolError("invalid_request", "messages: field required", request_id)

    if not messages:
        raise ProtocolError(
            "invalid_request", "messages: must hold at least one message", request_id
        )
    if len(messages) > limits.max_messages:
        raise ProtocolError(
            "invalid_request",
            f"messages: at most {limits.max_messages} messages are accepted",
            request_id,
        )
    if messages[-1]["role"] != "user":
        raise ProtocolError(
            "invalid_request",
            f"messages[{len(messages) - 1}].role: the last message must be the user's",
            request_id,
        )
    for index, message in enumerate(messages):
        # An assistant turn may be empty: an answer stopped before its first token.
        if message["role"] == "user" and not message["content"].strip():
            raise ProtocolError(
                "invalid_request",
                f"messages[{index}].content: must not be empty",
                request_id,
            )
    total = sum(len(m["content"]) for m in messages)
    if total > limits.max_prompt_chars:
        raise ProtocolError(
            "invalid_request",
            f"messages: {total} characters in all; the limit is "
            f"{limits.max_prompt_chars}",
            request_id,
        )

    model = payload.model if payload.model is not None else limits.default_model
    if model not in limits.models:
        raise ProtocolError(
            "invalid_request",
            f"model: {model!r} is not offered; choose one of "
            + ", ".join(repr(m) for m in limits.models),
            request_id,
        )

    options = payload.options or Options()
    if options.max_tokens is not None and options.max_tokens > limits.max_tokens_cap:
        raise ProtocolError(
            "invalid_request",
            f"options.max_tokens: at most {limits.max_tokens_cap}",
            request_id,
        )
    return ChatRequest(
        id=payload.id,
        messages=messages,
        model=model,
        temperature=options.temperature,
        max_tokens=options.max_tokens,
    )


def parse_stop(data: Any) -> str:
    """Validate a ``stop`` payload and return the request id."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "payload: must be an object")
    try:
        return _StopPayload.model_validate(data).id
    except ValidationError as exc:
        raise _invalid(exc, _readable_id(data)) from None


def parse_resume(data: Any) -> tuple[str, str, int]:
    """Validate a ``resume`` payload: (request id, token, last seq held)."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "payload: must be an object")
    try:
        payload = _ResumePayload.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, _readable_id(data)) from None
    return payload.id, payload.token, payload.after
