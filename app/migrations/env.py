"""Alembic environment: async engine, SQLModel metadata, batch mode on SQLite."""

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from app.db.postgres import connection_options
from app.domains import load_registry
from app.settings import Settings

load_registry()  # imports every entity table into SQLModel.metadata
target_metadata = SQLModel.metadata


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set: run migrations through app.migrate")
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):  # the server's driver options (URL numbers, a pooler)
        engine_url, connect_args = connection_options(Settings(database_url=url))
        connect_args["command_timeout"] = None  # a migration's DDL may take long on big tables
        url = engine_url.render_as_string(hide_password=False)
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
