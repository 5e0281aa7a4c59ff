"""The Socket.IO protocol: each event's payload read into what the relay takes.

The README's protocol table is the human-readable form of this module.
"""

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .chat_request import (
    ChatRequest,
    Limits,
    check_messages,
    check_model,
    check_params,
)
from .conversations import LEAF
from .errors import ProtocolError, text_error


class _ChatPayload(BaseModel):
    # Strict: "3" is not a number and true is not 1. The messages and options are
    # read by ``chat_request``, the checks every transport shares.
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(min_length=1, max_length=64)
    messages: Any = None
    message: str | None = None
    model: str | None = None
    options: dict[str, Any] | None = None
    conversation_id: str | None = Field(default=None, min_length=1, max_length=64)
    # Left out: the conversation's current leaf (``LEAF``); null: a new root.
    parent_id: str | None = Field(default=LEAF, min_length=1, max_length=64)
    store: bool = True


@dataclass(frozen=True)
class Keeping:
    """Where a chat goes in its owner's conversations (app/conversations.py)."""

    store: bool
    conversation_id: str | None
    parent_id: str | None


class _StopPayload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(min_length=1, max_length=64)


class _ResumePayload(_StopPayload):
    token: str = Field(min_length=1, max_length=128)
    after: int = Field(ge=-1)


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
    return ProtocolError(
        "invalid_request", f"{_field_name(loc)}: {first['msg']}", request_id
    )


def _readable_id(data: Any) -> str | None:
    """The request id, when the payload carries a usable one."""
    if isinstance(data, dict):
        value = data.get("id")
        if (
            isinstance(value, str)
            and 0 < len(value) <= 64
            and text_error(value) is None
        ):
            return value
    return None


def _check_text(data: Any, request_id: str | None) -> None:
    message = text_error(data)
    if message is not None:
        raise ProtocolError("invalid_request", message, request_id)


def parse_chat(data: Any, limits: Limits) -> tuple[ChatRequest, Keeping]:
    """Validate a ``chat`` payload or raise ``ProtocolError`` naming the field.

    With ``conversation_id`` the messages are only the new ones, and none at all
    answers ``parent_id`` again (a regenerated answer)."""
    request_id = _readable_id(data)
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "payload: must be an object")
    _check_text(data, request_id)
    try:
        payload = _ChatPayload.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, request_id) from None

    keeping = Keeping(payload.store, payload.conversation_id, payload.parent_id)
    if not payload.store and (
        payload.conversation_id is not None or payload.parent_id != LEAF
    ):
        field = "conversation_id" if payload.conversation_id else "parent_id"
        raise ProtocolError(
            "invalid_request", f"{field}: not with store: false", request_id
        )
    if payload.conversation_id is None and payload.parent_id != LEAF:
        raise ProtocolError(
            "invalid_request", "parent_id: only with conversation_id", request_id
        )
    if payload.messages is not None and payload.message is not None:
        raise ProtocolError(
            "invalid_request", "message: send either messages or message", request_id
        )
    if payload.message is not None:
        raw = [{"role": "user", "content": payload.message}]
    elif payload.messages is not None:
        raw = payload.messages
    elif payload.conversation_id is not None and payload.parent_id not in (
        LEAF,
        None,
    ):
        raw = None  # answer parent_id again
    else:
        raise ProtocolError("invalid_request", "messages: field required", request_id)
    chat_request = ChatRequest(
        id=payload.id,
        messages=check_messages(raw, limits, request_id) if raw is not None else [],
        model=check_model(payload.model, limits, request_id),
        params=check_params(payload.options or {}, limits, "options.", request_id),
    )
    return chat_request, keeping


def parse_stop(data: Any) -> str:
    """Validate a ``stop`` payload and return the request id."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "payload: must be an object")
    _check_text(data, _readable_id(data))
    try:
        return _StopPayload.model_validate(data).id
    except ValidationError as exc:
        raise _invalid(exc, _readable_id(data)) from None


def parse_resume(data: Any) -> tuple[str, str, int]:
    """Validate a ``resume`` payload: (request id, token, last seq held)."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_request", "payload: must be an object")
    _check_text(data, _readable_id(data))
    try:
        payload = _ResumePayload.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, _readable_id(data)) from None
    return payload.id, payload.token, payload.after
