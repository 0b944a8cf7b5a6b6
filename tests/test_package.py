"""The package as a user installs it: a wheel of this checkout, built the way `python -m build`
builds it (sdist, then the wheel from the sdist), installed into a fresh venv, and run from an
empty folder, with neither the checkout nor `pip install -e` in sight.

The wheel carries GraphiQL's assets when the build machine has npm; without npm it still
builds and the page says how to add them (DESIGN §6: migrations shipped inside the package)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx

from tests.conftest import PG_ADMIN_URL, _drop_pg_database, _recreate_pg_database
from tests.package import BOUND, Installed, pg_tables, run, serving, user_environment

KEY = re.compile(r"API key \(shown once\): (\S+)")
TENANT = re.compile(r"created tenant (\S+)")
ME = "{ me { tenantId } }"


def test_the_installed_code_is_the_wheels(installed: Installed, tmp_path: Path) -> None:
    where = run(
        installed.bin / "python",
        "-c",
        "import app; print(app.__file__)",
        timeout=60,
        env=user_environment(),
        cwd=tmp_path,  # `python -c` puts the working folder first on sys.path
    )
    assert Path(where.strip()).is_relative_to(installed.bin.parent), where


def test_serve_from_an_empty_folder(installed: Installed, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with serving(installed, folder) as (base, output):
        key, tenant = KEY.search(output()), TENANT.search(output())
        assert key, output()
        assert tenant, output()
        auth = {"Authorization": f"Bearer {key[1]}"}
        me = httpx.post(f"{base}/graphql", json={"query": ME}, headers=auth, timeout=BOUND)
        page = httpx.get(f"{base}/graphql", headers={"Accept": "text/html"}, timeout=BOUND)
    assert me.status_code == 200, me.text
    assert me.json()["data"] == {"me": {"tenantId": tenant[1]}}
    assert (folder / "syncgraph.db").is_file()  # dev mode: SQLite in the working folder
    if installed.graphiql:
        assert page.status_code == 200, page.text
        assert "/static/graphiql/graphiql@" in page.text
    else:
        assert page.status_code == 503
        assert "python -m build --wheel" in page.text


def test_migrate_postgresql(installed: Installed, tmp_path: Path) -> None:
    name = f"syncgraph_package_{os.getpid()}"
    asyncio.run(_recreate_pg_database(name))
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        run(
            installed.bin / "syncgraph",
            "migrate",
            timeout=120,
            cwd=tmp_path,
            env=user_environment(
                DATABASE_URL=url.replace("postgresql://", "postgresql+asyncpg://")
            ),
        )
        tables = asyncio.run(pg_tables(url))
    finally:
        asyncio.run(_drop_pg_database(name))
    assert {"alembic_version", "tenants"} <= tables, tables
