"""Alembic, driven from code: ``serve`` and ``migrate`` upgrade to head before serving."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

# Inside the package, so a wheel (pip install ., pipx, a Docker image) carries its migrations.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    if not MIGRATIONS.is_dir():
        raise RuntimeError(
            f"migrations not found at {MIGRATIONS}: this install of syncgraph is incomplete; "
            "reinstall it from a wheel or a checkout (pip install .)"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str) -> None:
    """Apply every migration (blocking: call before the event loop, or in a thread)."""
    command.upgrade(alembic_config(database_url), "head")


def revision(database_url: str, message: str) -> None:
    command.revision(alembic_config(database_url), message=message, autogenerate=True)
