"""Alembic environment: migrations run on the connection stepflash hands over (see
`stepflash.accounts.database`), never on a URL read from an alembic.ini."""

from alembic import context

from stepflash.accounts.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
