"""Fixtures for the real client libraries: Node with examples/clients/node_modules (npm ci
from the lock file), a live server, and a line-oriented driver process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.state import AppState
from tests.api.live import live_server
from tests.node import npm_ci, tool

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "clients"
DRIVERS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def node() -> str:
    """Node, with examples/clients/node_modules installed exactly as locked."""
    npm_ci(RECIPES)
    return tool("node")


@pytest.fixture
async def host(state: AppState) -> AsyncIterator[str]:
    async with live_server(state) as address:
        yield address


class Driver:
    """A Node process that answers one JSON line per JSON command line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, node: str, script: str, *args: str) -> Driver:
        process = await asyncio.create_subprocess_exec(
            node,
            str(DRIVERS / script),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def read(self, within: float = 60.0) -> dict[str, Any]:
        """The next answer line (a hung or dead driver fails with its stderr)."""
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raw = b""
        if not raw:
            self.process.kill()
            assert self.process.stderr is not None
            error = (await self.process.stderr.read()).decode()
            raise AssertionError(f"the driver gave no answer:\n{error}")
        return dict(json.loads(raw))

    async def call(self, op: str, **command: Any) -> dict[str, Any]:
        """Run one command; a command that threw fails the test with the driver's stack."""
        answer = await self.ask(op, **command)
        assert answer.pop("ok") is True, answer.get("error")
        return answer

    async def ask(self, op: str, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **command}).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def close(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def drivers() -> AsyncIterator[list[Driver]]:
    """Driver processes a test starts are stopped when it ends."""
    started: list[Driver] = []
    yield started
    for driver in started:
        await driver.close()
