"""The core's request type, and the checks every transport applies to build it.

A transport (Socket.IO's ``chat``, ``POST /v1/chat/completions``) reads its own
payload, then hands the messages and the request parameters to ``check_messages``
and ``check_params`` and builds a ``ChatRequest`` from what they return. Both raise
``ProtocolError`` (``invalid_request``) with a message that names the field as the
client wrote it (``prefix`` says where the parameters sit in that transport's
payload).

The relay owns only what it must: ``stream`` and ``stream_options`` (it always
streams, and asks for usage), ``model`` (checked against the offered list), ``n``
(one choice) and the caps on ``max_tokens``/``max_completion_tokens``. Every other
parameter goes upstream unchanged, known to this module or not, as an
OpenAI-compatible gateway should: one that accepts a field and drops it breaks its
clients silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

ROLES = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id"}
# Set by the relay itself, whatever the client asks.
OWNED_PARAMS = ("stream", "stream_options", "model", "messages")
_TOKEN_CAPS = ("max_tokens", "max_completion_tokens")
_IMAGE_URL_PREFIXES = ("data:image/", "https://", "http://")
_DETAILS = ("auto", "low", "high")


@dataclass
class ChatRequest:
    """A validated chat request, whichever transport it came over."""

    id: str
    # OpenAI-shaped messages, as the client sent them (the system prompt is added
    # by the relay).
    messages: list[dict[str, Any]]
    model: str
    # Every other request parameter, passed upstream unchanged.
    params: dict[str, Any] = field(default_factory=dict)
    # Whether the generation runs on when its client disconnects, for a resume
    # (RESUME_GRACE_SECONDS); otherwise a disconnect stops it, as OpenAI's API does.
    survives_disconnect: bool = True
    # The conversation turn it adds, when the server keeps it (app/conversations.py).
    turn: Any = None

    @property
    def max_tokens(self) -> int | None:
        """The completion's token cap, by either of OpenAI's names for it."""
        for name in ("max_completion_tokens", "max_tokens"):
            value = self.params.get(name)
            if value is not None:
                return value
        return None


@dataclass
class Limits:
    models: list[str]
    default_model: str
    max_messages: int
    max_prompt_chars: int
    max_tokens_cap: int
    # Whether clients may send system and developer messages.
    client_system_messages: bool = True


def _invalid(where: str, message: str, request_id: str | None) -> ProtocolError:
    return ProtocolError("invalid_request", f"{where}: {message}", request_id)


def check_text(value: Any, where: str, request_id: str | None = None) -> str:
    """``value`` if it is text that can be sent on (no lone surrogate, which JSON
    can carry but UTF-8 cannot)."""
    if not isinstance(value, str):
        raise _invalid(where, "must be a string", request_id)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _invalid(
            where, "holds a lone surrogate; send valid Unicode text", request_id
        ) from None
    return value


def check_model(model: Any, limits: Limits, request_id: str | None = None) -> str:
    if model is None:
        return limits.default_model
    check_text(model, "model", request_id)
    if model not in limits.models:
        raise _invalid(
            "model",
            f"{model!r} is not offered; choose one of "
            + ", ".join(repr(m) for m in limits.models),
            request_id,
        )
    return model


def check_offered(model: Any, limits: Limits) -> str:
    """An HTTP body's ``model``, as ``check_model`` reads it, but a model that is
    not offered is ``model_not_found``: the code OpenAI's SDKs read as a 404."""
    if model is not None and (not isinstance(model, str) or model not in limits.models):
        raise ProtocolError(
            "model_not_found",
            f"model: {model!r} is not offered; choose one of "
            + ", ".join(repr(m) for m in limits.models),
        )
    return check_model(model, limits)


def check_messages(
    raw: Any, limits: Limits, request_id: str | None = None
) -> list[dict[str, Any]]:
    """The messages to send upstream, or ``ProtocolError`` naming the field."""
    if not isinstance(raw, list):
        raise _invalid("messages", "must be a list of messages", request_id)
    if not raw:
        raise _invalid("messages", "must hold at least one message", request_id)
    if len(raw) > limits.max_messages:
        raise _invalid(
            "messages",
            f"at most {limits.max_messages} messages are accepted",
            request_id,
        )
    checker = _MessageChecker(limits, request_id)
    messages = [checker.message(index, item) for index, item in enumerate(raw)]
    last = len(messages) - 1
    if messages[last]["role"] not in ("user", "tool"):
        raise _invalid(
            f"messages[{last}].role",
            "the last message must be the user's or a tool result",
            request_id,
        )
    if checker.chars > limits.max_prompt_chars:
        raise _invalid(
            "messages",
            f"{checker.chars} characters in all; the limit is "
            f"{limits.max_prompt_chars}",
            request_id,
        )
    return messages


class _MessageChecker:
    def __init__(self, limits: Limits, request_id: str | None):
        self.limits = limits
        self.request_id = request_id
        # Characters of text in all messages, for MAX_PROMPT_CHARS.
        self.chars = 0

    def fail(self, where: str, message: str) -> ProtocolError:
        return _invalid(where, message, self.request_id)

    def message(self, index: int, item: Any) -> dict[str, Any]:
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise self.fail(where, "must be an object")
        for key in item:
            if key not in _MESSAGE_KEYS:
                raise self.fail(
                    f"{where}.{key}",
                    "is not a message field (role, content, name, tool_calls, "
                    "tool_call_id)",
                )
        role = item.get("role")
        if role not in ROLES:
            raise self.fail(f"{where}.role", "must be one of " + ", ".join(ROLES))
        if role in ("system", "developer") and not self.limits.client_system_messages:
            raise self.fail(
                f"{where}.role",
                f"{role!r} is not allowed; the server sets the system prompt",
            )
        message: dict[str, Any] = {"role": role}
        if "name" in item:
            message["name"] = check_text(item["name"], f"{where}.name", self.request_id)
        if "tool_calls" in item:
            if role != "assistant":
                raise self.fail(f"{where}.tool_calls", "only an assistant message")
            message["tool_calls"] = self.tool_calls(where, item["tool_calls"])
        if role == "tool":
            message["tool_call_id"] = check_text(
                item.get("tool_call_id"), f"{where}.tool_call_id", self.request_id
            )
        elif "tool_call_id" in item:
            raise self.fail(f"{where}.tool_call_id", "only a tool message")
        content = item.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise self.fail(f"{where}.content", "field required")
        message["content"] = self.content(f"{where}.content", role, content)
        if role == "user" and not _has_substance(message["content"]):
            raise self.fail(f"{where}.content", "must not be empty")
        return message

    def content(self, where: str, role: str, content: Any) -> Any:
        if content is None:
            return None
        if isinstance(content, str):
            self.chars += len(check_text(content, where, self.request_id))
            return content
        if not isinstance(content, list):
            raise self.fail(where, "must be a string or a list of parts")
        return [self.part(f"{where}[{i}]", role, p) for i, p in enumerate(content)]

    def part(self, where: str, role: str, part: Any) -> dict[str, Any]:
        if not isinstance(part, dict):
            raise self.fail(where, "must be an object")
        kind = part.get("type")
        if kind == "text":
            text = check_text(part.get("text"), f"{where}.text", self.request_id)
            self.chars += len(text)
            return {"type": "text", "text": text}
        if kind == "image_url":
            if role != "user":
                raise self.fail(f"{where}.type", "images belong in user messages")
            return {"type": "image_url", "image_url": self.image(where, part)}
        raise self.fail(f"{where}.type", "must be 'text' or 'image_url'")

    def image(self, where: str, part: dict[str, Any]) -> dict[str, Any]:
        image = part.get("image_url")
        if not isinstance(image, dict):
            raise self.fail(f"{where}.image_url", "must be an object with a url")
        url = check_text(image.get("url"), f"{where}.image_url.url", self.request_id)
        # Passed on as written: the relay never fetches a URL itself.
        if not url.startswith(_IMAGE_URL_PREFIXES):
            raise self.fail(
                f"{where}.image_url.url",
                "must be a data:image/… URL or an http(s) URL",
            )
        checked = {"url": url}
        if "detail" in image:
            if image["detail"] not in _DETAILS:
                raise self.fail(
                    f"{where}.image_url.detail", "must be auto, low or high"
                )
            checked["detail"] = image["detail"]
        return checked

    def tool_calls(self, where: str, calls: Any) -> list[dict[str, Any]]:
        if not isinstance(calls, list):
            raise self.fail(f"{where}.tool_calls", "must be a list")
        checked = []
        for index, call in enumerate(calls):
            at = f"{where}.tool_calls[{index}]"
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                raise self.fail(at, "must be {id, type: 'function', function}")
            function = call["function"]
            arguments = check_text(
                function.get("arguments"), f"{at}.function.arguments", self.request_id
            )
            self.chars += len(arguments)
            checked.append(
                {
                    "id": check_text(call.get("id"), f"{at}.id", self.request_id),
                    "type": "function",
                    "function": {
                        "name": check_text(
                            function.get("name"), f"{at}.function.name", self.request_id
                        ),
                        "arguments": arguments,
                    },
                }
            )
        return checked


def _has_substance(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(part["type"] != "text" or part["text"].strip() for part in content or ())


def check_params(
    raw: Mapping[str, Any],
    limits: Limits,
    prefix: str = "",
    request_id: str | None = None,
) -> dict[str, Any]:
    """The request parameters to pass upstream, or ``ProtocolError`` naming the
    field (``prefix`` + its name)."""
    params: dict[str, Any] = {}
    for name, value in raw.items():
        where = prefix + name
        if name in OWNED_PARAMS:
            raise _invalid(where, "is set by the server, not the client", request_id)
        if name == "n":
            if value not in (None, 1) or isinstance(value, bool):
                raise _invalid(where, "only one choice is generated", request_id)
            continue
        if value is None:
            continue  # OpenAI's SDKs send null for "not given"
        if name in _TOKEN_CAPS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _invalid(where, "must be a whole number of 1 or more", request_id)
            if value > limits.max_tokens_cap:
                raise _invalid(where, f"at most {limits.max_tokens_cap}", request_id)
        elif name == "temperature" and (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not 0 <= value <= 2
        ):
            raise _invalid(where, "must be a number from 0 to 2", request_id)
        _check_strings(value, where, request_id)
        params[name] = value
    return params


# Deeper than any real schema (a JSON schema in response_format, tool parameters).
MAX_PARAM_DEPTH = 32


def _check_strings(
    value: Any, where: str, request_id: str | None, depth: int = 0
) -> None:
    """Every string in a parameter, however nested, is text that can be sent."""
    if depth > MAX_PARAM_DEPTH:
        raise _invalid(
            where, f"nested more than {MAX_PARAM_DEPTH} levels deep", request_id
        )
    if isinstance(value, str):
        check_text(value, where, request_id)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where, request_id)
            _check_strings(item, f"{where}.{key}", request_id, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{where}[{index}]", request_id, depth + 1)


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content or () if part.get("type") == "text")
