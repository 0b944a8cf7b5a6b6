"""The package as a user installs it: a wheel of this checkout, built the way `python -m build`
builds it (sdist, then the wheel from the sdist), installed into a fresh venv, and run from an
empty folder, with neither the checkout nor `pip install -e` in sight.

The wheel carries GraphiQL's assets when the build machine has npm; without npm it still
builds and the page says how to add them (DESIGN §6: migrations shipped inside the package)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import PG_ADMIN_URL, _drop_pg_database, _recreate_pg_database

ROOT = Path(__file__).resolve().parent.parent
BOUND = 30.0  # seconds: the longest any one wait for the server may take
KEY = re.compile(r"API key \(shown once\): (\S+)")
TENANT = re.compile(r"created tenant (\S+)")
ME = "{ me { tenantId } }"


@dataclass(frozen=True)
class Installed:
    bin: Path  # the fresh venv's bin directory
    graphiql: bool  # npm was on PATH when the wheel was built


def run(
    *args: str | Path, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    done = subprocess.run(  # noqa: S603
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One wheel and one venv for the module (pip's cache makes the install quick)."""
    work = tmp_path_factory.mktemp("package")
    run(sys.executable, "-m", "build", "--outdir", work / "dist", ROOT, timeout=300)
    [wheel] = (work / "dist").glob("syncgraph-*.whl")
    run(sys.executable, "-m", "venv", work / "venv", timeout=60)
    venv_python = work / "venv" / "bin" / "python"
    run(
        venv_python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, timeout=300
    )
    return Installed(bin=work / "venv" / "bin", graphiql=shutil.which("npm") is not None)


def user_environment(**extra: str) -> dict[str, str]:
    """The environment of a user who has only the installed package: no project settings,
    no path leading back into the checkout."""
    drop = ("SYNCGRAPH_", "DATABASE_URL", "PYTHON", "VIRTUAL_ENV", "COV_CORE_", "COVERAGE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(installed: Installed, folder: Path) -> Iterator[tuple[str, Callable[[], str]]]:
    """`syncgraph serve` in ``folder`` on a free port: yields its base URL and a function
    returning its output so far; ready when /healthz answers; always ended."""
    port, log = free_port(), folder.parent / f"{folder.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [installed.bin / "syncgraph", "serve", "--port", str(port)],
            cwd=folder,
            env=user_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_healthy(base, process, log)
            yield base, log.read_text
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_healthy(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + BOUND
    while True:
        assert process.poll() is None, f"syncgraph serve exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not healthy after {BOUND}s:\n{log.read_text()}"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


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
        tables = asyncio.run(_tables(url))
    finally:
        asyncio.run(_drop_pg_database(name))
    assert {"alembic_version", "tenants"} <= tables, tables


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()
