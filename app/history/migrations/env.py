"""Alembic's environment: migrations run on the connection the store hands over
(``app.history.db.upgrade``), inside its transaction, which it commits."""

from alembic import context

from app.history.models import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through app.history.db.upgrade(engine)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
