"""The database under the store: the engine for a ``DATABASE_URL`` (SQLite or
PostgreSQL), its schema brought to the newest migration, and database failures turned
into short ``StoreError``s, each within a bounded time.

Both databases are reached through one thread-safe ``Engine``; every store call takes a
connection of its own from its pool. SQLite's calls block their thread (the caller runs
them off the event loop). psycopg waits for PostgreSQL through Python's ``select``, so
that under gevent or eventlet a call yields to the other greenlets while it waits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url

from ..internals import cooperative_psycopg
from .models import VERSION_TABLE
from .records import HistoryError, InvalidInput, StoreError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The execution option that makes a connection's transactions take SQLite's write
# lock when they begin (BEGIN IMMEDIATE): a write that waits does so for the busy
# timeout, instead of failing at once when another writer got there in between.
WRITE = {"chatstream_begin": "IMMEDIATE"}
# Held by the migration on PostgreSQL, so that nodes starting together migrate once.
MIGRATION_LOCK = 0x63687374  # "chst"


def normalize_url(url: str) -> URL:
    """``url`` with PostgreSQL's default driver being psycopg 3, and a relative SQLite
    path under the repository."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise InvalidInput("DATABASE_URL: not a database URL") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend != "sqlite":
        raise InvalidInput("DATABASE_URL: sqlite:///… or postgresql://…")
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise InvalidInput("DATABASE_URL: an SQLite file path (sqlite:///PATH)")
    path = Path(database)
    if not path.is_absolute():
        path = ROOT / path
    return parsed.set(database=str(path))


def create_engine(url: str, timeout: float, pool_size: int) -> Engine:
    """An engine for ``url`` whose every wait (connect, pool, lock, statement) ends
    within a few ``timeout``s."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, timeout, pool_size)
    return _postgresql_engine(parsed, timeout, pool_size)


def _sqlite_engine(url: URL, timeout: float, pool_size: int) -> Engine:
    path = Path(url.database or "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"database folder cannot be created: {error.strerror}") from (
            error
        )
    engine = sa.create_engine(
        url,
        # sqlite3's busy timeout: how long a statement waits for another writer.
        connect_args={"timeout": timeout},
        # A connection for each thread that calls at once: one opened past the pool
        # is closed after its call, and a new one parses the schema again.
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout,
    )

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # BEGIN is emitted below, not by sqlite3 (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # Safe in WAL mode: a power cut may lose the last commits, never corrupt.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        # DEFERRED for reads (they never wait for writers in WAL mode); IMMEDIATE for
        # writes (see WRITE).
        mode = connection.get_execution_options().get("chatstream_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _postgresql_engine(url: URL, timeout: float, pool_size: int) -> Engine:
    cooperative_psycopg()
    millis = int(timeout * 1000)
    wanted: dict[str, Any] = {
        # libpq counts in whole seconds, at least 2.
        "connect_timeout": max(2, math.ceil(timeout)),
        "application_name": "chatstream",
        # A server that stopped answering (a dropped network) is noticed in about
        # ``timeout`` + 3 s, while waiting or while sending.
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(timeout)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": millis + 3000,
        # JIT compiling costs more than these short queries take.
        "options": (
            f"-c lock_timeout={millis} -c statement_timeout={3 * millis}"
            f" -c idle_in_transaction_session_timeout={6 * millis} -c jit=off"
        ),
    }
    connect_args = {k: v for k, v in wanted.items() if k not in url.query}
    return sa.create_engine(
        url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout,
        # A connection the server closed (a restart) is replaced, not reported.
        pool_pre_ping=True,
    )


def upgrade(engine: Engine) -> None:
    """Create the schema, or bring it to the newest migration; run on every start,
    a no-op when it is current."""
    # Alembic logs its set-up (at import) and each step at every start; the store
    # logs what changed.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    with guard(), engine.execution_options(**WRITE).begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
            )
        options = {"version_table": VERSION_TABLE}
        context = MigrationContext.configure(connection, opts=options)
        before = context.get_current_revision()
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, "head")
        except CommandError as error:
            # A revision this code does not know: a newer version migrated it.
            raise StoreError(f"database schema {before} is unknown here") from error
        after = context.get_current_revision()
    if after != before:
        log.info(
            "conversation store %s: schema at %s (was %s)",
            engine.url.render_as_string(hide_password=True),
            after,
            before or "empty",
        )


def current_revision(engine: Engine) -> str | None:
    """The schema's migration revision (``None`` for an empty database)."""
    from alembic.migration import MigrationContext

    with guard(), engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        )
        return context.get_current_revision()


@contextmanager
def guard() -> Iterator[None]:
    """Turn a database failure into a ``StoreError`` with a short message."""
    try:
        yield
    except HistoryError:
        raise
    except exc.TimeoutError as error:
        raise StoreError("database busy: no free connection") from error
    except exc.DBAPIError as error:
        raise StoreError(_describe(error)) from error
    except (exc.SQLAlchemyError, OSError) as error:
        raise StoreError("database unavailable") from error


def _describe(error: exc.DBAPIError) -> str:
    original = error.orig
    # SQLITE_IOERR_WRITE and the like: the base code decides.
    sqlite = getattr(original, "sqlite_errorname", None)
    if sqlite is not None:
        return {
            "SQLITE_FULL": "database full: no space left",
            "SQLITE_BUSY": "database busy: locked by another writer",
            "SQLITE_LOCKED": "database busy: locked by another writer",
            "SQLITE_CANTOPEN": "database cannot be opened",
            "SQLITE_READONLY": "database is read-only",
            "SQLITE_IOERR": "database I/O error",
            "SQLITE_CORRUPT": "database file is corrupt",
            "SQLITE_NOTADB": "database file is not an SQLite database",
        }.get("_".join(sqlite.split("_")[:2]), "database error")
    state = getattr(original, "sqlstate", None) or ""
    if state == "53100":
        return "database full: no space left"
    if state in ("55P03", "40P01", "40001"):
        return "database busy: lock not available"
    if state == "57014":
        return "database timed out"
    if state.startswith(("08", "57P")) or error.connection_invalidated or not state:
        return "database unavailable"
    return "database error"
