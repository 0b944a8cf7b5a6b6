"""syncgraph as a user installs it, for the tests that run it from the outside: a wheel of this
checkout built the way `python -m build` builds it (sdist, then the wheel from the sdist) and
installed into a fresh venv (the ``installed`` fixture in conftest.py builds it once per
session), commands run in it with a user's environment, and `syncgraph serve` on a free port."""

from __future__ import annotations

import os
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

ROOT = Path(__file__).resolve().parent.parent
BOUND = 30.0  # seconds: the longest any one wait for the server may take


@dataclass(frozen=True)
class Installed:
    bin: Path  # the fresh venv's bin directory
    graphiql: bool  # npm was on PATH when the wheel was built


def install(work: Path) -> Installed:
    """Build the wheel and install it into a fresh venv under ``work`` (pip's cache makes the
    dependencies quick to install)."""
    run(sys.executable, "-m", "build", "--outdir", work / "dist", ROOT, timeout=300)
    [wheel] = (work / "dist").glob("syncgraph-*.whl")
    run(sys.executable, "-m", "venv", work / "venv", timeout=60)
    installed = Installed(bin=work / "venv" / "bin", graphiql=shutil.which("npm") is not None)
    pip_install(installed, wheel)
    return installed


def pip_install(installed: Installed, *args: str | Path) -> None:
    """``pip install`` in the venv, as the user runs it (no PYTHONPATH leading pip to count
    the checkout as installed)."""
    python = installed.bin / "python"
    pip = (python, "-m", "pip", "install", "-q", "--disable-pip-version-check")
    run(*pip, *args, timeout=300, env=user_environment())


def run(
    *args: str | Path, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    done = subprocess.run(  # noqa: S603
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


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
def serving(
    installed: Installed, folder: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, Callable[[], str]]]:
    """`syncgraph serve` in ``folder`` on a free port: yields its base URL and a function
    returning its output so far; ready when /healthz answers; always ended."""
    port, log = free_port(), folder.parent / f"{folder.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [installed.bin / "syncgraph", "serve", "--port", str(port)],
            cwd=folder,
            env=env or user_environment(),
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


async def pg_tables(dsn: str) -> set[str]:
    """The tables of a PostgreSQL database (``dsn``: asyncpg's form)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()
