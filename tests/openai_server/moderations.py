"""``POST /v1/moderations``: OpenAI's moderation endpoint, steered by what it checks.

Each input (a string, or a ``{"type": "text", "text"}`` part; image parts are
accepted and allowed) is judged by directives in its own text, written
``{{name:value}}`` so that a chat reply carries them unchanged (``[[...]]`` is the
chat endpoint's own syntax, read from the prompt):

    {{flag}}            this input is flagged, as harassment
    {{flag:CATEGORY}}   … as CATEGORY, one of OpenAI's (``CATEGORIES``)
    {{fail}}            the whole request answers HTTP 500
    {{fail:STATUS}}     … answers HTTP STATUS (400-599)
    {{slow:S}}          the whole request answers after S seconds

Any other input is allowed. An unknown or malformed directive is answered with HTTP
400. Each request is recorded (``GET /_moderations``): ``n``, ``model``, ``input``
(the texts, in order), ``status``, ``started_at``, ``ended_at`` and ``outcome``
(``answered``, ``error_status``, ``client_closed`` while a slow answer waited).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError

DEFAULT_MODEL = "omni-moderation-latest"
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
MODERATION_DIRECTIVE = re.compile(r"\{\{\s*([A-Za-z_]+)\s*(?::([^}]*))?\}\}")


@dataclass
class Plan:
    """How to answer one moderation request."""

    texts: list[str]
    flagged: list[tuple[str, ...]] = field(default_factory=list)
    fail: int | None = None
    delay: float = 0.0


def plan_moderation(body: Any) -> Plan:
    """Read a request body; raise RequestError as the real service refuses one."""
    if not isinstance(body, dict):
        raise RequestError("We could not parse the JSON body of your request.")
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise RequestError("model must be a string", "model")
    plan = Plan(_texts(body.get("input")))
    for text in plan.texts:
        categories: list[str] = []
        for match in MODERATION_DIRECTIVE.finditer(text):
            name, value = match.group(1).lower(), match.group(2)
            value = None if value is None else value.strip()
            if name == "flag":
                category = value or "harassment"
                if category not in CATEGORIES:
                    raise RequestError(f"{match.group(0)}: unknown category", "input")
                categories.append(category)
            elif name == "fail":
                plan.fail = _number(match.group(0), value or "500", int)
                if not 400 <= plan.fail <= 599:
                    raise RequestError(f"{match.group(0)}: out of range", "input")
            elif name == "slow":
                plan.delay = max(plan.delay, _number(match.group(0), value, float))
            else:
                raise RequestError(f"unknown directive {match.group(0)}", "input")
        plan.flagged.append(tuple(categories))
    return plan


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise RequestError("input must be a string or a non-empty array", "input")
    texts = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            if not isinstance(item.get("text"), str):
                raise RequestError("text must be a string", f"input[{index}].text")
            texts.append(item["text"])
        elif isinstance(item, dict) and item.get("type") == "image_url":
            texts.append("")
        else:
            raise RequestError("each input must be text or a part", f"input[{index}]")
    return texts


def _number(source: str, value: str | None, kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise RequestError(f"{source}: not a number", "input") from None
    if number < 0:
        raise RequestError(f"{source}: out of range", "input")
    return number


def moderation_response(plan: Plan, model: str) -> dict[str, Any]:
    """OpenAI's ``ModerationCreateResponse`` for ``plan``'s verdicts."""
    return {
        "id": "modr-" + secrets.token_hex(12),
        "model": model,
        "results": [_result(categories) for categories in plan.flagged],
    }


def _result(categories: tuple[str, ...]) -> dict[str, Any]:
    return {
        "flagged": bool(categories),
        "categories": {name: name in categories for name in CATEGORIES},
        "category_scores": {
            name: 0.98 if name in categories else 0.0001 for name in CATEGORIES
        },
        "category_applied_input_types": {name: ["text"] for name in CATEGORIES},
    }
