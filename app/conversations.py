"""Conversations kept on the server, as the transports and the core use them.

``History`` wraps the store (``app/history``): every call runs off the event loop
when the store's driver would block it (SQLite), and the store's failures become the
protocol's errors: ``not_found`` for a conversation or message this owner does not
have (another owner's included, so that its existence never shows),
``invalid_request``, and ``history_unavailable`` when the database fails.

A chat that continues a conversation names it; ``History.prepare`` builds the history
to send the model from the store (the branch ending at ``parent_id``) and plans the
turn: the ids of the new messages and of the answer. ``Recorder``, a stage of the
core (``app/stages.py``), writes the new messages when the generation starts and the
answer once when it ends, never per chunk: the live part is in the resume buffer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from flask_socketio import SocketIO

from .blocking import Offload
from .chat_request import ChatRequest, Limits, check_messages
from .errors import ProtocolError
from .history import (
    Conversation,
    InvalidInput,
    Message,
    NotFound,
    Page,
    Store,
    StoreError,
    new_id,
)
from .history.content import Blob
from .owners import room
from .providers.base import ANSWER, REFUSAL
from .stages import Stage
from .streams import Event, Stream

log = logging.getLogger(__name__)

T = TypeVar("T")

# ``parent_id`` left out of a chat: the conversation's current leaf (no client can
# send an empty id).
LEAF = ""

# Messages the client may send but the store does not keep: they lead each request
# of the conversation that sends them again (the server's SYSTEM_PROMPT leads all).
_INSTRUCTIONS = ("system", "developer")


@dataclass
class Turn:
    """What a stored chat adds to its conversation."""

    owner: str
    conversation_id: str
    # Whether the conversation is created by this turn.
    new: bool
    # The message the first new one follows (None: a root).
    parent_id: str | None
    # The client's new messages with their ids, in order.
    messages: list[tuple[str, dict[str, Any]]]
    answer_id: str
    model: str
    # Set once the new messages are written: only then is the answer.
    written: bool = field(default=False)
    # Set when their write has ended, written or not (None: never begun).
    settled: threading.Event | None = field(default=None)
    # Why they were not written, when the store said (reported at the end).
    failure: ProtocolError | None = field(default=None)

    @property
    def answer_parent(self) -> str | None:
        return self.messages[-1][0] if self.messages else self.parent_id

    def ack(self) -> dict[str, Any]:
        """The ids a client learns in the ``chat`` ack."""
        return {
            "conversation_id": self.conversation_id,
            "message_ids": [message_id for message_id, _ in self.messages],
            "answer_id": self.answer_id,
        }


class History:
    """The conversation store as the server's handlers and stages use it."""

    def __init__(self, store: Store, offload: Offload, socketio: SocketIO):
        self.store = store
        self.socketio = socketio
        sqlite = store.dialect == "sqlite"
        # PostgreSQL's driver waits cooperatively under gevent and eventlet; SQLite's
        # blocks its thread.
        self._offload = offload if sqlite else None
        # SQLite takes one writer at a time: the others wait their turn here, not in
        # its busy handler, which sleeps up to 100 ms between tries.
        self._writer = threading.Lock() if sqlite else None

    def call(
        self,
        method: Callable[..., T],
        *args: Any,
        request_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        """``method(*args, **kwargs)`` of the store, its failures as protocol errors."""
        return self._call(method, args, kwargs, request_id)

    def change(
        self,
        method: Callable[..., T],
        *args: Any,
        request_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        """As ``call``, for a method that writes."""
        if self._writer is None:
            return self._call(method, args, kwargs, request_id)
        # A turn no longer than the database's own wait: a writer stuck on a lock
        # held outside fails, and so does each one queued behind it, in that time.
        if not self._writer.acquire(timeout=self.store.timeout):
            raise _unavailable(request_id)
        try:
            return self._call(method, args, kwargs, request_id)
        finally:
            self._writer.release()

    def _call(
        self,
        method: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request_id: str | None,
    ) -> T:
        try:
            if self._offload is not None:
                return self._offload.run(method, *args, **kwargs)
            return method(*args, **kwargs)
        except NotFound as exc:
            raise ProtocolError("not_found", str(exc), request_id) from None
        except InvalidInput as exc:
            raise ProtocolError("invalid_request", str(exc), request_id) from None
        except StoreError as exc:
            log.warning("conversation store failed: %s", exc)
            raise _unavailable(request_id) from None
        except Exception:
            log.exception("conversation store failed")
            raise _unavailable(request_id) from None

    # -- what the REST API reads and changes ----------------------------------------

    def list(self, owner: str, limit: int, before: str | None, q: str | None) -> Page:
        return self.call(self.store.list, owner, limit, before, q)

    def get(self, owner: str, conversation_id: str) -> Conversation:
        return self.call(self.store.get, owner, conversation_id)

    def summary(self, owner: str, conversation_id: str) -> Conversation:
        """The conversation without its messages."""
        return self.call(self.store.summary, owner, conversation_id)

    def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        conversation = self.change(self.store.rename, owner, conversation_id, title)
        self.announce(conversation)
        return conversation

    def delete(self, owner: str, conversation_id: str) -> None:
        self.change(self.store.delete, owner, conversation_id)
        self.socketio.emit(
            "conversation_deleted", {"id": conversation_id}, to=room(owner)
        )

    def export(self, owner: str, conversation_id: str, format: str) -> str:
        return self.call(self.store.export, owner, conversation_id, format)

    def import_json(self, owner: str, document: str | bytes) -> Conversation:
        conversation = self.change(self.store.import_json, owner, document)
        self.announce(conversation)
        return conversation

    def blob(self, owner: str, sha256: str) -> Blob:
        return self.call(self.store.blob, owner, sha256)

    def message(self, owner: str, message_id: str) -> Message:
        return self.call(self.store.message, owner, message_id)

    def announce(self, conversation: Conversation) -> None:
        """Tell every connection of the owner, on any node, that a conversation
        appeared or changed (the page's other tabs list it)."""
        self.socketio.emit(
            "conversation",
            conversation.to_dict(messages=False),
            to=room(conversation.owner),
        )

    # -- a chat that continues or starts a conversation ----------------------------

    def prepare(
        self,
        owner: str,
        request: ChatRequest,
        limits: Limits,
        conversation_id: str | None,
        parent_id: str | None = LEAF,
    ) -> ChatRequest:
        """``request`` with the conversation's history before its messages, and the
        turn it adds (``request.turn``). Its messages are the client's new ones;
        without ``conversation_id`` they start a new conversation."""
        sent = request.messages
        instructions = [m for m in sent if m["role"] in _INSTRUCTIONS]
        new = [m for m in sent if m["role"] not in _INSTRUCTIONS]
        earlier: list[Message] = []
        if conversation_id is None:
            if not new:
                raise ProtocolError(
                    "invalid_request", "message: field required", request.id
                )
            parent = None
        else:
            summary = self.call(
                self.store.summary, owner, conversation_id, request_id=request.id
            )
            parent = summary.current_leaf_id if parent_id == LEAF else parent_id
            if parent is not None:
                earlier = self.call(
                    self.store.branch,
                    owner,
                    conversation_id,
                    parent,
                    data_urls=True,
                    request_id=request.id,
                )
            if not new and (not earlier or earlier[-1].role not in ("user", "tool")):
                raise ProtocolError(
                    "invalid_request",
                    "message: field required, unless parent_id names a user message "
                    "to answer again",
                    request.id,
                )
        messages = [*instructions, *(_as_sent(m) for m in earlier if _sendable(m))]
        messages += new
        if earlier:
            # The whole conversation is held to the limits a client sending it
            # would be.
            messages = check_messages(messages, limits, request.id)
        turn = Turn(
            owner=owner,
            conversation_id=conversation_id or new_id(),
            new=conversation_id is None,
            parent_id=parent,
            messages=[(new_id(), m) for m in new],
            answer_id=new_id(),
            model=request.model,
        )
        return replace(request, messages=messages, turn=turn)

    def write_turn(self, turn: Turn, request_id: str) -> None:
        """Write the client's new messages (and the conversation, when new)."""
        conversation = self.change(
            self.store.add_turn,
            turn.owner,
            turn.conversation_id,
            turn.parent_id,
            [
                (message_id, message["role"], _content(message), _fields(message))
                for message_id, message in turn.messages
            ],
            new=turn.new,
            model=turn.model,
            request_id=request_id,
        )
        turn.written = True
        if turn.new:
            self.announce(conversation)

    def write_answer(self, turn: Turn, stream: Stream, event: str, payload: dict):
        """Write the answer as it ended: the text it had, and how it ended."""
        fields: dict[str, Any] = {"model": payload.get("model") or turn.model}
        reasoning = stream.reasoning()
        if reasoning:
            fields["reasoning"] = reasoning
        tool_calls = stream.tool_calls()
        if tool_calls:
            fields["tool_calls"] = tool_calls
        if event == "done":
            finish_reason = payload["finish_reason"]
            fields["usage"] = payload["usage"]
            fields["timing"] = payload["timing"]
        else:
            finish_reason = "error"
            fields["error"] = {"code": payload["code"], "message": payload["message"]}
        self.change(
            self.store.finish_message,
            turn.owner,
            turn.conversation_id,
            turn.answer_id,
            turn.answer_parent,
            stream.text(ANSWER) or stream.text(REFUSAL),
            finish_reason=finish_reason,
            request_id=stream.id,
            **fields,
        )


class Recorder(Stage):
    """The core's stage that keeps each stored chat's turn in its conversation."""

    def __init__(self, history: History):
        self.history = history

    def starting(self, stream: Stream) -> None:
        turn = stream.request.turn
        if isinstance(turn, Turn):
            # Written while the upstream is asked: the first token never waits for
            # the database. A write that fails shows when the answer ends.
            turn.settled = settled = threading.Event()
            self.history.socketio.start_background_task(
                self._write, turn, stream.id, settled
            )

    def _write(self, turn: Turn, request_id: str, settled: threading.Event) -> None:
        try:
            self.history.write_turn(turn, request_id)
        except ProtocolError as exc:
            turn.failure = exc  # reported when the answer ends
        except Exception:
            log.exception("writing the turn of %s failed", request_id)
        finally:
            settled.set()

    def ending(self, stream: Stream, event: str, payload: dict[str, Any]) -> Event:
        turn = stream.request.turn
        if not isinstance(turn, Turn) or turn.settled is None:
            return event, payload  # refused before it began: nothing to keep
        # Bounded: each of the store's waits ends within its timeout.
        turn.settled.wait()
        try:
            if not turn.written:
                raise turn.failure or _unavailable(stream.id)
            self.history.write_answer(turn, stream, event, payload)
        except ProtocolError as exc:
            # The answer reached the client; that it is not kept must show.
            event = "error"
            payload = ProtocolError(
                exc.code,
                f"the answer was sent but could not be saved: {exc.message}",
                stream.id,
            ).payload()
        payload["conversation_id"] = turn.conversation_id
        payload["answer_id"] = turn.answer_id
        return event, payload


def _unavailable(request_id: str | None) -> ProtocolError:
    return ProtocolError(
        "history_unavailable",
        "the conversation store is unavailable; retry shortly",
        request_id,
    )


def _content(message: dict[str, Any]) -> str | list[dict[str, Any]]:
    # A tool-calling turn's assistant message may have no text.
    return message["content"] if message["content"] is not None else ""


def _fields(message: dict[str, Any]) -> dict[str, Any]:
    """What a client's message holds besides its role and content, as stored."""
    return {
        key: message[key] for key in ("tool_call_id", "tool_calls") if message.get(key)
    }


def _calls(message: Message) -> list[dict[str, Any]] | None:
    # Only calls the model finished making: one cut short (a stop, the length cap)
    # has arguments half written and no results, which an upstream refuses.
    return message.tool_calls if message.finish_reason == "tool_calls" else None


def _sendable(message: Message) -> bool:
    # An answer that ended before any text adds nothing for the model.
    return message.role != "assistant" or bool(message.content or _calls(message))


def _as_sent(message: Message) -> dict[str, Any]:
    """A stored message in the shape the model is sent."""
    sent: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "assistant" and _calls(message):
        sent["tool_calls"] = message.tool_calls
        sent["content"] = message.content or None
    if message.role == "tool":
        sent["tool_call_id"] = message.tool_call_id
    return sent
