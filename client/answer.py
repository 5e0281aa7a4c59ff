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

import time
from typing import Any, NamedTuple

from client.errors import ChatConnectionError, ChatError

ANSWER = "answer"
REASONING = "reasoning"

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


class Delta(NamedTuple):
    """A piece of the model's text, in ``seq`` order.

    ``kind`` is ``"reasoning"`` for the model's reasoning ("thinking"), which comes
    first, or ``"answer"`` for the answer itself.
    """

    kind: str
    text: str


def _chunks(done: dict[str, Any]) -> int:
    count = done.get("chunks")
    return count if isinstance(count, int) else 0


class Answer:
    """One request's answer: its text so far, in ``seq`` order, and how it ended.

    ``apply(event, data)`` returns the deltas the event put in order, and raises
    ``ChatError`` when the event ends the request with a failure. ``result`` is the
    ``done`` payload once the answer is complete.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []  # the answer's text, piece by piece
        self.reasoning_parts: list[str] = []
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
        yields it (reasoning left out)."""
        return [delta.text for delta in self.apply(event, data) if delta.kind == ANSWER]

    def apply_chunk(self, data: dict[str, Any]) -> list[Delta]:
        """Put a chunk in seq order; early ones wait in ``pending``, duplicates
        (a resume replays what may have arrived already) are dropped."""
        seq, text = data.get("seq"), data.get("delta")
        if not isinstance(seq, int) or not isinstance(text, str):
            return []
        if seq < self.next_seq or seq in self.pending:
            return []
        # No kind is answer text: what a client that ignores kind shows.
        kind = REASONING if data.get("kind") == REASONING else ANSWER
        self.pending[seq] = Delta(kind, text)
        ready = []
        while self.next_seq in self.pending:
            ready.append(self.pending.pop(self.next_seq))
            self.next_seq += 1
        for delta in ready:
            (self.reasoning_parts if delta.kind == REASONING else self.parts).append(
                delta.text
            )
        if self.done_early is not None and self.next_seq >= _chunks(self.done_early):
            self.result, self.done_early = self.done_early, None
        return ready

    def apply_done(self, data: dict[str, Any]) -> None:
        """Finish the answer, or, when the done counts chunks not all here yet,
        wait for them."""
        if self.next_seq < _chunks(data):
            self.done_early = data
        else:
            self.result = data

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
        """The answer's text so far; what joins the history."""
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        """The reasoning text so far; never sent back to the server."""
        return "".join(self.reasoning_parts)
