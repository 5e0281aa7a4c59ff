"""The checks the real service makes of a chat completion request: each refusal
is a 400 whose ``param`` names the field, as OpenAI words them."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

from .errors import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
# The content part types each role may send.
_PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
_DATA_URL = re.compile(r"data:image/(?:png|jpeg|jpg|gif|webp);base64,([A-Za-z0-9+/=]+)")
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# (low, high) of the numeric fields the service checks.
_RANGES = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "frequency_penalty": (-2, 2),
    "presence_penalty": (-2, 2),
}
_FORMATS = ("text", "json_object", "json_schema")


def check_request(body: Mapping[str, Any]) -> None:
    """Raise RequestError for the first field the real service would refuse."""
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter", "model")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.", "messages")
    for index, message in enumerate(messages):
        _check_message(index, message)
    _check_tool_answers(messages)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            raise RequestError(f"{name} must be a positive integer.", name)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        message = (
            "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        )
        raise RequestError(message, "stream_options")
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is not None and not (_is_number(value) and low <= value <= high):
            _invalid(name, f"expected a number from {low} to {high}, got {value!r}")
    if body.get("n") not in (None, 1):
        _invalid("n", "the test server makes one choice; n must be 1")
    if body.get("seed") is not None and not _is_int(body["seed"]):
        _invalid("seed", "expected an integer")
    _check_stop(body.get("stop"))
    _check_logprobs(body)
    _check_tools(body)
    _check_response_format(body.get("response_format"))


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        _invalid_type(where, "an object", message)
    role = message.get("role")
    if role not in ROLES:
        if not isinstance(role, str):
            raise RequestError(
                f"Missing required parameter: '{where}.role'.",
                f"{where}.role",
                "missing_required_parameter",
            )
        supported = ", ".join(f"'{r}'" for r in ROLES)
        _invalid(f"{where}.role", f"{role!r} is not one of {supported}")
    if message.get("name") is not None and not isinstance(message["name"], str):
        _invalid_type(f"{where}.name", "a string", message["name"])
    content = message.get("content")
    if content is None:
        if not (role == "assistant" and message.get("tool_calls")):
            raise RequestError(
                f"Missing required parameter: '{where}.content'.",
                f"{where}.content",
                "missing_required_parameter",
            )
    elif isinstance(content, list):
        if not content:
            _invalid(f"{where}.content", "empty array; expected at least one part")
        for at, part in enumerate(content):
            _check_part(f"{where}.content[{at}]", part, _PART_TYPES[role])
    elif not isinstance(content, str):
        _invalid_type(f"{where}.content", "a string or an array of parts", content)
    if "tool_calls" in message:
        if role != "assistant":
            _invalid(f"{where}.tool_calls", "only an assistant message makes calls")
        _check_calls(where, message["tool_calls"])
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise RequestError(
            f"Missing required parameter: '{where}.tool_call_id'.",
            f"{where}.tool_call_id",
            "missing_required_parameter",
        )


def _check_part(where: str, part: Any, types: tuple[str, ...]) -> None:
    if not isinstance(part, dict):
        _invalid_type(where, "an object", part)
    kind = part.get("type")
    if kind not in types:
        supported = ", ".join(f"'{t}'" for t in types)
        _invalid(f"{where}.type", f"{kind!r} is not one of {supported} here")
    if kind in ("text", "refusal"):
        if not isinstance(part.get(kind), str):
            _invalid_type(f"{where}.{kind}", "a string", part.get(kind))
        return
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise RequestError(
            f"Missing required parameter: '{where}.image_url.url'.",
            f"{where}.image_url.url",
            "missing_required_parameter",
        )
    if image.get("detail", "auto") not in ("auto", "low", "high"):
        _invalid(f"{where}.image_url.detail", "expected 'auto', 'low' or 'high'")
    if not _image_url_ok(image["url"]):
        _invalid(
            f"{where}.image_url.url",
            "expected a base64-encoded data URL with an image MIME type "
            "(e.g. 'data:image/png;base64,aW1n') or an http(s) URL",
        )


def _image_url_ok(url: str) -> bool:
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            return False
        try:
            return bool(base64.b64decode(match.group(1), validate=True))
        except binascii.Error:
            return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_calls(where: str, calls: Any) -> None:
    if not isinstance(calls, list) or not calls:
        _invalid_type(f"{where}.tool_calls", "a non-empty array", calls)
    for at, call in enumerate(calls):
        here = f"{where}.tool_calls[{at}]"
        if not isinstance(call, dict):
            _invalid_type(here, "an object", call)
        if call.get("type") != "function":
            _invalid(f"{here}.type", "expected 'function'")
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        for field, value in (
            ("id", call.get("id")),
            ("function.name", function.get("name")),
            ("function.arguments", function.get("arguments")),
        ):
            if not isinstance(value, str):
                raise RequestError(
                    f"Missing required parameter: '{here}.{field}'.",
                    f"{here}.{field}",
                    "missing_required_parameter",
                )


def _check_tool_answers(messages: list[dict[str, Any]]) -> None:
    """Each tool message answers a call of the assistant message just before it
    (tool messages between), and each such call is answered, as OpenAI wants."""
    open_ids: dict[str, None] = {}  # the calls not answered yet, in order
    asked_at: int | None = None  # where the assistant message with calls is
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            answered = message["tool_call_id"]
            if asked_at is None:
                raise RequestError(
                    "Invalid parameter: messages with role 'tool' must be a response "
                    "to a preceding message with 'tool_calls'.",
                    f"messages[{index}].role",
                )
            if answered not in open_ids:
                raise RequestError(
                    f"Invalid parameter: 'tool_call_id' of '{answered}' not found in "
                    f"'tool_calls' of previous message.",
                    f"messages[{index}].tool_call_id",
                )
            del open_ids[answered]
            continue
        _unanswered(open_ids, asked_at)
        asked_at, open_ids = None, {}
        if message["role"] == "assistant" and message.get("tool_calls"):
            asked_at = index
            open_ids = dict.fromkeys(call["id"] for call in message["tool_calls"])
    _unanswered(open_ids, asked_at)


def _unanswered(open_ids: dict[str, None], asked_at: int | None) -> None:
    if open_ids:
        raise RequestError(
            "An assistant message with 'tool_calls' must be followed by tool "
            "messages responding to each 'tool_call_id'. The following "
            f"tool_call_ids did not have response messages: {', '.join(open_ids)}",
            f"messages[{asked_at}].role",
        )


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        _invalid_type("stop", "a string or an array of strings", stop)
    if len(stop) > 4:
        _invalid("stop", "at most 4 stop sequences")


def _check_logprobs(body: Mapping[str, Any]) -> None:
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        _invalid_type("logprobs", "a boolean", logprobs)
    if top is None:
        return
    if not _is_int(top) or not 0 <= top <= 20:
        _invalid("top_logprobs", f"expected an integer from 0 to 20, got {top!r}")
    if logprobs is not True:
        _invalid("top_logprobs", "'logprobs' must be true to use 'top_logprobs'")


def _check_tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            _invalid_type("tools", "a non-empty array", tools)
        for at, tool in enumerate(tools):
            where = f"tools[{at}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                _invalid(f"{where}.type", "expected 'function'")
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str):
                raise RequestError(
                    f"Missing required parameter: '{where}.function.name'.",
                    f"{where}.function.name",
                    "missing_required_parameter",
                )
            if not _FUNCTION_NAME.fullmatch(name):
                _invalid(
                    f"{where}.function.name",
                    "expected a string that matches the pattern '^[a-zA-Z0-9_-]+$' "
                    "of at most 64 characters",
                )
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                _invalid_type(f"{where}.function.parameters", "an object", parameters)
    for name in ("tool_choice", "parallel_tool_calls"):
        if body.get(name) is not None and tools is None:
            _invalid(name, f"'{name}' is only allowed when 'tools' are specified")
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        pass
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name not in [tool["function"]["name"] for tool in tools]:
            _invalid("tool_choice", f"function {name!r} is not in 'tools'")
    else:
        _invalid("tool_choice", "expected 'none', 'auto', 'required' or a function")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        _invalid_type("parallel_tool_calls", "a boolean", parallel)


def _check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        _invalid_type("response_format", "an object", response_format)
    if response_format.get("type") not in _FORMATS:
        _invalid("response_format.type", "expected one of " + ", ".join(_FORMATS))
    if response_format["type"] != "json_schema":
        return
    schema = response_format.get("json_schema")
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        raise RequestError(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    if schema.get("schema") is not None and not isinstance(schema["schema"], dict):
        _invalid_type("response_format.json_schema.schema", "an object", schema)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid(param: str, problem: str) -> NoReturn:
    raise RequestError(f"Invalid '{param}': {problem}.", param, "invalid_value")


def _invalid_type(param: str, expected: str, got: Any) -> NoReturn:
    raise RequestError(
        f"Invalid type for '{param}': expected {expected}, "
        f"but got {type(got).__name__} instead.",
        param,
        "invalid_type",
    )
