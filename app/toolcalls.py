"""Tool calls as they stream: the upstream's ``delta.tool_calls`` fragments read
into one shape, joined while coalescing, and assembled at the end.

A fragment is what a ``chunk`` event of kind ``tool_call`` carries:
``{index, id?, name?, arguments}``. ``index`` says which call; the first fragment
of a call brings its ``id`` and ``name``; ``arguments`` is a piece of the call's
arguments text, and a call's pieces, in order, concatenate to the whole.

Servers differ in how they stream calls, and ``ToolCallReader`` evens them out:
OpenAI sends the id and name once, then argument pieces under the same index;
some servers repeat the id (and name) on every piece; Ollama sends each call whole,
every one under index 0 with an id of its own, so a new id under an index already
taken is a new call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

ToolCallFragment = dict[str, Any]


class _Call:
    __slots__ = ("index", "id", "named")

    def __init__(self, index: int, call_id: str | None, named: bool):
        self.index = index
        self.id = call_id
        self.named = named


class ToolCallReader:
    """One stream's tool calls so far: maps the upstream's indices and ids to the
    calls' own indices, 0, 1, … in the order the calls began."""

    def __init__(self) -> None:
        # The upstream's index -> the call it names now.
        self._current: dict[Any, _Call] = {}
        self._calls = 0

    def read(self, entries: Any) -> list[ToolCallFragment]:
        """The fragments of one delta's ``tool_calls`` list (malformed entries are
        skipped: a model's stream is not the client's fault)."""
        fragments = []
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            function = entry.get("function")
            function = function if isinstance(function, dict) else {}
            call_id = _text(entry.get("id"))
            name = _text(function.get("name"))
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                # A few servers send the arguments as a parsed object.
                arguments = json.dumps(arguments, ensure_ascii=False)
            arguments = arguments if isinstance(arguments, str) else ""
            upstream_index = entry.get("index", 0)
            call = self._current.get(upstream_index)
            fragment: ToolCallFragment
            if call is None or (call_id and call.id and call_id != call.id):
                call = _Call(self._calls, call_id, bool(name))
                self._calls += 1
                self._current[upstream_index] = call
                fragment = {"index": call.index}
                if call_id:
                    fragment["id"] = call_id
                if name:
                    fragment["name"] = name
            else:
                # A later piece of the same call: a repeated id or name is dropped,
                # one that comes late is kept.
                fragment = {"index": call.index}
                if call_id and call.id is None:
                    call.id = fragment["id"] = call_id
                if name and not call.named:
                    call.named = True
                    fragment["name"] = name
            fragment["arguments"] = arguments
            if len(fragment) > 2 or arguments:
                fragments.append(fragment)
        return fragments


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def joined(
    first: ToolCallFragment, second: ToolCallFragment
) -> ToolCallFragment | None:
    """One fragment for two consecutive ones of the same call, or None when the
    second begins a call of its own."""
    if first["index"] != second["index"] or "id" in second or "name" in second:
        return None
    return {**first, "arguments": first["arguments"] + second["arguments"]}


def assemble(fragments: Iterable[ToolCallFragment]) -> list[dict[str, Any]]:
    """The whole calls, in OpenAI's message shape, from their fragments in order."""
    calls: dict[int, dict[str, Any]] = {}
    for fragment in fragments:
        call = calls.setdefault(
            fragment["index"],
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if "id" in fragment:
            call["id"] = fragment["id"]
        if "name" in fragment:
            call["function"]["name"] = fragment["name"]
        call["function"]["arguments"] += fragment["arguments"]
    return [calls[index] for index in sorted(calls)]
