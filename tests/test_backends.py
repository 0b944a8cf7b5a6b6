"""What the database backends decide outside the engine: serving with several processes."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import syncgraph


async def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    """Each worker is a process of its own, and only PostgreSQL tells every process about
    the others' commits."""
    url = f"sqlite+aiosqlite:///{tmp_path}/workers.db"
    run = await syncgraph(url, "serve", "--workers", "2", "--no-dev", cwd=tmp_path)
    assert run.code == 2, run.stderr
    assert "several workers need PostgreSQL" in run.stderr
