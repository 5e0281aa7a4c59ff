"""The ``[[name:value]]`` directives of a prompt (listed in the package docstring)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")
REASONING_FIELDS = ("reasoning_content", "reasoning", "think")
TOOL_STYLES = ("openai", "ollama", "batched", "split_utf8")

DIRECTIVE = re.compile(r"\[\[\s*([A-Za-z_]+)\s*(?::([^\]]*))?\]\]")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    tool_calls: int | None = None
    tool_style: str = "openai"
    refusal: bool = False
    cached: int | None = None
    reject_param: tuple[str, ...] = ()  # every [[reject_param:NAME]] given


_FLAGS = frozenset(
    ("no_usage", "usage_in_choice", "null_choices", "empty_choices")
    + ("empty_deltas", "keepalive", "split_think", "refusal")
)
_NUMBERS = frozenset(
    ("status", "error_after", "stall_after", "close_after", "tokens", "ttft", "tps")
    + ("reasoning", "tool_calls", "cached")
)
_CHOICES = {
    "finish": FINISH_REASONS,
    "reasoning_field": REASONING_FIELDS,
    "tool_style": TOOL_STYLES,
}
_TEXTS = frozenset(("reply",))
_NAMES = frozenset(("reject_param",))
_VALUED = _NUMBERS | _TEXTS | _NAMES | frozenset(_CHOICES)


class DirectiveError(ValueError):
    """A directive in the prompt is unknown or has a bad value."""


def parse_directives(text: str) -> tuple[Directives, str]:
    """Return the directives found in `text` and the text without them."""
    directives = Directives()
    for match in DIRECTIVE.finditer(text):
        name, raw = match.group(1).lower(), match.group(2)
        value = _directive_value(
            name, None if raw is None else raw.strip(), match.group(0)
        )
        if name in _NAMES:
            value = (*getattr(directives, name), value)
        setattr(directives, name, value)
    if directives.split_think and directives.reasoning_field != "think":
        raise DirectiveError("[[split_think]] needs [[reasoning_field:think]]")
    return directives, DIRECTIVE.sub("", text).strip()


def _directive_value(name: str, value: str | None, source: str) -> Any:
    if name in _FLAGS:
        if value is not None:
            raise DirectiveError(f"{source}: this directive takes no value")
        return True
    if name not in _VALUED:
        raise DirectiveError(f"unknown test-server directive {source}")
    if value is None:
        raise DirectiveError(f"{source}: this directive needs a value")
    if name in _TEXTS:
        try:
            return base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise DirectiveError(f"{source}: not base64 of UTF-8 text") from None
    if name in _NAMES:
        if not _PARAM_NAME.fullmatch(value):
            raise DirectiveError(f"{source}: not a request field name")
        return value
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
