"""Tool calls: which ones the model makes, and how each server style streams them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .replies import conversation_key, filler, quoted_words

# Argument fragments of the streamed styles are this many characters long, as
# OpenAI's are a token or two: most cut inside a JSON string.
FRAGMENT = 5
_CITIES = ("Zürich", "東京", "São Paulo", "Kraków")


def build_tool_calls(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    n: int,
    seed: int | None = None,
) -> list[dict[str, str]]:
    """The `n` calls [[tool_calls:N]] makes: ``{"id", "name", "arguments"}`` each.

    Call i names ``tools[i % len(tools)]``'s function (``tool_{i}`` without tools);
    its id is ``call_`` and 24 hex digits of a hash of the conversation; its
    arguments are a JSON object text holding non-ASCII cities ("Zürich", "東京"
    …), the quoted start of the last user message and a nested string with an
    escaped quote.
    """
    key = conversation_key(messages, seed)
    quoted = quoted_words(messages)
    words = filler(b"tools " + key, max(n, 0))
    names = [tool["function"]["name"] for tool in tools or ()]
    calls = []
    for i in range(max(n, 0)):
        name = names[i % len(names)] if names else f"tool_{i}"
        digest = hashlib.sha256(b"%d " % i + key).hexdigest()[:24]
        arguments = {
            "city": _CITIES[i % len(_CITIES)],
            "cities": [_CITIES[(i + 2) % len(_CITIES)], "東京"],
            "query": {"text": quoted, "note": f'say "{words[i]}" twice'},
            "index": i,
        }
        calls.append(
            {
                "id": "call_" + digest,
                "name": name,
                "arguments": json.dumps(arguments, ensure_ascii=False),
            }
        )
    return calls


def fragments(arguments: str) -> list[str]:
    """A call's arguments as the streamed styles cut them."""
    return [arguments[at : at + FRAGMENT] for at in range(0, len(arguments), FRAGMENT)]


def tool_tokens(calls: Sequence[Mapping[str, str]]) -> int:
    """What the calls count in usage: one for each call's name, one a fragment."""
    return sum(1 + len(fragments(call["arguments"])) for call in calls)


def tool_call_deltas(
    calls: Sequence[Mapping[str, str]], style: str
) -> list[list[dict[str, Any]]]:
    """The ``delta.tool_calls`` list of each chunk that streams `calls` in `style`."""
    if style == "ollama":  # each call whole, all of them at index 0
        return [[_opening(0, call, call["arguments"])] for call in calls]
    pieces = [fragments(call["arguments"]) for call in calls]
    if style == "batched":
        chunks = [[_opening(i, call, "") for i, call in enumerate(calls)]]
        for step in range(max(map(len, pieces), default=0)):
            # Every call with a fragment left, the order turned each time.
            order = (
                range(len(calls)) if step % 2 == 0 else range(len(calls) - 1, -1, -1)
            )
            chunks.append(
                [_more(i, pieces[i][step]) for i in order if step < len(pieces[i])]
            )
        return chunks
    chunks = []
    for i, call in enumerate(calls):  # openai, split_utf8: one call after another
        chunks.append([_opening(i, call, "")])
        chunks += [[_more(i, piece)] for piece in pieces[i]]
    return chunks


def _opening(index: int, call: Mapping[str, str], arguments: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _more(index: int, arguments: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


def message_tool_calls(calls: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The calls as a whole completion's ``message.tool_calls``."""
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in calls
    ]
