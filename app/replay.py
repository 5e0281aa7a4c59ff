"""A resume's replay, at the pace its client reads: a part of about half
``MAX_QUEUED_BYTES`` at a time, each once what waits for the client is down to a
quarter of it, so that however much is missing, only a client that stops reading is
cut. Meanwhile the generation keeps its chunks without sending them; the replay sends
them too, and hands the stream back once it has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from .delivery import Connection, Drain, send_chunks
from .providers.base import Piece
from .streams import Event, Stream, end_events

# How long a replay waits at most for its client to drain before it looks again
# whether the client is still there.
_REPLAY_WAIT_SECONDS = 1.0


class Node(Protocol):
    """What a replay needs of the relay that runs it."""

    # Seconds an ended stream is kept for a resume.
    resume_grace: float
    # Bytes of chunks sent at a time, each once the client has drained.
    replay_part: int
    # This node's connections by session id.
    connections: Mapping[str, Connection]


class Paced(Protocol):
    """A replay, one part per ``step``."""

    def step(self, state: Drain, waited: bool) -> bool:
        """Send the next part, given what the connection's ``drained`` found
        (``waited``: after waiting on it); False once done."""


class Replay:
    """One resume's replay of a stream's kept chunks to its new connection.

    Each ``step`` sends a part, under the stream's lock, from where the last one
    stopped to what the stream holds now, live chunks included: so they come in
    ``seq`` order, once each. Once it has caught up the stream is handed back (its
    generation sends to the connection again) and its end, if it has one, is sent.
    A replay through another node hands back only after a wait on that node, which
    answers once what was sent before it has reached the client's writer: the live
    chunks that follow take another way (the message queue), and must not overtake
    it. A replay whose client left, or that a newer resume took over, stops."""

    def __init__(
        self,
        relay: Node,
        stream: Stream,
        sid: str,
        connection: Connection,
        seq: int,
    ):
        self.relay = relay
        self.stream = stream
        self.sid = sid
        self.connection = connection
        self.seq = seq
        # Straight to this node's client: its live chunks take the same way.
        self.direct = relay.connections.get(sid) is connection

    def step(self, state: Drain, waited: bool) -> bool:
        stream = self.stream
        with stream.lock:
            if stream.replaying is not self:
                return False  # a newer resume took it over
            if state == "closed" or not self._still_there():
                # The rest waits in the stream for the client's next resume.
                stream.replaying = None
                if stream.ended and stream.expires_at is None:
                    stream.expires_at = time.monotonic() + self.relay.resume_grace
                return False
            if state == "waiting":
                return True
            if self.seq < len(stream.parts):
                self.seq = send_chunks(
                    self.connection,
                    stream.id,
                    stream.parts,
                    self.seq,
                    self.relay.replay_part,
                )
                if self.seq < len(stream.parts) or not self.direct:
                    return True
            elif not (self.direct or waited):
                return True
            # Caught up: the generation sends from here.
            stream.replaying = None
            if stream.terminal is not None:
                for event in end_events(stream.id, stream.terminal, stream.retracted):
                    self.connection.send(*event)
                stream.expires_at = time.monotonic() + self.relay.resume_grace
            return False

    def _still_there(self) -> bool:
        if self.stream.sid != self.sid:
            return False  # its client left (a live stream is detached)
        # An ended stream is not: its client's connection tells.
        connection = self.relay.connections.get(self.sid)
        return not self.direct or connection is self.connection


class KeptReplay:
    """A replay of chunks kept elsewhere, then their stream's end (its events)."""

    def __init__(
        self,
        relay: Node,
        connection: Connection,
        request_id: str,
        pieces: list[Piece],
        first_seq: int,
        ending: list[Event],
    ):
        self.relay = relay
        self.connection = connection
        self.request_id = request_id
        self.pieces = pieces
        self.first_seq = first_seq
        self.ending = ending
        self.done = 0

    def step(self, state: Drain, waited: bool) -> bool:
        if state != "drained":
            return state == "waiting"
        self.done = send_chunks(
            self.connection,
            self.request_id,
            self.pieces,
            self.done,
            self.relay.replay_part,
            self.first_seq,
        )
        if self.done < len(self.pieces):
            return True
        for event in self.ending:
            self.connection.send(*event)
        return False


def drained(connection: Connection, low: int) -> Drain:
    """``connection.drained``, for a connection that may not say (it has no cap)."""
    wait = getattr(connection, "drained", None)
    return "drained" if wait is None else wait(low, _REPLAY_WAIT_SECONDS)
