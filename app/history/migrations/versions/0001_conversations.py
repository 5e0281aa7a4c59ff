"""Conversations, their messages as a tree, image blobs, and full-text search.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(32)
JSON = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)
# What PostgreSQL indexes of a message: tsvector holds at most 1 MB.
PG_TEXT_INDEXED = 200_000


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"

    def search(source: str) -> list[sa.Column]:
        if not postgres:
            return []
        expression = f"to_tsvector('simple'::regconfig, {source})"
        return [
            sa.Column(
                "search", postgresql.TSVECTOR, sa.Computed(expression, persisted=True)
            )
        ]

    op.create_table(
        "conversations",
        sa.Column("pk", PK, sa.Identity(), primary_key=True),
        sa.Column("id", ID, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("title", sa.Text),
        sa.Column("model", sa.String(255)),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("current_leaf_id", ID),
        *search("coalesce(title, '')"),
        sa.PrimaryKeyConstraint("pk", name="pk_conversations"),
        sa.UniqueConstraint("id", name="uq_conversations_id"),
    )
    op.create_index(
        "ix_conversations_owner_updated",
        "conversations",
        ["owner", "updated_at", "id"],
    )
    op.create_table(
        "messages",
        sa.Column("pk", PK, sa.Identity(), primary_key=True),
        sa.Column("id", ID, nullable=False),
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("parent_id", ID),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("parts", JSON),
        sa.Column("reasoning", sa.Text),
        sa.Column("tool_calls", JSON),
        sa.Column("tool_call_id", sa.String(255)),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("usage", JSON),
        sa.Column("timing", JSON),
        sa.Column("model", sa.String(255)),
        sa.Column("error", JSON),
        sa.Column("created_at", TIME, nullable=False),
        *search(f"left(text, {PG_TEXT_INDEXED})"),
        sa.PrimaryKeyConstraint("pk", name="pk_messages"),
        sa.UniqueConstraint("id", name="uq_messages_id"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["messages.id"],
            name="fk_messages_parent_id_messages",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_messages_conversation_id_pk", "messages", ["conversation_id", "pk"]
    )
    op.create_index("ix_messages_parent_id", "messages", ["parent_id"])
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_blobs"),
    )
    op.create_table(
        "message_blobs",
        sa.Column("message_id", ID, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "sha256", name="pk_message_blobs"),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_blobs_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sha256"], ["blobs.sha256"], name="fk_message_blobs_sha256_blobs"
        ),
    )
    op.create_index("ix_message_blobs_sha256", "message_blobs", ["sha256"])

    if postgres:
        for table in ("conversations", "messages"):
            op.create_index(
                f"ix_{table}_search", table, ["search"], postgresql_using="gin"
            )
    else:
        for table, column in (("conversations", "title"), ("messages", "text")):
            _fts5(table, column)


def _fts5(table: str, column: str) -> None:
    """An external-content FTS5 index of ``table.column`` (the text is not stored
    twice), kept in step by triggers."""
    fts = f"{table}_fts"
    op.execute(
        f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, content='{table}',"
        " content_rowid='pk', tokenize='unicode61 remove_diacritics 2')"
    )
    add = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.pk, new.{column});"
    remove = (
        f"INSERT INTO {fts}({fts}, rowid, {column})"
        f" VALUES ('delete', old.pk, old.{column});"
    )
    op.execute(f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN {add} END")
    op.execute(
        f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN {remove} END"
    )
    op.execute(
        f"CREATE TRIGGER {fts}_update AFTER UPDATE OF {column} ON {table}"
        f" BEGIN {remove} {add} END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in ("conversations", "messages"):
            for action in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER {table}_fts_{action}")
            op.execute(f"DROP TABLE {table}_fts")
    op.drop_table("message_blobs")
    op.drop_table("blobs")
    op.drop_table("messages")
    op.drop_table("conversations")
