"""The relay's events as the Responses API streams them, and the response object.

``ResponseEvents`` turns one stream's chunks, in ``seq`` order, and its end into
OpenAI's server-sent events, each with the next ``sequence_number``: the same chunks
give the same events, the same ids and the same numbers every time, so that a
resume (``starting_after=N``) replays the kept chunks through a new one and skips
what the client holds. The response object (``response``) is built from the same
state, at any point of the stream.

The events, in order: ``response.created`` and ``response.in_progress``; per
output item ``response.output_item.added``, its parts and deltas, then
``response.output_item.done``:

- answer text: a ``message`` item, ``response.content_part.added`` (``output_text``),
  ``response.output_text.delta`` …, ``response.output_text.done``,
  ``response.content_part.done``; a refusal is a ``refusal`` part of the same
  message, with ``response.refusal.delta`` / ``.done``;
- reasoning text (the upstream's ``reasoning_content``): a ``reasoning`` item whose
  ``reasoning_text`` part streams as ``response.reasoning_text.delta`` / ``.done``;
- a tool call: a ``function_call`` item, ``response.function_call_arguments.delta``
  …, ``response.function_call_arguments.done``;

then the end: ``response.completed`` (with ``usage``); ``response.incomplete`` for
``finish_reason`` ``length`` (``incomplete_details.reason: max_output_tokens``),
``content_filter`` (reason ``content_filter``) and ``cancelled`` (status
``cancelled``); ``response.failed`` with ``error: {code, message}`` in this server's
codes.
"""

from __future__ import annotations

import json
from typing import Any

from ..providers.base import ANSWER, REASONING, TOOL_CALL, Piece

Event = dict[str, Any]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def skeleton(
    response_id: str, created: int, model: str, echo: dict[str, Any]
) -> dict[str, Any]:
    """A response object before its output: in progress, nothing yet."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "usage": None,
        **echo,
    }


def encode(event: Event) -> bytes:
    """One event as server-sent event text: its type, then its JSON."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def usage(done: dict[str, Any]) -> dict[str, Any]:
    """A ``done`` event's usage in the Responses API's shape."""
    counted = done["usage"]
    return {
        "input_tokens": counted["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": counted.get("cached_tokens", 0)},
        "output_tokens": counted["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": counted["reasoning_tokens"]},
        "total_tokens": counted["total_tokens"],
    }


class _Item:
    """One output item as it streams: its text kept in pieces until it is read."""

    __slots__ = ("kind", "id", "index", "status", "parts", "call_id", "name", "args")

    def __init__(self, kind: str, item_id: str, index: int):
        self.kind = kind
        self.id = item_id
        self.index = index
        self.status = "in_progress"
        # Content parts: [type, text pieces, log probabilities].
        self.parts: list[tuple[str, list[str], list[Any]]] = []
        self.call_id = ""
        self.name = ""
        self.args: list[str] = []

    def part(self, index: int) -> dict[str, Any]:
        kind, texts, logprobs = self.parts[index]
        text = "".join(texts)
        if kind == "output_text":
            return {
                "type": kind,
                "text": text,
                "annotations": [],
                "logprobs": list(logprobs),
            }
        if kind == "refusal":
            return {"type": kind, "refusal": text}
        return {"type": kind, "text": text}

    def view(self) -> dict[str, Any]:
        """The item as the response object and its events give it."""
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "status": self.status,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": "".join(self.args),
            }
        content = [self.part(index) for index in range(len(self.parts))]
        if self.kind == "reasoning":
            return {
                "id": self.id,
                "type": "reasoning",
                "status": self.status,
                "summary": [],
                "content": content,
            }
        return {
            "id": self.id,
            "type": "message",
            "status": self.status,
            "role": "assistant",
            "content": content,
        }


class ResponseEvents:
    """One response's events, built from its chunks and its end, in order."""

    def __init__(self, response: dict[str, Any]):
        self.response = response
        self.id: str = response["id"]
        # Item ids are the response's own, numbered: the same on every replay.
        self._base = self.id.removeprefix("resp_")
        self.sequence = 0
        self.items: list[_Item] = []
        # The message or reasoning item open now, if any; tool calls by index.
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._open_calls: list[_Item] = []
        self.ended = False

    # -- the events --------------------------------------------------------------

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=self.snapshot()),
            self._event("response.in_progress", response=self.snapshot()),
        ]

    def chunk(self, piece: Piece) -> list[Event]:
        """The events of one chunk's piece."""
        out: list[Event] = []
        kind = piece[0]
        if kind == TOOL_CALL:
            self._close_open(out, "completed")
            self._call(piece[1], out)
        elif kind == REASONING:
            self._close_calls(out, "completed")
            self._reasoning(piece[1], out)
        else:
            self._close_calls(out, "completed")
            self._text(kind, piece[1], piece[2] if len(piece) > 2 else None, out)
        return out

    def end(self, event: str, payload: dict[str, Any]) -> list[Event]:
        """The events that close what is open, then the terminal one."""
        out: list[Event] = []
        status, final = self._final(event, payload)
        items = "completed" if status == "completed" else "incomplete"
        self._close_open(out, items)
        self._close_calls(out, items)
        self.response = final
        self.ended = True
        kind = {"completed": "response.completed", "failed": "response.failed"}
        out.append(
            self._event(
                kind.get(status, "response.incomplete"), response=self.snapshot()
            )
        )
        return out

    def snapshot(self) -> dict[str, Any]:
        """The response object now: its output so far (or whole, once ended)."""
        return {**self.response, "output": [item.view() for item in self.items]}

    def whole(self, pieces: list[Piece], terminal: tuple[str, dict] | None) -> dict:
        """The response object of these chunks and this end (None: still going)."""
        for piece in pieces:
            self.chunk(piece)
        if terminal is not None:
            self.end(*terminal)
        return self.snapshot()

    # -- text, reasoning, calls --------------------------------------------------

    def _text(
        self, kind: str, text: str, logprobs: list[Any] | None, out: list[Event]
    ) -> None:
        item = self._open
        if item is None or item.kind != "message":
            self._close_open(out, "completed")
            item = self._add("message", "msg", out)
        part = "output_text" if kind == ANSWER else "refusal"
        if not item.parts or item.parts[-1][0] != part:
            self._close_part(item, out)
            self._open_part(item, part, out)
        content_index = len(item.parts) - 1
        _, texts, kept = item.parts[content_index]
        texts.append(text)
        where = {
            "item_id": item.id,
            "output_index": item.index,
            "content_index": content_index,
        }
        if part == "refusal":
            out.append(self._event("response.refusal.delta", **where, delta=text))
            return
        if logprobs:
            kept.extend(logprobs)
        out.append(
            self._event(
                "response.output_text.delta",
                **where,
                delta=text,
                logprobs=logprobs or [],
            )
        )

    def _reasoning(self, text: str, out: list[Event]) -> None:
        item = self._open
        if item is None or item.kind != "reasoning":
            self._close_open(out, "completed")
            item = self._add("reasoning", "rs", out)
            self._open_part(item, "reasoning_text", out)
        item.parts[0][1].append(text)
        out.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                delta=text,
            )
        )

    def _call(self, fragment: dict[str, Any], out: list[Event]) -> None:
        item = self._calls.get(fragment["index"])
        if item is None:
            index = len(self.items)
            item = _Item("function_call", f"fc_{self._base}{index}", index)
            item.call_id = fragment.get("id") or f"call_{self._base}{index}"
            item.name = fragment.get("name", "")
            self.items.append(item)
            self._calls[fragment["index"]] = item
            self._open_calls.append(item)
            out.append(
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item=item.view(),
                )
            )
        elif "name" in fragment and not item.name:
            item.name = fragment["name"]
        if fragment["arguments"]:
            item.args.append(fragment["arguments"])
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.index,
                    delta=fragment["arguments"],
                )
            )

    # -- opening and closing -----------------------------------------------------

    def _add(self, kind: str, prefix: str, out: list[Event]) -> _Item:
        index = len(self.items)
        item = _Item(kind, f"{prefix}_{self._base}{index}", index)
        self.items.append(item)
        self._open = item
        out.append(
            self._event(
                "response.output_item.added", output_index=index, item=item.view()
            )
        )
        return item

    def _open_part(self, item: _Item, kind: str, out: list[Event]) -> None:
        item.parts.append((kind, [], []))
        index = len(item.parts) - 1
        out.append(
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=index,
                part=item.part(index),
            )
        )

    def _close_part(self, item: _Item, out: list[Event]) -> None:
        if not item.parts:
            return
        index = len(item.parts) - 1
        part = item.part(index)
        where = {"item_id": item.id, "output_index": item.index, "content_index": index}
        if part["type"] == "output_text":
            out.append(
                self._event(
                    "response.output_text.done",
                    **where,
                    text=part["text"],
                    logprobs=part["logprobs"],
                )
            )
        elif part["type"] == "refusal":
            out.append(
                self._event("response.refusal.done", **where, refusal=part["refusal"])
            )
        else:
            out.append(
                self._event("response.reasoning_text.done", **where, text=part["text"])
            )
        out.append(self._event("response.content_part.done", **where, part=part))

    def _close_open(self, out: list[Event], status: str) -> None:
        item = self._open
        if item is None:
            return
        self._close_part(item, out)
        self._done(item, status, out)
        self._open = None

    def _close_calls(self, out: list[Event], status: str) -> None:
        for item in self._open_calls:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    name=item.name,
                    arguments="".join(item.args),
                )
            )
            self._done(item, status, out)
        self._open_calls = []

    def _done(self, item: _Item, status: str, out: list[Event]) -> None:
        item.status = status
        out.append(
            self._event(
                "response.output_item.done", output_index=item.index, item=item.view()
            )
        )

    def _final(self, event: str, payload: dict[str, Any]) -> tuple[str, dict]:
        """The status the end gives, and the response object's fields then."""
        final = dict(self.response)
        if event == "error":
            final["status"] = "failed"
            final["error"] = {"code": payload["code"], "message": payload["message"]}
            return "failed", final
        reason = payload["finish_reason"]
        final["model"] = payload.get("model") or final["model"]
        final["usage"] = usage(payload) if payload.get("usage") else None
        if reason == "cancelled":
            final["status"] = "cancelled"
        elif reason in _INCOMPLETE:
            final["status"] = "incomplete"
            final["incomplete_details"] = {"reason": _INCOMPLETE[reason]}
        else:
            final["status"] = "completed"
        return final["status"], final

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event
