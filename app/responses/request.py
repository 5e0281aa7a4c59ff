"""A ``POST /v1/responses`` body read into the relay's ``ChatRequest``.

The upstream is a Chat Completions server: the Responses API's input items and
fields are translated to the messages and parameters it takes. Every refusal is an
``invalid_request`` whose message names the field as the client wrote it
(``input[2].content[0].image_url``, ``tools[1].type``).

- ``input``: a string (one user message), or items: messages (roles ``user``,
  ``assistant``, ``system``, ``developer``; content a string or ``input_text``,
  ``output_text`` and, for the user, ``input_image`` parts), ``function_call`` items
  (an assistant message's ``tool_calls``; consecutive ones make one message, with
  the assistant text before them) and ``function_call_output`` items (``tool``
  messages). ``reasoning`` items are left out: the upstream takes no reasoning back.
- ``instructions``: a system message before the input.
- ``max_output_tokens`` → ``max_completion_tokens``; ``tools`` (function tools,
  flat) → Chat Completions' nested ones; ``tool_choice`` likewise; ``reasoning.effort``
  → ``reasoning_effort``; ``text.format`` → ``response_format``; ``text.verbosity`` →
  ``verbosity``; ``top_logprobs`` or ``include: ["message.output_text.logprobs"]`` →
  ``logprobs: true`` (and ``top_logprobs``).
- Read by the relay itself: ``model``, ``stream``, ``background``, ``store``,
  ``previous_response_id``, ``include``, ``stream_options``, ``truncation``
  (``disabled`` only).
- Refused, as nothing upstream can honour them: ``conversation``, ``prompt``,
  ``max_tool_calls``, ``context_management``, ``moderation``, ``truncation: "auto"``.
- Every other field (``temperature``, ``top_p``, ``parallel_tool_calls``,
  ``metadata``, ``user``, ``service_tier``, ``safety_identifier``,
  ``prompt_cache_key``, and any the upstream knows) goes upstream unchanged, as on
  ``/v1/chat/completions``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from ..chat_request import (
    ChatRequest,
    Limits,
    check_messages,
    check_offered,
    check_params,
    check_text,
)
from ..errors import ProtocolError

# Read here, not passed upstream.
_OWN = (
    "input",
    "instructions",
    "model",
    "stream",
    "stream_options",
    "background",
    "store",
    "previous_response_id",
    "include",
    "truncation",
)
_REFUSED = {
    "conversation": "conversations are not served here; send previous_response_id "
    "or the whole input",
    "prompt": "stored prompts are not served here; send instructions and input",
    "max_tool_calls": "is not served here",
    "context_management": "is not served here",
    "moderation": "is not served here",
}
_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_MESSAGE_KEYS = {"type", "role", "content", "id", "status", "phase"}
_CALL_KEYS = {"type", "call_id", "name", "arguments", "id", "status", "namespace"}
_OUTPUT_KEYS = {"type", "call_id", "output", "id", "status"}
_TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}
_TEXT_PARTS = ("input_text", "output_text")
_DETAILS = ("auto", "low", "high")
_LOGPROBS = "message.output_text.logprobs"


def new_response_id() -> str:
    """The id of a response the server does not keep (a kept one is ``resp_`` and
    its answer's message id)."""
    return "resp_" + secrets.token_urlsafe(16)


@dataclass
class Body:
    """A valid request: the relay's ``ChatRequest`` and how to answer it."""

    chat: ChatRequest
    stream: bool
    background: bool
    # Whether the server keeps the response's conversation (when it knows whose).
    store: bool
    previous_response_id: str | None
    # What the response object repeats of the request (OpenAI's fields).
    echo: dict[str, Any] = field(default_factory=dict)


def _invalid(where: str, message: str) -> ProtocolError:
    return ProtocolError("invalid_request", f"{where}: {message}")


def parse_body(data: Any, limits: Limits) -> Body:
    """Read a ``POST /v1/responses`` body, or raise ``ProtocolError`` naming the
    field (``model_not_found`` for a model that is not offered)."""
    if not isinstance(data, dict):
        raise _invalid("body", "must be a JSON object")
    for name, why in _REFUSED.items():
        if data.get(name) is not None:
            raise _invalid(name, why)
    stream = _flag(data, "stream")
    background = _flag(data, "background")
    store = _flag(data, "store", default=True)
    for name in ("stream_options", "reasoning", "text"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise _invalid(name, "must be an object")
    truncation = data.get("truncation")
    if truncation not in (None, "disabled"):
        raise _invalid(
            "truncation", "only 'disabled': the upstream's context is not cut here"
        )
    previous = data.get("previous_response_id")
    if previous is not None:
        check_text(previous, "previous_response_id")
    model = check_offered(data.get("model"), limits)
    include = _include(data.get("include"))
    messages = _Input(limits).messages(data.get("instructions"), data.get("input"))
    # The fields passed on, checked as the Chat Completions path checks them (their
    # strings, their depth), under the names the client wrote.
    params = check_params({k: v for k, v in data.items() if k not in _OWN}, limits)
    upstream = _translated(params, limits)
    if _LOGPROBS in include:
        upstream["logprobs"] = True
    chat = ChatRequest(
        id=new_response_id(),
        messages=messages,
        model=model,
        params=upstream,
        survives_disconnect=background,
    )
    repeated = echo(data, params, store, background)
    return Body(chat, stream, background, store, previous, repeated)


def _flag(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(name, "must be true or false")
    return value


def _include(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid("include", "must be a list of strings")
    return value


# -- the parameters ------------------------------------------------------------------


def _translated(params: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The Chat Completions parameters of the Responses fields in ``params``."""
    upstream: dict[str, Any] = {}
    for name, value in params.items():
        if name == "max_output_tokens":
            upstream["max_completion_tokens"] = _token_cap(value, limits)
        elif name == "tools":
            upstream["tools"] = _tools(value)
        elif name == "tool_choice":
            upstream["tool_choice"] = _tool_choice(value)
        elif name == "reasoning":
            effort = _reasoning_effort(value)
            if effort is not None:
                upstream["reasoning_effort"] = effort
        elif name == "text":
            upstream.update(_text(value))
        elif name == "top_logprobs":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _invalid(name, "must be a whole number from 0 to 20")
            if not 0 <= value <= 20:
                raise _invalid(name, "must be a whole number from 0 to 20")
            upstream["logprobs"] = True
            upstream["top_logprobs"] = value
        else:
            upstream[name] = value
    return upstream


def _token_cap(value: Any, limits: Limits) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid("max_output_tokens", "must be a whole number of 1 or more")
    if value > limits.max_tokens_cap:
        raise _invalid("max_output_tokens", f"at most {limits.max_tokens_cap}")
    return value


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _invalid("tools", "must be a list of function tools")
    tools = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _invalid(where, "must be an object")
        if tool.get("type") != "function":
            raise _invalid(
                f"{where}.type",
                f"only function tools are served here, not {tool.get('type')!r}",
            )
        for key in tool:
            if key not in _TOOL_KEYS:
                raise _invalid(
                    f"{where}.{key}",
                    "is not served here (type, name, description, parameters, "
                    "strict are)",
                )
        function: dict[str, Any] = {
            "name": check_text(tool.get("name"), f"{where}.name")
        }
        if tool.get("description") is not None:
            function["description"] = check_text(
                tool["description"], f"{where}.description"
            )
        if tool.get("parameters") is not None:
            if not isinstance(tool["parameters"], dict):
                raise _invalid(f"{where}.parameters", "must be a JSON schema object")
            function["parameters"] = tool["parameters"]
        if tool.get("strict") is not None:
            if not isinstance(tool["strict"], bool):
                raise _invalid(f"{where}.strict", "must be true or false")
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> Any:
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = check_text(value.get("name"), "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise _invalid(
        "tool_choice",
        "must be 'auto', 'none', 'required' or {type: 'function', name}",
    )


def _reasoning_effort(value: dict[str, Any]) -> str | None:
    for key in value:
        if key not in ("effort", "summary", "generate_summary"):
            raise _invalid(f"reasoning.{key}", "is not a reasoning field")
    effort = value.get("effort")
    return None if effort is None else check_text(effort, "reasoning.effort")


def _text(value: dict[str, Any]) -> dict[str, Any]:
    upstream: dict[str, Any] = {}
    for key in value:
        if key not in ("format", "verbosity"):
            raise _invalid(f"text.{key}", "is not a text field (format, verbosity)")
    if value.get("verbosity") is not None:
        upstream["verbosity"] = check_text(value["verbosity"], "text.verbosity")
    fmt = value.get("format")
    if fmt is None:
        return upstream
    if not isinstance(fmt, dict):
        raise _invalid("text.format", "must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return upstream
    if kind == "json_object":
        upstream["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema: dict[str, Any] = {
            "name": check_text(fmt.get("name"), "text.format.name")
        }
        if not isinstance(fmt.get("schema"), dict):
            raise _invalid("text.format.schema", "must be a JSON schema object")
        schema["schema"] = fmt["schema"]
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        upstream["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise _invalid("text.format.type", "must be text, json_object or json_schema")
    return upstream


def echo(
    data: dict[str, Any], params: dict[str, Any], store: bool, background: bool
) -> dict[str, Any]:
    """The request's fields as OpenAI's response object repeats them."""
    reasoning = params.get("reasoning") or {}
    text = params.get("text") or {}
    return {
        "background": background,
        # Set by the relay when it keeps the response in a conversation of its own.
        "conversation": None,
        "instructions": data.get("instructions"),
        "max_output_tokens": params.get("max_output_tokens"),
        "metadata": params.get("metadata") or {},
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "previous_response_id": data.get("previous_response_id"),
        "reasoning": {
            "effort": reasoning.get("effort"),
            "summary": reasoning.get("summary"),
        },
        "service_tier": params.get("service_tier"),
        "store": store,
        "temperature": params.get("temperature"),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": params.get("tool_choice", "auto"),
        "tools": params.get("tools") or [],
        "top_logprobs": params.get("top_logprobs"),
        "top_p": params.get("top_p"),
        "truncation": "disabled",
        "user": params.get("user"),
    }


# -- the input -----------------------------------------------------------------------


class _Input:
    """The input items as Chat Completions messages, each remembered with the
    field it came from, so that a check on the whole names it."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.built: list[dict[str, Any]] = []
        self.origins: list[str] = []

    def messages(self, instructions: Any, raw: Any) -> list[dict[str, Any]]:
        if instructions is not None:
            check_text(instructions, "instructions")
            if not self.limits.client_system_messages:
                raise _invalid(
                    "instructions", "not allowed; the server sets the system prompt"
                )
            self._add({"role": "system", "content": instructions}, "instructions")
        if raw is None:
            raise _invalid("input", "field required")
        if isinstance(raw, str):
            if not raw.strip():
                raise _invalid("input", "must not be empty")
            self._add({"role": "user", "content": raw}, "input")
        elif isinstance(raw, list):
            if not raw:
                raise _invalid("input", "must hold at least one item")
            for index, item in enumerate(raw):
                self._item(f"input[{index}]", item)
        else:
            raise _invalid("input", "must be a string or a list of input items")
        last = self.built[-1] if self.built else None
        if last is None or last["role"] not in ("user", "tool"):
            raise _invalid(
                "input",
                "the last item must be a user message or a function_call_output",
            )
        try:
            return check_messages(self.built, self.limits)
        except ProtocolError as exc:
            raise self._renamed(exc) from None

    def _add(self, message: dict[str, Any], origin: str) -> None:
        self.built.append(message)
        self.origins.append(origin)

    def _renamed(self, exc: ProtocolError) -> ProtocolError:
        """``exc`` naming the input field a message came from."""
        where, _, rest = exc.message.partition(": ")
        if where == "messages":
            return _invalid("input", rest)
        head, _, tail = where.partition("]")
        if head.startswith("messages[") and head[9:].isdigit():
            origin = self.origins[int(head[9:])]
            return _invalid(origin + tail, rest)
        return exc

    def _item(self, where: str, item: Any) -> None:
        if not isinstance(item, dict):
            raise _invalid(where, "must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            self._message(where, item)
        elif kind == "function_call":
            self._call(where, item)
        elif kind == "function_call_output":
            self._output(where, item)
        elif kind == "reasoning":
            pass  # the upstream takes no reasoning back
        elif kind == "item_reference":
            raise _invalid(
                f"{where}.type",
                "item references are not served here; send the item itself",
            )
        else:
            raise _invalid(
                f"{where}.type",
                "must be message, function_call, function_call_output or reasoning",
            )

    def _message(self, where: str, item: dict[str, Any]) -> None:
        _known(where, item, _MESSAGE_KEYS)
        role = item.get("role")
        if role not in _MESSAGE_ROLES:
            raise _invalid(
                f"{where}.role", "must be one of " + ", ".join(_MESSAGE_ROLES)
            )
        if role in ("system", "developer") and not self.limits.client_system_messages:
            raise _invalid(
                f"{where}.role",
                f"{role!r} is not allowed; the server sets the system prompt",
            )
        content = item.get("content")
        if isinstance(content, str):
            check_text(content, f"{where}.content")
        elif isinstance(content, list):
            content = [
                self._part(f"{where}.content[{i}]", role, part)
                for i, part in enumerate(content)
            ]
        else:
            raise _invalid(f"{where}.content", "must be a string or a list of parts")
        if role == "user" and not _has_substance(content):
            raise _invalid(f"{where}.content", "must not be empty")
        if role != "user" and isinstance(content, list):
            # Text alone: as a string, which every Chat Completions server takes.
            content = "".join(part["text"] for part in content)
        self._add({"role": role, "content": content}, where)

    def _part(self, where: str, role: str, part: Any) -> dict[str, Any]:
        if not isinstance(part, dict):
            raise _invalid(where, "must be an object")
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            return {
                "type": "text",
                "text": check_text(part.get("text"), f"{where}.text"),
            }
        if kind == "input_image":
            if role != "user":
                raise _invalid(f"{where}.type", "images belong in user messages")
            if part.get("file_id") is not None:
                raise _invalid(
                    f"{where}.file_id", "files are not served here; send image_url"
                )
            url = check_text(part.get("image_url"), f"{where}.image_url")
            if not url.startswith(("data:image/", "https://", "http://")):
                raise _invalid(
                    f"{where}.image_url",
                    "must be a data:image/… URL or an http(s) URL",
                )
            image = {"url": url}
            detail = part.get("detail")
            if detail is not None:
                if detail not in _DETAILS:
                    raise _invalid(f"{where}.detail", "must be auto, low or high")
                image["detail"] = detail
            return {"type": "image_url", "image_url": image}
        raise _invalid(
            f"{where}.type",
            "must be input_text, output_text or input_image (files and audio are "
            "not served here)",
        )

    def _call(self, where: str, item: dict[str, Any]) -> None:
        _known(where, item, _CALL_KEYS)
        call = {
            "id": check_text(item.get("call_id"), f"{where}.call_id"),
            "type": "function",
            "function": {
                "name": check_text(item.get("name"), f"{where}.name"),
                "arguments": check_text(item.get("arguments"), f"{where}.arguments"),
            },
        }
        last = self.built[-1] if self.built else None
        # One assistant turn: its text, then its calls, make one message.
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if not _has_substance(last["content"]):
                last["content"] = None
            return
        self._add({"role": "assistant", "content": None, "tool_calls": [call]}, where)

    def _output(self, where: str, item: dict[str, Any]) -> None:
        _known(where, item, _OUTPUT_KEYS)
        call_id = check_text(item.get("call_id"), f"{where}.call_id")
        output = item.get("output")
        if isinstance(output, str):
            content: Any = output
        elif isinstance(output, list):
            content = []
            for index, part in enumerate(output):
                at = f"{where}.output[{index}]"
                if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
                    raise _invalid(
                        f"{at}.type", "only input_text parts are served here"
                    )
                content.append(
                    {"type": "text", "text": check_text(part.get("text"), f"{at}.text")}
                )
        else:
            raise _invalid(f"{where}.output", "must be a string or a list of parts")
        self._add({"role": "tool", "tool_call_id": call_id, "content": content}, where)


def _known(where: str, item: dict[str, Any], keys: set[str]) -> None:
    for key in item:
        if key not in keys:
            raise _invalid(
                f"{where}.{key}",
                "is not a field of this item (" + ", ".join(sorted(keys)) + ")",
            )


def _has_substance(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(part["type"] != "text" or part["text"].strip() for part in content or ())
