"""One answer's state as its events come in: pure bookkeeping, no I/O, no threads.

The Python twin of ``client/web/src/streamState.js``: one handler per event
(``apply_chunk``, ``apply_done``, ``apply_error``, and the acks and the client's own
``disconnected``), and ``apply`` to route an event to its handler. Chunks are put in
``seq`` order here and nowhere else: ``next_seq`` is also what a ``resume`` asks to
continue after.

Events may come out of order: python-socketio's threaded client runs each handler on
a thread of its own, so a chunk may overtake the one before it, and a ``done`` its
last chunks. The caller serialises the calls (``ChatClient`` holds a lock).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from client.errors import ChatConnectionError, ChatError

ANSWER = "answer"
REASONING = "reasoning"
REFUSAL = "refusal"
TOOL_CALL = "tool_call"

log = logging.getLogger(__name__)

# How long a hole in ``seq`` may last before the client asks for the missing chunks
# again. python-socketio runs each event's handler on a thread of its own, so a chunk
# may overtake the one before it by a moment; a hole that outlasts this was lost on the
# way (with several nodes, Redis pub/sub drops what it carries while Redis restarts).
GAP_SECONDS = 1.0

# Resumes sent for one hole before giving up: one usually fills it; more cover a
# replay lost too, or refused while the server's Redis is still coming back.
GAP_RESUMES = 3

# Refusals of a ``resume`` come as an error event and then the negative ack; the ack
# says it (as ``disconnected``, or ``lost_chunks`` for a gap), so the error event does
# not end the request.
RESUME_REFUSALS = frozenset({"resume_denied", "invalid_request"})


class ToolCallRef(NamedTuple):
    """The tool call a ``"tool_call"`` delta is a piece of.

    ``index`` is 0, 1, … in the order the model made its calls; ``id`` and ``name``
    are the call's, as its first fragment gave them (``""`` until one did).
    """

    index: int
    id: str
    name: str


class _Pair(NamedTuple):
    kind: str
    text: str


class Delta(_Pair):
    """A piece of the model's output, in ``seq`` order: a ``(kind, text)`` pair.

    ``kind`` is ``"reasoning"`` for the model's reasoning ("thinking"), which comes
    first, ``"answer"`` for the answer itself, ``"refusal"`` for a refusal the
    model gave in its place, or ``"tool_call"`` for a piece of a tool call's
    arguments (JSON text): ``tool_call`` (a ``ToolCallRef``) then says which call.

    A pair still, so that ``for kind, text in chat.stream(..., reasoning=True)``
    unpacks every delta; ``tool_call`` is an attribute rather than a third field
    for that reason (``None`` for text).
    """

    tool_call: ToolCallRef | None = None

    def __new__(
        cls, kind: str, text: str, tool_call: ToolCallRef | None = None
    ) -> Delta:
        delta = super().__new__(cls, kind, text)
        if tool_call is not None:
            delta.tool_call = tool_call
        return delta

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, tuple):
            return NotImplemented
        return tuple.__eq__(self, other) and self.tool_call == getattr(
            other, "tool_call", None
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((tuple(self), self.tool_call))

    def _replace(self, **fields: str) -> Delta:
        pair = super()._replace(**fields)
        return Delta(pair.kind, pair.text, self.tool_call)

    def __repr__(self) -> str:
        extra = "" if self.tool_call is None else f", tool_call={self.tool_call!r}"
        return f"Delta(kind={self.kind!r}, text={self.text!r}{extra})"


def _tool_call_delta(fragment: Any) -> Delta | None:
    """The delta of a ``tool_call`` chunk's fragment, None when it is malformed."""
    if not isinstance(fragment, dict):
        return None
    index, arguments = fragment.get("index"), fragment.get("arguments", "")
    call_id, name = fragment.get("id") or "", fragment.get("name") or ""
    if (
        not isinstance(index, int)
        or isinstance(index, bool)
        or index < 0
        or not isinstance(arguments, str)
        or not isinstance(call_id, str)
        or not isinstance(name, str)
    ):
        return None
    return Delta(TOOL_CALL, arguments, ToolCallRef(index, call_id, name))


class _Call:
    """A tool call as its fragments come in."""

    __slots__ = ("id", "name", "arguments")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []

    def shape(self) -> dict[str, Any]:
        """OpenAI's shape, as a ``done`` gives it and a request sends it back."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


def _chunks(done: dict[str, Any]) -> int:
    count = done.get("chunks")
    return count if isinstance(count, int) else 0


class Answer:
    """One request's answer: its text and tool calls so far, in ``seq`` order, and
    how it ended.

    ``apply(event, data)`` returns the deltas the event put in order, and raises
    ``ChatError`` when the event ends the request with a failure. ``result`` is the
    ``done`` payload once the answer is complete.
    """

    def __init__(self) -> None:
        # The answer's text, piece by piece: what stream() yields, a refusal too.
        self.parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self.refusal_parts: list[str] = []
        self.calls: dict[int, _Call] = {}  # the tool calls by index, as assembled
        self.next_seq = 0  # the seq of the next chunk to take
        self.pending: dict[int, Delta] = {}  # chunks that overtook a missing seq
        self.acked = False  # the chat was accepted
        self.result: dict[str, Any] | None = None
        # A done that overtook some of its chunks: finished once they are in.
        self.done_early: dict[str, Any] | None = None
        # While the connection is down: when it dropped (monotonic), until a resume.
        self.away_since: float | None = None
        # While a seq is missing (chunks held past it, or a done waiting for it): when
        # the hole was seen or last asked for again (monotonic), and how many resumes
        # were sent for it.
        self.gap_since: float | None = None
        self.gap_resumes = 0
        # Every delta taken, in seq order: what is kept when chunks are taken back.
        self.taken: list[Delta] = []
        # The answer has no chunk from this seq on: a done counted that many, or a
        # retract took the rest back (the server's moderation).
        self.end_seq: int | None = None
        self.retracted_from: int | None = None

    # The events

    def apply(self, event: str, data: dict[str, Any]) -> list[Delta]:
        """Take one event; returns the deltas now in order (chunks only)."""
        handler = self._HANDLERS.get(event)  # others (stop_ack) change nothing
        try:
            ready = handler(self, data) if handler is not None else None
        finally:
            self._note_gap()
        return ready or []

    def feed(self, event: str, data: dict[str, Any]) -> list[str]:
        """Take one event; returns the answer text now in order, as ``stream()``
        yields it (a refusal included; reasoning and tool calls left out)."""
        return [
            delta.text
            for delta in self.apply(event, data)
            if delta.kind in (ANSWER, REFUSAL)
        ]

    def apply_chunk(self, data: dict[str, Any]) -> list[Delta]:
        """Put a chunk in seq order; early ones wait in ``pending``, duplicates
        (a resume replays what may have arrived already) are dropped. Text and
        tool-call chunks share the one ``seq`` space."""
        seq, kind = data.get("seq"), data.get("kind")
        if not isinstance(seq, int):
            return []
        if kind == TOOL_CALL:
            delta = _tool_call_delta(data.get("tool_call"))
            if delta is None:
                return []
        else:
            text = data.get("delta")
            if not isinstance(text, str):
                return []
            # No kind is answer text, and so is a kind this client does not know:
            # what a client that ignores kind shows.
            delta = Delta(kind if kind in (REASONING, REFUSAL) else ANSWER, text)
        if seq < self.next_seq or seq in self.pending:
            return []
        if self.end_seq is not None and seq >= self.end_seq:
            return []  # taken back, or past the end the done gave
        self.pending[seq] = delta
        ready = []
        while self.next_seq in self.pending:
            ready.append(self._take(self.pending.pop(self.next_seq)))
            self.next_seq += 1
        if self.done_early is not None and self.next_seq >= _chunks(self.done_early):
            self._finish(self.done_early)
        return ready

    def _take(self, delta: Delta) -> Delta:
        """Add a delta, now in order, to what the answer holds; a tool-call delta
        comes back naming its call's id and name."""
        self.taken.append(delta)
        if delta.kind == REASONING:
            self.reasoning_parts.append(delta.text)
            return delta
        if delta.kind != TOOL_CALL:
            self.parts.append(delta.text)
            if delta.kind == REFUSAL:
                self.refusal_parts.append(delta.text)
            return delta
        ref = delta.tool_call
        assert ref is not None  # made so by _tool_call_delta
        call = self.calls.setdefault(ref.index, _Call())
        # The id and name come with a call's first fragment; one that comes late
        # is kept, one sent again does not replace the first.
        call.id = call.id or ref.id
        call.name = call.name or ref.name
        call.arguments.append(delta.text)
        return Delta(TOOL_CALL, delta.text, ToolCallRef(ref.index, call.id, call.name))

    def apply_done(self, data: dict[str, Any]) -> None:
        """Finish the answer, or, when the done counts chunks not all here yet,
        wait for them. A done that counts fewer than arrived follows a retract
        (which this client's threads may apply later): the rest is taken back."""
        if isinstance(data.get("chunks"), int):
            self._cut(data["chunks"])
        if self.next_seq < _chunks(data):
            self.done_early = data
        else:
            self._finish(data)

    def _finish(self, done: dict[str, Any]) -> None:
        self.result, self.done_early = done, None
        sent = done.get("tool_calls")
        if isinstance(sent, list) and sent != self.assembled_tool_calls:
            # The done's calls win (see tool_calls); a difference means a fragment
            # this client could not read or a server that assembles otherwise, and
            # is worth a word in the log.
            log.warning(
                "the done's tool calls differ from their chunks; using the done's: "
                "%r, not %r",
                sent,
                self.assembled_tool_calls,
            )

    def apply_retract(self, data: dict[str, Any]) -> None:
        """The server took the chunks from ``from_seq`` on back (its moderation
        flagged them): the answer, its history and ``last_result`` keep only those
        before. Text ``stream()`` yielded already cannot be taken back there."""
        from_seq = data.get("from_seq")
        if isinstance(from_seq, int) and not isinstance(from_seq, bool):
            self.retracted_from = max(from_seq, 0)
            self._cut(self.retracted_from)

    def _cut(self, end: int) -> None:
        self.end_seq = end if self.end_seq is None else min(self.end_seq, end)
        self.pending = {seq: d for seq, d in self.pending.items() if seq < end}
        if self.end_seq >= self.next_seq:
            return
        kept = self.taken[: self.end_seq]
        self.parts, self.reasoning_parts, self.refusal_parts = [], [], []
        self.calls, self.taken = {}, []
        for delta in kept:
            self._take(delta)
        self.next_seq = self.end_seq

    def apply_error(self, data: dict[str, Any]) -> None:
        """End the request with the server's error, but for the two that do not
        end it: ``unknown_id`` answers a stop that crossed the done, and a refused
        resume is said again by its negative ack."""
        code = data.get("code")
        resuming = self.away_since is not None or self.gap_resumes > 0
        if code == "unknown_id" or (resuming and code in RESUME_REFUSALS):
            return
        raise ChatError(
            str(data.get("code", "internal")),
            str(data.get("message", "")),
            bool(data.get("retryable", False)),
        )

    def apply_ack(self, data: dict[str, Any]) -> None:
        """The chat's ack: accepted, or refused with the server's error."""
        if not data.get("ok"):
            error = data.get("error") or {}
            raise ChatError(
                str(error.get("code", "internal")),
                str(error.get("message", "request rejected")),
                bool(error.get("retryable", False)),
            )
        self.acked = True

    def apply_resume_ack(self, data: dict[str, Any]) -> None:
        """The ack of the resume sent after a reconnection."""
        if not data.get("ok"):
            error = data.get("error") or {}
            raise ChatConnectionError(
                "disconnected",
                "the connection dropped and the server refused to resume the "
                f"answer ({error.get('code')}: {error.get('message')})",
                retryable=True,
            )
        self.away_since = None
        if self.gap_since is not None:
            # The resume fills any hole too: it starts the bound afresh.
            self.gap_since, self.gap_resumes = time.monotonic(), 0

    def apply_gap_resume_ack(self, data: dict[str, Any]) -> None:
        """The ack of a resume sent to fill a hole. A refusal is final; other
        failures (the server's Redis still away) are tried again, within
        ``GAP_RESUMES``. Once the hole is filled, nothing to do."""
        error = data.get("error") or {}
        if (
            not data.get("ok")
            and self.gap_since is not None
            and error.get("code") in RESUME_REFUSALS
        ):
            raise self.lost(f"{error.get('code')}: {error.get('message')}")

    def apply_disconnected(self, data: dict[str, Any]) -> None:
        """The connection dropped (the client's own event): wait for the resume,
        unless the drop is final or there is nothing to resume with (without the
        ack, no resume token)."""
        if data.get("final") or not self.acked:
            raise ChatConnectionError(
                "disconnected",
                f"the connection dropped before the answer was complete "
                f"({data.get('reason', 'unknown reason')})",
                retryable=True,
            )
        if self.away_since is None:
            self.away_since = time.monotonic()

    _HANDLERS = {
        "chunk": apply_chunk,
        "done": apply_done,
        "retract": apply_retract,
        "error": apply_error,
        "ack": apply_ack,
        "resume_ack": apply_resume_ack,
        "gap_resume_ack": apply_gap_resume_ack,
        "disconnected": apply_disconnected,
    }

    # Holes in seq

    def _note_gap(self) -> None:
        if not (self.pending or self.done_early):
            self.gap_since, self.gap_resumes = None, 0
        elif self.gap_since is None:
            self.gap_since = time.monotonic()

    def gap_resume_sent(self) -> None:
        """A resume went out for the current hole: give it the bound again."""
        self.gap_resumes += 1
        self.gap_since = time.monotonic()

    def lost(self, reason: str) -> ChatError:
        """The error for a hole that cannot be filled."""
        return ChatError(
            "lost_chunks",
            f"chunk {self.next_seq} of the answer never arrived and could not be "
            f"fetched again ({reason}); retry",
            retryable=True,
        )

    # What it holds

    @property
    def answered(self) -> bool:
        """The server has said anything about the request: an ack or a chunk."""
        return self.acked or self.next_seq > 0 or bool(self.pending)

    @property
    def text(self) -> str:
        """The answer's text so far, a refusal included; what joins the history."""
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        """The reasoning text so far; never sent back to the server."""
        return "".join(self.reasoning_parts)

    @property
    def refusal(self) -> str:
        """The text of a refusal the model gave in place of an answer, ``""`` for
        none."""
        return "".join(self.refusal_parts)

    @property
    def assembled_tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls as their chunks give them so far, in OpenAI's shape, in
        the order the model made them."""
        return [self.calls[index].shape() for index in sorted(self.calls)]

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The answer's tool calls, in OpenAI's shape.

        The done's ``tool_calls``, when it has them, are authoritative: the server
        assembled them from the upstream's whole stream, and they are what the
        next request must send back exactly. Otherwise (before the done, or a done
        without them) the calls as assembled from their chunks.
        """
        sent = (self.result or {}).get("tool_calls")
        return sent if isinstance(sent, list) else self.assembled_tool_calls
