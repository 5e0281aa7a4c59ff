"""Full-text search over titles and message texts, as a condition on conversations:
SQLite's FTS5, PostgreSQL's own (``websearch_to_tsquery``).

Both read a query the way web search boxes do: words (all must match), ``"a
phrase"``, ``or`` between alternatives, ``-word`` to exclude, each against one message
(or the title) at a time. Words match whole (no stemming, no prefixes),
case-insensitively. A query with no word to look for (only punctuation, or only
exclusions) matches nothing, on both.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import TSVECTOR

from .models import conversations, messages

# The text search configuration on PostgreSQL: language-neutral, as FTS5's unicode61.
PG_CONFIG = "simple"
_TOKEN = re.compile(r'"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+)')
# What both tokenizers index: letters and digits (an underscore separates words).
_INDEXED = re.compile(r"[^\W_]")


def has_terms(q: str) -> bool:
    """Whether ``q`` holds a word to look for."""
    return fts5_query(q) is not None


def fts5_query(q: str) -> str | None:
    """``q`` in FTS5's query syntax, every term quoted so that no input is a syntax
    error; ``None`` when there is nothing to look for."""
    wanted: list[str] = []
    excluded: list[str] = []
    for match in _TOKEN.finditer(q):
        phrase, word = match["phrase"], match["word"]
        if word is not None and word.lower() == "or":
            if wanted and wanted[-1] != "OR":
                wanted.append("OR")
            continue
        if word is not None and word.startswith("-"):
            if _INDEXED.search(word):
                excluded.append(_quote(word[1:]))
            continue
        term = phrase if phrase is not None else word
        if _INDEXED.search(term):
            wanted.append(_quote(term))
    while wanted and wanted[-1] == "OR":
        wanted.pop()
    if not wanted:
        return None
    return "".join([f"({' '.join(wanted)})", *(f" NOT {term}" for term in excluded)])


def find(
    connection: sa.Connection, listing: sa.Select, q: str, count: int
) -> list[sa.Row]:
    """The first ``count`` rows of ``listing`` (conversations, in order) whose title
    or any message's text matches ``q``."""
    if connection.dialect.name != "sqlite":
        return connection.execute(listing.where(_postgresql(q)).limit(count)).all()
    query = fts5_query(q)
    if _dense(connection, query):
        # Nearly every conversation matches: check them one by one, newest first,
        # instead of collecting every match, but within a window, in case this
        # owner's conversations are the exception.
        window = listing.limit(WINDOW).subquery()
        rows = connection.execute(
            sa.select(window)
            .where(_sqlite_each(query, window.c.pk, window.c.id))
            .order_by(window.c.updated_at.desc(), window.c.id.desc())
            .limit(count)
        ).all()
        if len(rows) == count:
            return rows
        seen = connection.execute(sa.select(sa.func.count()).select_from(window))
        if seen.scalar_one() < WINDOW:
            return rows  # the window held them all
    return connection.execute(listing.where(_sqlite_all(query)).limit(count)).all()


# How many of an owner's conversations, at most, are checked one by one.
WINDOW = 300
_conversations_fts = sa.table("conversations_fts", sa.column("rowid"))
_messages_fts = sa.table("messages_fts", sa.column("rowid"))


def _match(table: str, query: str | None) -> sa.ColumnElement[bool]:
    return sa.literal_column(table).op("MATCH")(sa.literal(query))


def _titles(query: str | None, pk: sa.ColumnElement) -> sa.ColumnElement[bool]:
    return pk.in_(
        sa.select(_conversations_fts.c.rowid).where(_match("conversations_fts", query))
    )


def _sqlite_all(query: str | None) -> sa.ColumnElement[bool]:
    """Every matching message collected, then their conversations: fast unless
    the word is in most messages."""
    texts = (
        sa.select(messages.c.conversation_id)
        .join(_messages_fts, _messages_fts.c.rowid == messages.c.pk)
        .where(_match("messages_fts", query))
    )
    return sa.or_(_titles(query, conversations.c.pk), conversations.c.id.in_(texts))


def _sqlite_each(
    query: str | None, pk: sa.ColumnElement, conversation_id: sa.ColumnElement
) -> sa.ColumnElement[bool]:
    """One look-up in the index per message of each conversation checked."""
    texts = sa.exists().where(
        messages.c.conversation_id == conversation_id,
        _messages_fts.c.rowid == messages.c.pk,
        _match("messages_fts", query),
    )
    return sa.or_(_titles(query, pk), texts)


def _dense(connection: sa.Connection, query: str | None) -> bool:
    """Whether the query matches at least a fifth of all messages (counting stops
    there)."""
    last = connection.execute(sa.select(sa.func.max(messages.c.pk))).scalar() or 0
    threshold = max(2000, last // 5)
    matches = sa.select(_messages_fts.c.rowid).where(_match("messages_fts", query))
    counted = connection.execute(
        sa.select(sa.func.count()).select_from(matches.limit(threshold).subquery())
    ).scalar_one()
    return counted >= threshold


def _postgresql(q: str) -> sa.ColumnElement[bool]:
    """PostgreSQL picks per query between checking each conversation's messages
    (a common word) and collecting the matches from the GIN index (a rare one)."""
    tsquery = sa.func.websearch_to_tsquery(
        sa.literal_column(f"'{PG_CONFIG}'::regconfig"), q
    )
    title_vector = sa.literal_column("conversations.search", TSVECTOR)
    text_vector = sa.literal_column("messages.search", TSVECTOR)
    return sa.or_(
        title_vector.op("@@")(tsquery),
        sa.exists().where(
            messages.c.conversation_id == conversations.c.id,
            text_vector.op("@@")(tsquery),
        ),
    )


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'
