"""Per-request stream state, and the store that finds it.

A ``Stream`` keeps every chunk it sent, so that a client whose connection dropped can
resume from the last ``seq`` it holds. ``MemoryStreamStore`` is the single-process
store; a shared store (Redis) for several nodes implements the same methods.
"""

import secrets
import threading
import time
from typing import Any

from .chat_request import ChatRequest
from .delivery import transport_of
from .providers.base import ANSWER, REASONING, TOOL_CALL, Abort, Kind, Piece
from .toolcalls import assemble

Event = tuple[str, dict[str, Any]]


class Stream:
    """One request's answer so far, where it goes, and how it ended."""

    def __init__(
        self,
        sid: str,
        identity: str,
        request: ChatRequest,
        messages: list[dict[str, str]],
    ):
        # The connection events go to; None while the client is away.
        self.sid: str | None = sid
        # Which transport it started on: a resume must come over the same one.
        self.transport = transport_of(sid)
        self.identity = identity
        self.request = request
        self.messages = messages
        self.token = secrets.token_urlsafe(24)
        # One (kind, text) per chunk event sent: ``seq`` indexes it.
        self.parts: list[Piece] = []
        self.terminal: Event | None = None
        # Set by the first end: no chunk is kept or sent after it.
        self.closing = False
        # The seq from which its chunks were taken back (moderation), when they were:
        # its end is then ``retract`` and the terminal event (``end_events``).
        self.retracted: int | None = None
        # Set when nobody will read the answer: the generation stops, nothing is sent.
        self.abandoned = False
        # Fired when the request ends other than by its generation finishing.
        self.abort = Abort()
        self.started = time.monotonic()
        # Wall-clock seconds, as OpenAI's ``created`` field gives them.
        self.created = int(time.time())
        # When the first text of either kind, and of the answer, was sent.
        self.first_token_at: float | None = None
        self.first_answer_at: float | None = None
        # When the last chunk event left (monotonic): coalescing spaces them out.
        self.last_frame_at = 0.0
        # While away: when to give up on the client; once ended: when to forget.
        self.expires_at: float | None = None
        # Held while deciding and sending each event, so that events leave in order
        # and nothing follows the terminal one.
        self.lock = threading.Lock()
        # The resume replaying the kept chunks to ``sid`` (``relay.Replay``), while
        # it does: the generation keeps its chunks and its end for it to send.
        self.replaying: object | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def ended(self) -> bool:
        return self.terminal is not None or self.abandoned

    def append(self, piece: Piece, now: float) -> int:
        """Keep a chunk sent at ``now``; return its ``seq``."""
        if self.first_token_at is None:
            self.first_token_at = now
        if piece[0] == ANSWER and self.first_answer_at is None:
            self.first_answer_at = now
        self.parts.append(piece)
        return len(self.parts) - 1

    def text(self, kind: Kind = ANSWER) -> str:
        """The text of one kind sent so far: the answer, reasoning or refusal."""
        return "".join(part[1] for part in self.parts if part[0] == kind)

    def reasoning(self) -> str:
        return self.text(REASONING)

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls made so far, whole, in OpenAI's message shape."""
        return assemble(part[1] for part in self.parts if part[0] == TOOL_CALL)


def end_events(request_id: str, terminal: Event, retracted: int | None) -> list[Event]:
    """The events that end a request for a client: ``retract`` first when its
    chunks from seq ``retracted`` on were taken back, then ``terminal``."""
    if retracted is None:
        return [terminal]
    return [("retract", {"id": request_id, "from_seq": retracted}), terminal]


class MemoryStreamStore:
    """Streams by resume token, and the live ones by connection and request id."""

    def __init__(self) -> None:
        self._by_token: dict[str, Stream] = {}
        self._live: dict[str, dict[str, Stream]] = {}
        # Per identity, the tokens of its streams still generating: those whose client
        # is away count too, as they still run upstream.
        self._running: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, stream: Stream, limit_per_sid: int, limit_per_identity: int) -> None:
        """Register a new live stream, or raise ``LookupError``/``OverflowError``."""
        assert stream.sid is not None
        with self._lock:
            live = self._live.setdefault(stream.sid, {})
            if stream.id in live:
                raise LookupError(stream.id)
            if len(live) >= limit_per_sid:
                raise OverflowError("connection")
            running = self._running.setdefault(stream.identity, set())
            if len(running) >= limit_per_identity:
                raise OverflowError("identity")
            live[stream.id] = stream
            running.add(stream.token)
            self._by_token[stream.token] = stream

    def live(self, sid: str, request_id: str) -> Stream | None:
        return self._live.get(sid, {}).get(request_id)

    def by_token(self, token: str) -> Stream | None:
        return self._by_token.get(token)

    def attach(self, stream: Stream, sid: str) -> None:
        """Send a stream's events to ``sid`` from now on (a resume)."""
        with self._lock:
            if stream.sid is not None:
                self._unindex(stream)
            stream.sid = sid
            stream.expires_at = None
            if not stream.ended:
                live = self._live.setdefault(sid, {})
                if live.get(stream.id, stream) is not stream:
                    raise LookupError(stream.id)
                live[stream.id] = stream

    def detach_all(self, sid: str) -> list[Stream]:
        """Forget a connection; return the streams that were sending to it."""
        with self._lock:
            streams = list(self._live.pop(sid, {}).values())
            for stream in streams:
                stream.sid = None
        return streams

    def ended(self, stream: Stream) -> None:
        """A stream ended: it no longer counts as live, but stays resumable."""
        with self._lock:
            self._unindex(stream)
            self._stop_running(stream)

    def _stop_running(self, stream: Stream) -> None:
        running = self._running.get(stream.identity)
        if running is not None:
            running.discard(stream.token)
            if not running:
                del self._running[stream.identity]

    def _unindex(self, stream: Stream) -> None:
        live = self._live.get(stream.sid or "")
        if live is not None and live.get(stream.id) is stream:
            del live[stream.id]
            if not live:
                del self._live[stream.sid or ""]

    def touched(self, stream: Stream) -> None:
        """A stream changed (a chunk, its end); a shared store writes it through."""

    def retracted(self, stream: Stream, from_seq: int) -> None:
        """A stream's chunks from ``from_seq`` on were taken back; a shared store
        takes them out of its copy too."""

    def expired(self, now: float) -> list[Stream]:
        with self._lock:
            return [
                s
                for s in self._by_token.values()
                if s.expires_at is not None and s.expires_at <= now
            ]

    def drop(self, stream: Stream) -> None:
        with self._lock:
            self._unindex(stream)
            self._stop_running(stream)
            self._by_token.pop(stream.token, None)

    def live_streams(self) -> list[Stream]:
        """Streams still generating, whether or not their client is connected."""
        with self._lock:
            return [s for s in self._by_token.values() if not s.ended]

    def __len__(self) -> int:
        return len(self._by_token)
