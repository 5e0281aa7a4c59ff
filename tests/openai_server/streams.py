"""Streamed completions and their pacer: SSE events, each in its own HTTP chunk,
written on an absolute schedule by one timer for every stream of the process."""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import re
import time
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .completion import (
    SYSTEM_FINGERPRINT,
    Completion,
    logprobs_of,
    think_pieces,
    usage,
)
from .errors import error_body
from .http11 import LAST_CHUNK, http_chunk, response_head
from .tools import tool_call_deltas

if TYPE_CHECKING:
    from .http11 import Connection

OPEN_OUTCOMES = ("streaming", "stalled")
# While chunks are due faster than this, the pacer wakes this often and writes
# every one due: a wake per chunk would cost more than the chunk.
PACER_TICK = 0.002
# How many chunks one stream writes at once (with --tps 0) before letting the
# others, and the socket, go on.
WRITE_BATCH = 256

_COMPACT = json.JSONEncoder(separators=(",", ":"))
# Tool-call events carry their arguments' UTF-8 as it is, as servers send it, so
# that a character can be cut between HTTP chunks ([[tool_style:split_utf8]]).
_COMPACT_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_LEAD_BYTE = re.compile(rb"[\xc0-\xff]")
_KEEPALIVE = http_chunk(b": keep-alive\n\n")


class Pacer:
    """One timer for every stream of the process: writes each chunk when due.

    A chunk due sooner than PACER_TICK after the last wake waits for the next
    one, so a busy server wakes every PACER_TICK and writes hundreds of chunks a
    wake, and an idle one wakes at each chunk's own time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = PACER_TICK):
        self.loop, self.tick = loop, tick
        # (when, the request's number: a stream is in here at most once, stream)
        self.due: list[tuple[float, int, Stream]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.last_wake = -math.inf
        self.waking = False

    def add(self, when: float, stream: Stream) -> None:
        heapq.heappush(self.due, (when, stream.n, stream))
        if not self.waking and when < self.timer_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        when = max(when, self.last_wake + self.tick)
        if when >= self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at, self.timer = when, self.loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self.timer, self.timer_at = None, math.inf
        now = self.last_wake = self.loop.time()
        due, self.waking = self.due, True
        try:
            # asyncio may run a timer up to its clock's resolution early.
            while due and due[0][0] <= now + 1e-6:
                heapq.heappop(due)[2].pump(now)
        finally:
            self.waking = False
            if due:
                self._arm(due[0][0])


class Stream:
    """One streamed completion on its connection, advanced by the pacer.

    Its paced slots are the reasoning pieces, the answer pieces, then the
    tool-call chunks; each slot is one SSE event (with its extras).
    """

    def __init__(self, connection: Connection, completion: Completion) -> None:
        self.connection, self.completion = connection, completion
        self.record, self.directives = completion.record, completion.directives
        self.pacer: Pacer = connection.service.pacer
        self.transport = connection.transport
        self.n = completion.record["n"]
        self.done = False  # nothing more will be written
        self.blocked = False  # waiting for the transport to drain
        self.slot = 0  # paced chunks written: reasoning, answer, then tool calls
        self.interval = completion.interval
        think = self.directives.reasoning_field == "think"
        self.reasoning = think_pieces(completion) if think else completion.reasoning
        answers = len(completion.tokens)
        self.tools_from = len(self.reasoning) + answers
        # Every content chunk is the same JSON but for its text: encode the rest once.
        prefix = {
            "id": completion.completion_id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        head = _COMPACT.encode(prefix)[:-1]
        head = f'data: {head},"choices":[{{"index":0,"delta":{{"'
        end = ',"usage":null}\n\n' if completion.include_usage else "}\n\n"
        self.tail = ('},"logprobs":null,"finish_reason":null}]' + end).encode()
        if self.directives.refusal:
            self.content_head = (head + 'content":null,"refusal":').encode()
        else:
            self.content_head = (head + 'content":').encode()
        field_name = "content" if think else self.directives.reasoning_field
        self.reasoning_head = (head + field_name + '":').encode()
        # An answer chunk is content_head, its text, content_tail; with logprobs
        # the text closes the delta and carries them.
        self.texts = [b""] * len(self.reasoning)
        if completion.logprobs:
            self.content_tail = (',"finish_reason":null}]' + end).encode()
            self.texts += [
                b'%b},"logprobs":%b'
                % (_json_text(token), _COMPACT.encode(logprobs).encode())
                for token, logprobs in zip(
                    completion.tokens,
                    _each_logprobs(completion),
                    strict=True,
                )
            ]
        else:
            self.content_tail = self.tail
            self.texts += [_json_text(token) for token in completion.tokens]
        self.fixed = len(self.content_head) + len(self.content_tail)
        self.tool_payloads = self._tool_payloads()
        self.slots = self.tools_from + len(self.tool_payloads)
        # A fault set past the end comes after the last content or tool-call chunk.
        self.error_at, self.close_at, self.stall_at = faults = tuple(
            None if after is None else min(len(self.reasoning) + after, self.slots)
            for after in (
                self.directives.error_after,
                self.directives.close_after,
                self.directives.stall_after,
            )
        )
        # Paced chunks up to here need no check for a fault or the end.
        self.plain_end = min([self.slots, *(at for at in faults if at is not None)])
        # Answer chunks with no extras are made straight from their encoded text.
        self.extras = (
            self.directives.keepalive
            or self.directives.null_choices
            or self.directives.empty_choices
            or self.directives.empty_deltas
        )
        self.fast_from = math.inf if self.extras else len(self.reasoning)
        self.payloads = self._paced_payloads()
        # The hot path writes a slot whose next one is still plain and an answer.
        self.fast_end = min(self.plain_end - 1, self.tools_from)
        # An absolute schedule, as a model's own pace: the time spent writing each
        # chunk must not push every later one back (a drift of a millisecond a
        # token is a tenth of a second by the end of a benchmark's stream).
        self.start = self.pacer.loop.time() + completion.ttft

    def begin(self) -> None:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-request-id": self.completion.request_id,
            "transfer-encoding": "chunked",
        }
        connection = self.connection
        connection.stream = self
        connection.on_close = self.client_left
        parts = [response_head(200, headers, connection.keep_alive)]
        if self.directives.keepalive:
            parts.append(_KEEPALIVE)
        if self.directives.refusal:
            role = {"role": "assistant", "content": None, "refusal": ""}
        else:
            role = {"role": "assistant", "content": "", "refusal": None}
        parts.append(self.event(_choice(role)))
        connection.write(b"".join(parts))
        self.pump(self.pacer.loop.time())

    def pump(self, now: float) -> None:
        """Write every chunk due by `now`, then wait for the pacer, or end."""
        # The hot path, tens of thousands of times a second: one chunk is due and
        # the next one is not.
        slot, start, interval = self.slot, self.start, self.interval
        limit = now + 1e-6
        if (
            self.fast_from <= slot < self.fast_end
            and start + slot * interval <= limit < start + (slot + 1) * interval
            and not (self.done or self.blocked or self.connection.paused)
        ):
            self.slot = slot + 1
            self.record["chunks_sent"] += 1
            text = self.texts[slot]
            self.transport.write(
                b"%x\r\n%b%b%b\r\n"
                % (self.fixed + len(text), self.content_head, text, self.content_tail)
            )
            self.pacer.add(start + (slot + 1) * interval, self)
            return
        self._pump(limit)

    def _pump(self, limit: float) -> None:
        connection = self.connection
        if self.done or self.blocked or connection.paused:
            self.blocked = not self.done
            return
        slot, end, start, interval = (
            self.slot,
            self.plain_end,
            self.start,
            self.interval,
        )
        out = []
        while slot < end:
            due = start + slot * interval
            if due > limit:
                self.slot = slot
                self.pacer.add(due, self)
                if out:  # the transport, straight: a closed one has made us done
                    self.transport.write(out[0] if len(out) == 1 else b"".join(out))
                return
            out.append(self.payload(slot))
            slot += 1
            if len(out) == WRITE_BATCH and slot < end:
                # Let the other streams, and the socket, have a turn.
                self.slot = slot
                connection.write(b"".join(out))
                self.blocked = connection.paused
                if not self.blocked:
                    self.pacer.loop.call_soon(self.resume, True)
                return
        self.slot = slot
        out.append(self.last_step(limit))
        connection.write(b"".join(out))
        if self.record["outcome"] == "aborted":
            connection.abort()
        elif self.done and self.record["outcome"] not in OPEN_OUTCOMES:
            connection.finish()

    def last_step(self, limit: float) -> bytes:
        """At a fault, or after the last paced chunk: what comes, if it is due."""
        slot = self.slot
        if slot == self.slots and slot not in (
            self.error_at,
            self.close_at,
            self.stall_at,
        ):
            return self.finish()
        due = self.start + slot * self.interval
        if due > limit:
            self.pacer.add(due, self)
            return b""
        if slot == self.error_at:
            answered = slot - len(self.reasoning)
            message = f"Injected error after {answered} content chunks."
            self.record["chunks_sent"] += 1
            data = _COMPACT.encode(error_body(message, 500)).encode()
            self.end("error_midstream")
            return http_chunk(b"data: %b\n\n" % data) + LAST_CHUNK
        if slot == self.close_at:
            self.end("aborted")
        else:
            self.record["outcome"] = "stalled"
            self.done = True  # until the client leaves
        return b""

    def resume(self, turn: bool = False) -> None:
        """Go on after the transport drained, or after a turn given to the others."""
        if self.blocked or turn:
            self.blocked = False
            self.pump(self.pacer.loop.time())

    def payload(self, slot: int) -> bytes:
        """The bytes of paced slot `slot`, which is the next one."""
        if slot >= self.tools_from:
            self.record["chunks_sent"] += 1
            return self.tool_payloads[slot - self.tools_from]
        if slot < self.fast_from:
            return next(self.payloads)
        return self._answer_chunk(slot)

    def _answer_chunk(self, slot: int) -> bytes:
        self.record["chunks_sent"] += 1
        text = self.texts[slot]
        return b"%x\r\n%b%b%b\r\n" % (
            self.fixed + len(text),
            self.content_head,
            text,
            self.content_tail,
        )

    def _paced_payloads(self) -> Iterator[bytes]:
        """The bytes of each slot before fast_from: its chunks, extras first."""
        directives, extras = self.directives, self.extras
        slots = [[piece] for piece in self.reasoning]
        if directives.split_think and slots:
            first, last = slots[0], slots[-1]
            first[:] = [first[0][:3], first[0][3:]]  # "<th", "ink>word"
            if last[-1].endswith("</think>"):  # "word</thi", "nk>"
                last[-1:] = [last[-1][:-3], "nk>"]
        for slot, pieces in enumerate(slots):
            parts = self._extras(slot) if extras else []
            for piece in pieces:
                self.record["chunks_sent"] += 1
                data = b"%b%b%b" % (self.reasoning_head, _json_text(piece), self.tail)
                parts.append(http_chunk(data))
            yield b"".join(parts)
        if extras:
            for slot in range(len(slots), self.tools_from):
                yield b"".join([*self._extras(slot), self._answer_chunk(slot)])

    def _extras(self, slot: int) -> list[bytes]:
        directives, parts = self.directives, []
        if directives.keepalive:
            parts.append(_KEEPALIVE)
        if directives.null_choices:
            parts.append(self.event(None))
        if directives.empty_choices:
            parts.append(self.event([]))
        if directives.empty_deltas:
            parts.append(
                self.event(_choice({"content": "" if slot % 2 == 0 else None}))
            )
        return parts

    def _tool_payloads(self) -> list[bytes]:
        """The bytes of each tool-call slot: one event, in two HTTP chunks cut
        inside a UTF-8 character with [[tool_style:split_utf8]]."""
        style, payloads = self.directives.tool_style, []
        for calls in tool_call_deltas(self.completion.tool_calls, style):
            data = (
                b"data: %b\n\n"
                % _COMPACT_UTF8.encode(
                    self.chunk(_choice({"tool_calls": calls}))
                ).encode()
            )
            if style == "split_utf8":
                lead = _LEAD_BYTE.search(data, max(data.find(b'"arguments"'), 0))
                cut = lead.end() if lead else len(data) // 2
                payloads.append(http_chunk(data[:cut]) + http_chunk(data[cut:]))
            else:
                payloads.append(http_chunk(data))
        return payloads

    def chunk(self, choices: list[dict[str, Any]] | None, **extra: Any) -> dict:
        chunk: dict[str, Any] = {
            "id": self.completion.completion_id,
            "object": "chat.completion.chunk",
            "created": self.completion.created,
            "model": self.completion.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.completion.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return chunk

    def event(self, choices: list[dict[str, Any]] | None, **extra: Any) -> bytes:
        self.record["chunks_sent"] += 1
        data = _COMPACT.encode(self.chunk(choices, **extra)).encode()
        return http_chunk(b"data: %b\n\n" % data)

    def finish(self) -> bytes:
        completion, directives, parts = self.completion, self.directives, []
        used = None if directives.no_usage else usage(completion)
        reason = completion.finish_reason
        if reason == "tool_calls" and not completion.tool_calls:
            # [[finish:tool_calls]] alone: a call, so the reason has one to name.
            call = {
                "index": 0,
                "id": "call_" + completion.completion_id[-24:],
                "type": "function",
                "function": {"name": "lookup", "arguments": "{}"},
            }
            parts.append(self.event(_choice({"tool_calls": [call]})))
        if directives.usage_in_choice and used is not None:
            parts.append(self.event(_choice({}, reason), usage=used))
        else:
            parts.append(self.event(_choice({}, reason)))
            if completion.include_usage and used is not None:
                parts.append(self.event([], usage=used))
        parts += [http_chunk(b"data: [DONE]\n\n"), LAST_CHUNK]
        self.end("completed")
        return b"".join(parts)

    def end(self, outcome: str) -> None:
        self.done = True
        self.record.update(outcome=outcome, ended_at=time.time())

    def client_left(self) -> None:
        self.done = True
        if self.record["outcome"] in OPEN_OUTCOMES:
            self.end("client_closed")


def _each_logprobs(completion: Completion) -> list[dict[str, Any]]:
    """Each answer piece's own ``logprobs``, as its chunk carries them."""
    whole = logprobs_of(completion, completion.tokens)
    key = "refusal" if completion.directives.refusal else "content"
    return [{**whole, key: [entry]} for entry in whole[key]]


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[Any]:
    return [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    ]


@lru_cache(maxsize=4096)
def _json_text(text: str) -> bytes:
    """A token as a JSON string; the filler words come again and again."""
    return json.dumps(text).encode()
