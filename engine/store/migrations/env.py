"""Alembic's environment for the store: run migrations on the connection ``db.migrate`` hands over.

Never run from the ``alembic`` command line: the engine migrates its own database at start
(``Database.__init__``), so there is no ``alembic.ini`` and no URL here.
"""

from alembic import context

from potluck.engine.store.tables import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most columns; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
