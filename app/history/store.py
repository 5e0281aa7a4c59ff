"""The conversation store: every owner's conversations, their messages as a tree
(regenerating or editing adds a sibling), search, export and import.

Synchronous and thread-safe: one ``Engine``, a connection of its own for every call,
so any thread may call any method (SQLite's calls block their thread: run them off
the event loop). Every method takes the owner, and a conversation of another owner is
``NotFound``, exactly as one that does not exist. A database failure is a
``StoreError`` with a short message, within a few ``timeout``s.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from . import content as contents
from . import export as exports
from . import search
from .db import WRITE, create_engine, guard, upgrade
from .models import ID_LENGTH, UTCDateTime, blobs, conversations, message_blobs
from .models import messages as messages_table
from .records import ROLES, Conversation, InvalidInput, Message, NotFound, Page

MAX_PAGE = 100
MAX_TITLE_CHARS = 200
MAX_OWNER_CHARS = 255
# Optional fields of a message, with the type each must have.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "reasoning": str,
    "tool_calls": list,
    "tool_call_id": str,
    "finish_reason": str,
    "usage": dict,
    "timing": dict,
    "model": str,
    "error": dict,
}
_LENGTHS = {"tool_call_id": 255, "finish_reason": 32, "model": 255}

# The statements of every chat turn, built once: each call only binds its values
# (building a statement costs SQLAlchemy more than SQLite takes to run it).
_CONVERSATION = sa.select(conversations).where(
    conversations.c.id == sa.bindparam("b_id"),
    conversations.c.owner == sa.bindparam("b_owner"),
)
_MESSAGE = sa.select(messages_table).where(messages_table.c.id == sa.bindparam("b_id"))
_PARENT = sa.select(messages_table.c.conversation_id).where(
    messages_table.c.id == sa.bindparam("b_id")
)
_CHANGE = conversations.update().where(conversations.c.id == sa.bindparam("b_id"))


def new_id() -> str:
    """A random, URL-safe id (22 characters) for a conversation or a message; the
    relay may take one for an answer before writing it."""
    return secrets.token_urlsafe(16)


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    """Conversations of many owners in one SQL database."""

    def __init__(self, engine: Engine, timeout: float = 5.0):
        self.engine = engine
        self.dialect = engine.dialect.name
        # How long any one wait may take (see ``open``).
        self.timeout = timeout

    @classmethod
    def open(cls, url: str, *, timeout: float = 5.0, pool_size: int = 5) -> Store:
        """Connect to ``url`` (``DATABASE_URL``) and create or upgrade its schema.

        ``timeout`` bounds each wait: for a connection, a lock or SQLite's other
        writer (PostgreSQL's statements get three times as long). ``pool_size``
        connections are kept open, and as many more may be opened under load."""
        engine = create_engine(url, timeout, pool_size)
        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, timeout)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with guard(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with guard(), self.engine.execution_options(**WRITE).begin() as connection:
            yield connection

    # Conversations

    def create_conversation(
        self,
        owner: str,
        model: str | None = None,
        title: str | None = None,
        *,
        id: str | None = None,
    ) -> Conversation:
        """Start an empty conversation; its title comes from the first user message
        when none is given. ``id``: one taken with ``new_id()`` beforehand."""
        _check_owner(owner)
        model = _optional(model, "model", str)
        title = _title(title) if title is not None else None
        if id is not None:
            _check_id(id, "id")
        now = _now()
        conversation = Conversation(id or new_id(), owner, title, model, now, now)
        with self._write() as connection:
            self._create(connection, conversation)
        return conversation

    def summary(self, owner: str, conversation_id: str) -> Conversation:
        """The conversation without its messages."""
        with self._read() as connection:
            return self._conversation(connection, owner, conversation_id)

    def message(self, owner: str, message_id: str) -> Message:
        """One of the owner's messages, in whichever conversation it is."""
        _check_owner(owner)
        _check_id(message_id, "message_id")
        m, c = messages_table, conversations
        with self._read() as connection:
            row = connection.execute(
                sa.select(m)
                .join(c, c.c.id == m.c.conversation_id)
                .where(m.c.id == message_id, c.c.owner == owner)
            ).first()
            if row is None:
                raise NotFound("no such message")
            return self._messages(connection, [row], False)[0]

    def get(
        self, owner: str, conversation_id: str, *, data_urls: bool = False
    ) -> Conversation:
        """The conversation with every message, all branches, oldest first.
        ``data_urls``: image parts carry their data URL instead of ``blob:<sha256>``."""
        with self._read() as connection:
            conversation = self._conversation(connection, owner, conversation_id)
            rows = connection.execute(
                sa.select(messages_table)
                .where(messages_table.c.conversation_id == conversation.id)
                .order_by(messages_table.c.pk)
            ).all()
            found = self._messages(connection, rows, data_urls)
        return replace(conversation, messages=tuple(found))

    def branch(
        self,
        owner: str,
        conversation_id: str,
        leaf_id: str | None = None,
        *,
        data_urls: bool = False,
    ) -> list[Message]:
        """The messages from the root to ``leaf_id`` (by default the current leaf),
        in order: the history to send the model."""
        with self._read() as connection:
            conversation = self._conversation(connection, owner, conversation_id)
            if leaf_id is not None:
                _check_id(leaf_id, "leaf_id")
            leaf_id = leaf_id or conversation.current_leaf_id
            if leaf_id is None:
                return []
            m = messages_table
            path = (
                sa.select(m.c.pk, m.c.parent_id)
                .where(m.c.id == leaf_id, m.c.conversation_id == conversation.id)
                .cte("path", recursive=True)
            )
            parent = m.alias("parent")
            path = path.union_all(
                sa.select(parent.c.pk, parent.c.parent_id).join(
                    path, parent.c.id == path.c.parent_id
                )
            )
            rows = connection.execute(
                sa.select(m).where(m.c.pk.in_(sa.select(path.c.pk))).order_by(m.c.pk)
            ).all()
            if not rows:
                raise NotFound("no such message in this conversation")
            return self._messages(connection, rows, data_urls)

    def list(
        self,
        owner: str,
        limit: int = 50,
        before: str | None = None,
        q: str | None = None,
    ) -> Page:
        """The owner's conversations, most recently updated first, without their
        messages; ``before`` is the previous page's ``next_cursor``; ``q`` keeps
        those whose title or a message matches (see ``search``)."""
        _check_owner(owner)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit: a whole number from 1 to {MAX_PAGE}")
        c = conversations
        statement = sa.select(c).where(c.c.owner == owner)
        if before is not None:
            updated_at, last_id = _decode_cursor(before)
            statement = statement.where(
                sa.tuple_(c.c.updated_at, c.c.id)
                < sa.tuple_(
                    sa.literal(updated_at, UTCDateTime),
                    sa.literal(last_id, sa.String(ID_LENGTH)),
                )
            )
        statement = statement.order_by(c.c.updated_at.desc(), c.c.id.desc())
        if q is not None:
            q = without_nul(q)
        searching = q is not None and q.strip() != ""
        if searching and not search.has_terms(q):
            return Page([], None)
        with self._read() as connection:
            if searching:
                rows = search.find(connection, statement, q, limit + 1)
            else:
                rows = connection.execute(statement.limit(limit + 1)).all()
        found = [_conversation(row) for row in rows[:limit]]
        cursor = None
        if len(rows) > limit:
            cursor = _encode_cursor(found[-1].updated_at, found[-1].id)
        return Page(found, cursor)

    def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        """Set the title (1 to 200 characters, on one line)."""
        _check_owner(owner)
        _check_id(conversation_id, "conversation_id")
        title = _title(title)
        with self._write() as connection:
            row = connection.execute(
                conversations.update()
                .where(
                    conversations.c.id == conversation_id,
                    conversations.c.owner == owner,
                )
                .values(title=title)
                .returning(*conversations.c)
            ).first()
        if row is None:
            raise NotFound("no such conversation")
        return _conversation(row)

    def delete(self, owner: str, conversation_id: str) -> None:
        """Delete the conversation, its messages, and the images no other message
        shows."""
        m = messages_table
        with self._write() as connection:
            self._conversation(connection, owner, conversation_id)
            shown = sa.select(m.c.id).where(m.c.conversation_id == conversation_id)
            candidates = list(
                connection.scalars(
                    sa.select(message_blobs.c.sha256)
                    .where(message_blobs.c.message_id.in_(shown))
                    .distinct()
                )
            )
            # The messages go first, explicitly, so that every delete trigger (the
            # search index's) fires.
            connection.execute(
                message_blobs.delete().where(message_blobs.c.message_id.in_(shown))
            )
            connection.execute(m.delete().where(m.c.conversation_id == conversation_id))
            connection.execute(
                conversations.delete().where(conversations.c.id == conversation_id)
            )
            if candidates:
                still_shown = sa.select(message_blobs.c.sha256).where(
                    message_blobs.c.sha256 == blobs.c.sha256
                )
                connection.execute(
                    blobs.delete().where(
                        blobs.c.sha256.in_(candidates), ~sa.exists(still_shown)
                    )
                )

    # Messages

    def add_message(
        self,
        owner: str,
        conversation_id: str,
        parent_id: str | None,
        role: str,
        content: str | list[dict[str, Any]],
        *,
        id: str | None = None,
        **fields: Any,
    ) -> Message:
        """Add a message under ``parent_id`` (``None``: a new root, as an edited first
        message is) and make it the current leaf. The first user message titles an
        untitled conversation.

        ``fields``: ``reasoning``, ``tool_calls``, ``tool_call_id``,
        ``finish_reason``, ``usage``, ``timing``, ``model``, ``error``. ``id``: one
        taken with ``new_id()`` beforehand; a message of that id already in this
        conversation is returned as it is, so a retried write writes once."""
        _check_owner(owner)
        message = _new_message(conversation_id, parent_id, role, content, id, fields)
        stored = contents.prepare(message.content)
        message = replace(message, content=stored.content)
        with self._write() as connection:
            conversation = self._conversation(connection, owner, conversation_id)
            added, _ = self._add(
                connection, conversation, message, stored, id is not None
            )
        return added

    def add_turn(
        self,
        owner: str,
        conversation_id: str,
        parent_id: str | None,
        turn: list[tuple[str, str, str | list[dict[str, Any]], dict[str, Any]]],
        *,
        new: bool = False,
        model: str | None = None,
    ) -> Conversation:
        """Write a chat's new messages in one transaction, each under the one before
        it (the first under ``parent_id``), creating the conversation first when
        ``new`` (with ``model``): the conversation as it is then. ``turn``: each
        message's ``(id, role, content, fields)``, the ids taken beforehand; a
        message already written is left as it is, so a retried write writes once."""
        _check_owner(owner)
        _check_id(conversation_id, "conversation_id")
        model = _optional(model, "model", str)
        parent = parent_id
        checked = []
        for message_id, role, content, fields in turn:
            _check_id(message_id, "id")
            message = _new_message(
                conversation_id, parent, role, content, message_id, fields
            )
            stored = contents.prepare(message.content)
            checked.append((replace(message, content=stored.content), stored))
            parent = message_id
        with self._write() as connection:
            if new:
                now = _now()
                conversation = Conversation(
                    conversation_id, owner, None, model, now, now
                )
                self._create(connection, conversation)
            else:
                conversation = self._conversation(connection, owner, conversation_id)
            for message, stored in checked:
                _, conversation = self._add(
                    connection, conversation, message, stored, True
                )
        return conversation

    def finish_message(
        self,
        owner: str,
        conversation_id: str,
        message_id: str,
        parent_id: str,
        content: str | list[dict[str, Any]],
        *,
        finish_reason: str,
        **fields: Any,
    ) -> Message:
        """Write a model's answer once, when it ends (done, error or stop, with the
        text it had): ``message_id`` is the id announced when the chat started."""
        return self.add_message(
            owner,
            conversation_id,
            parent_id,
            "assistant",
            content,
            id=message_id,
            finish_reason=finish_reason,
            **fields,
        )

    def blob(self, owner: str, sha256: str) -> contents.Blob:
        """An image one of the owner's messages shows."""
        _check_id(sha256, "sha256")
        m, c = messages_table, conversations
        with self._read() as connection:
            row = connection.execute(
                sa.select(blobs)
                .join(message_blobs, message_blobs.c.sha256 == blobs.c.sha256)
                .join(m, m.c.id == message_blobs.c.message_id)
                .join(c, c.c.id == m.c.conversation_id)
                .where(blobs.c.sha256 == sha256, c.c.owner == owner)
                .limit(1)
            ).first()
        if row is None:
            raise NotFound("no such image")
        return contents.Blob(row.sha256, row.media_type, row.data)

    # Export and import

    def export(self, owner: str, conversation_id: str, format: str = "md") -> str:
        """The conversation as Markdown (its current branch, roles as headings) or
        JSON (every message, images as data URLs: ``import_json`` reads it back)."""
        if format not in ("md", "json"):
            raise InvalidInput("format: md or json")
        conversation = self.get(owner, conversation_id, data_urls=format == "json")
        if format == "json":
            return exports.to_json(conversation)
        return exports.to_markdown(conversation)

    def import_json(
        self, owner: str, document: str | bytes | dict[str, Any]
    ) -> Conversation:
        """Recreate an exported conversation for ``owner``, with new ids and the
        same tree, texts, images, fields and times."""
        _check_owner(owner)
        imported = exports.parse_json(document)
        ids = {message["id"]: new_id() for message in imported.messages}
        conversation = Conversation(
            new_id(),
            owner,
            imported.title,
            imported.model,
            imported.created_at,
            imported.updated_at,
            ids.get(imported.current_leaf_id) if imported.current_leaf_id else None,
        )
        prepared = []
        for index, item in enumerate(imported.messages):
            where = f"messages[{index}]"
            parent = item["parent_id"]
            fields = {key: item[key] for key in FIELDS if item.get(key) is not None}
            message = _new_message(
                conversation.id,
                ids[parent] if parent is not None else None,
                item["role"],
                item["content"],
                ids[item["id"]],
                fields,
                where,
            )
            stored = contents.prepare(message.content, f"{where}.content")
            message = replace(
                message, content=stored.content, created_at=item["created_at"]
            )
            prepared.append((message, stored))
        with self._write() as connection:
            connection.execute(
                conversations.insert().values(
                    id=conversation.id,
                    owner=owner,
                    title=conversation.title,
                    model=conversation.model,
                    created_at=conversation.created_at,
                    updated_at=conversation.updated_at,
                    current_leaf_id=conversation.current_leaf_id,
                )
            )
            for message, stored in prepared:
                self._insert(connection, owner, message, stored)
        return replace(conversation, messages=tuple(m for m, _ in prepared))

    # Inside a transaction

    def _conversation(
        self, connection: sa.Connection, owner: str, conversation_id: str
    ) -> Conversation:
        _check_owner(owner)
        _check_id(conversation_id, "conversation_id")
        row = connection.execute(
            _CONVERSATION, {"b_id": conversation_id, "b_owner": owner}
        ).first()
        if row is None:
            raise NotFound("no such conversation")
        return _conversation(row)

    def _create(self, connection: sa.Connection, conversation: Conversation) -> None:
        connection.execute(
            conversations.insert(),
            {
                "id": conversation.id,
                "owner": conversation.owner,
                "title": conversation.title,
                "model": conversation.model,
                "created_at": conversation.created_at,
                "updated_at": conversation.updated_at,
            },
        )

    def _add(
        self,
        connection: sa.Connection,
        conversation: Conversation,
        message: Message,
        stored: contents.Stored,
        retried: bool,
    ) -> tuple[Message, Conversation]:
        """Add ``message`` to ``conversation`` and make it the current leaf (the
        first user message titles an untitled conversation): the message and the
        conversation as they are then. ``retried``: a message of its id already
        here is returned as it is."""
        if retried:
            existing = self._existing(connection, conversation.id, message.id)
            if existing is not None:
                return existing, conversation
        self._insert(connection, conversation.owner, message, stored)
        values: dict[str, Any] = {
            "updated_at": message.created_at,
            "current_leaf_id": message.id,
        }
        if conversation.title is None and message.role == "user":
            values["title"] = contents.title_from(stored.text)
        connection.execute(_CHANGE, {"b_id": conversation.id, **values})
        return message, replace(conversation, **values)

    def _existing(
        self, connection: sa.Connection, conversation_id: str, message_id: str
    ) -> Message | None:
        row = connection.execute(_MESSAGE, {"b_id": message_id}).first()
        if row is None:
            return None
        if row.conversation_id != conversation_id:
            raise InvalidInput("id: already the id of another message")
        return self._messages(connection, [row], False)[0]

    def _insert(
        self,
        connection: sa.Connection,
        owner: str,
        message: Message,
        stored: contents.Stored,
    ) -> None:
        m = messages_table
        if message.parent_id is not None:
            parent = connection.execute(_PARENT, {"b_id": message.parent_id}).first()
            if parent is None or parent.conversation_id != message.conversation_id:
                raise InvalidInput("parent_id: not a message of this conversation")
        if stored.refs:
            # A client may send back a blob: URL it was given, never guess another
            # owner's.
            c = conversations
            owned = set(
                connection.scalars(
                    sa.select(message_blobs.c.sha256)
                    .join(m, m.c.id == message_blobs.c.message_id)
                    .join(c, c.c.id == m.c.conversation_id)
                    .where(message_blobs.c.sha256.in_(stored.refs), c.c.owner == owner)
                    .distinct()
                )
            )
            if stored.refs - owned:
                raise InvalidInput("content: an image URL that is not a stored image")
        if stored.blobs:
            rows = [
                {
                    "sha256": blob.sha256,
                    "media_type": blob.media_type,
                    "data": blob.data,
                    "created_at": message.created_at,
                }
                for blob in stored.blobs.values()
            ]
            insert = (postgresql if self.dialect == "postgresql" else sqlite).insert
            connection.execute(insert(blobs).on_conflict_do_nothing(), rows)
        connection.execute(
            m.insert(),
            {
                "id": message.id,
                "conversation_id": message.conversation_id,
                "parent_id": message.parent_id,
                "role": message.role,
                "text": stored.text,
                "parts": stored.parts,
                "created_at": message.created_at,
                **{key: getattr(message, key) for key in FIELDS},
            },
        )
        shown = contents.referenced(stored.parts)
        if shown:
            connection.execute(
                message_blobs.insert(),
                [{"message_id": message.id, "sha256": sha} for sha in sorted(shown)],
            )

    def _messages(
        self, connection: sa.Connection, rows: Any, data_urls: bool
    ) -> list[Message]:
        found: dict[str, contents.Blob] = {}
        if data_urls:
            wanted = set()
            for row in rows:
                wanted |= contents.referenced(row.parts)
            if wanted:
                found = {
                    row.sha256: contents.Blob(row.sha256, row.media_type, row.data)
                    for row in connection.execute(
                        sa.select(blobs).where(blobs.c.sha256.in_(wanted))
                    )
                }
        result = []
        for row in rows:
            content: Any = row.text
            if row.parts is not None:
                content = contents.restore(row.parts, found) if found else row.parts
            result.append(
                Message(
                    id=row.id,
                    conversation_id=row.conversation_id,
                    parent_id=row.parent_id,
                    role=row.role,
                    content=content,
                    created_at=row.created_at,
                    **{key: getattr(row, key) for key in FIELDS},
                )
            )
        return result


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=row.id,
        owner=row.owner,
        title=row.title,
        model=row.model,
        created_at=row.created_at,
        updated_at=row.updated_at,
        current_leaf_id=row.current_leaf_id,
    )


def _new_message(
    conversation_id: str,
    parent_id: str | None,
    role: str,
    content: Any,
    message_id: str | None,
    fields: dict[str, Any],
    where: str = "",
) -> Message:
    prefix = f"{where}." if where else ""
    if role not in ROLES:
        raise InvalidInput(f"{prefix}role: one of {', '.join(ROLES)}")
    if parent_id is not None and not isinstance(parent_id, str):
        raise InvalidInput(f"{prefix}parent_id: a message id or null")
    if message_id is not None and (
        not isinstance(message_id, str) or not 1 <= len(message_id) <= ID_LENGTH
    ):
        raise InvalidInput(f"{prefix}id: a string of 1 to {ID_LENGTH} characters")
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"{prefix}{sorted(unknown)[0]}: not a message field")
    checked = {
        key: without_nul(_optional(fields.get(key), f"{prefix}{key}", kind))
        for key, kind in FIELDS.items()
    }
    return Message(
        id=message_id or new_id(),
        conversation_id=conversation_id,
        parent_id=parent_id,
        role=role,
        content=without_nul(content),
        created_at=_now(),
        **checked,
    )


def _optional(value: Any, field: str, kind: type | tuple[type, ...]) -> Any:
    if value is None:
        return None
    if not isinstance(value, kind):
        raise InvalidInput(f"{field}: the wrong type ({type(value).__name__})")
    limit = _LENGTHS.get(field.rsplit(".", 1)[-1])
    if limit is not None and len(value) > limit:
        raise InvalidInput(f"{field}: longer than {limit} characters")
    if isinstance(value, list | dict):
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{field}: not JSON data") from None
    return value


def _check_owner(owner: Any) -> None:
    if not isinstance(owner, str) or not 1 <= len(owner) <= MAX_OWNER_CHARS:
        raise InvalidInput(f"owner: a string of 1 to {MAX_OWNER_CHARS} characters")


def _check_id(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: a string")


def without_nul(value: Any) -> Any:
    """``value`` with U+FFFD for each NUL character in its strings: PostgreSQL's
    text cannot hold NUL, and both databases keep the same text."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {key: without_nul(item) for key, item in value.items()}
    return value


def _title(title: Any) -> str:
    if not isinstance(title, str):
        raise InvalidInput("title: a string")
    title = " ".join(without_nul(title).split())
    if not 1 <= len(title) <= MAX_TITLE_CHARS:
        raise InvalidInput(f"title: 1 to {MAX_TITLE_CHARS} characters")
    return title


def _encode_cursor(updated_at: datetime, conversation_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), conversation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if "\x00" in cursor:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, conversation_id = json.loads(raw)
        updated_at = datetime.fromisoformat(stamp)
        if (
            updated_at.tzinfo is None
            or not isinstance(conversation_id, str)
            or "\x00" in conversation_id
        ):
            raise ValueError
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput("before: not a cursor from this listing") from None
    return updated_at, conversation_id
