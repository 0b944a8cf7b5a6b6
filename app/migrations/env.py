"""Alembic environment, run by ``app.migrate`` alone: it passes the connection (inside the
transaction it owns) and the tables autogenerate may write about; the database's own options
(batch mode on SQLite) come from ``app.db``."""

from typing import Any

from alembic import context
from alembic.operations.ops import MigrationScript
from sqlmodel import SQLModel

from app.migrate import compare_options

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through app.migrate (syncgraph migrate)")


def skip_empty(_context: Any, _revision: Any, directives: list[MigrationScript]) -> None:
    """Autogenerate that finds nothing to do writes no file."""
    if all(ops.is_empty() for ops in directives[0].upgrade_ops_list):
        directives[:] = []


context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    process_revision_directives=skip_empty,
    **compare_options(connection, config.attributes["tables"]),
)
with context.begin_transaction():
    context.run_migrations()
