"""The tables. The migrations in ``migrations/versions`` create them (and the
full-text search objects, which differ by database); a test checks that both agree.

Every table has an integer ``pk``, which orders rows by insertion and which the
full-text indexes key on (SQLite's external-content FTS5 tables need a stable integer
rowid), and conversations and messages have a random, URL-safe ``id`` besides, the one
clients see and the references use.
"""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Alembic's own table, named for this service in case the database is shared.
VERSION_TABLE = "chatstream_alembic_version"
ID_LENGTH = 32
# JSON documents: jsonb on PostgreSQL (compact, and queryable if ever needed).
JSONDoc = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
BigPk = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator):
    """A UTC timestamp: timestamptz on PostgreSQL; on SQLite a fixed-width text that
    sorts as time does, read back as an aware datetime."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("pk", BigPk, sa.Identity(), primary_key=True),
    sa.Column("id", sa.String(ID_LENGTH), nullable=False, unique=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("model", sa.String(255)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # No foreign key: the store keeps it pointing at one of the conversation's
    # messages, and a cycle of keys would complicate every delete.
    sa.Column("current_leaf_id", sa.String(ID_LENGTH)),
    # The listing: one owner's conversations, newest first, a page at a time.
    sa.Index("ix_conversations_owner_updated", "owner", "updated_at", "id"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("pk", BigPk, sa.Identity(), primary_key=True),
    sa.Column("id", sa.String(ID_LENGTH), nullable=False, unique=True),
    sa.Column(
        "conversation_id",
        sa.String(ID_LENGTH),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # Regenerating an answer or editing a message adds a sibling: a tree.
    sa.Column(
        "parent_id",
        sa.String(ID_LENGTH),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
    ),
    sa.Column("role", sa.String(16), nullable=False),
    # The content's text (all of it, or its text parts joined): what search indexes.
    sa.Column("text", sa.Text, nullable=False),
    # The content parts when the content is a list (images by reference), else null.
    sa.Column("parts", JSONDoc),
    sa.Column("reasoning", sa.Text),
    sa.Column("tool_calls", JSONDoc),
    sa.Column("tool_call_id", sa.String(255)),
    sa.Column("finish_reason", sa.String(32)),
    sa.Column("usage", JSONDoc),
    sa.Column("timing", JSONDoc),
    sa.Column("model", sa.String(255)),
    sa.Column("error", JSONDoc),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_messages_conversation_id_pk", "conversation_id", "pk"),
    sa.Index("ix_messages_parent_id", "parent_id"),
)

# Image bytes, once each whatever the number of messages showing them.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("media_type", sa.String(255), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Which message shows which blob: what decides a blob's owners, and when it is an
# orphan.
message_blobs = sa.Table(
    "message_blobs",
    metadata,
    sa.Column(
        "message_id",
        sa.String(ID_LENGTH),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "sha256",
        sa.String(64),
        sa.ForeignKey("blobs.sha256"),
        primary_key=True,
    ),
    sa.Index("ix_message_blobs_sha256", "sha256"),
)
