"""What the store hands out: plain, immutable records (safe to pass between threads,
never tied to a database session), and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The roles a stored message may have: the system prompt belongs to the server and is
# never stored.
ROLES = ("user", "assistant", "tool")


class HistoryError(Exception):
    """Base of the store's errors."""


class StoreError(HistoryError):
    """The database failed (unreachable, full, busy past the timeout): the message is
    short and safe to show; the cause is chained."""


class NotFound(HistoryError):
    """No such conversation or message for this owner; also when it belongs to another
    owner, whose conversations' existence is never revealed."""


class InvalidInput(HistoryError, ValueError):
    """The caller's input is unusable; the message names the field."""


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    # The text, or a list of OpenAI content parts; an image part's URL is
    # ``blob:<sha256>`` unless the data URLs were asked for.
    content: str | list[dict[str, Any]]
    created_at: datetime
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    model: str | None = None
    # How an answer that failed ended: {code, message}.
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message as JSON-ready data (times in ISO 8601, UTC)."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "role": self.role,
            "content": self.content,
            "reasoning": self.reasoning,
            "tool_calls": self.tool_calls,
            "tool_call_id": self.tool_call_id,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "timing": self.timing,
            "model": self.model,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Conversation:
    id: str
    owner: str
    title: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime
    # The message the page shows last: the end of the branch in view.
    current_leaf_id: str | None = None
    # Every message, oldest first, all branches; empty in a listing.
    messages: tuple[Message, ...] = field(default=())

    def to_dict(self, messages: bool = True) -> dict[str, Any]:
        """The conversation as JSON-ready data; the owner stays out of it."""
        data: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "current_leaf_id": self.current_leaf_id,
        }
        if messages:
            data["messages"] = [message.to_dict() for message in self.messages]
        return data


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; ``next_cursor`` (``None`` on the last
    page) is the ``before`` of the next one."""

    conversations: list[Conversation]
    next_cursor: str | None
