"""The real `graphql-ws` npm client (as a frontend uses it) against a live server: Node runs
tests/js/subscribe.mjs, which subscribes; this side writes; the script prints what it got."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.state import AppState
from tests.api.live import live_server
from tests.conftest import Tenant
from tests.node import npm_ci, tool

JS = Path(__file__).resolve().parent.parent / "js"
SCRIPT = JS / "subscribe.mjs"
SYNC = """mutation($input: SyncInput!) { sync(input: $input) { checkpoint users { ids } } }"""
DELETE = """mutation($id: ID!) { pushChanges(input: {users: {deleted: [{id: $id}]}}) {
  checkpoint applied } }"""


@pytest.fixture(scope="session")
def node() -> str:
    """Node, with tests/js/node_modules installed exactly as locked."""
    npm_ci(JS)
    return tool("node")


@pytest.fixture
async def host(state: AppState) -> AsyncIterator[str]:
    async with live_server(state) as address:
        yield address


class Script:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, within: float = 25.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            self.process.kill()
            assert self.process.stderr is not None
            error = (await self.process.stderr.read()).decode()
            raise AssertionError(f"no output from the script in {within} s:\n{error}") from None
        if not raw:
            assert self.process.stderr is not None
            error = (await self.process.stderr.read()).decode()
            raise AssertionError(f"the script ended without output:\n{error}")
        return dict(json.loads(raw))

    async def result(self) -> dict[str, Any]:
        result = await self.line()
        assert await asyncio.wait_for(self.process.wait(), 10) == 0, result
        return result


async def run_script(node: str, host: str, key: str, tenant: str, *args: str) -> Script:
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        f"ws://{host}/graphql",
        key,
        tenant,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Script(process)


async def test_graphql_ws_client_receives_live_changes(
    node: str, host: str, tenant: Tenant
) -> None:
    before = await tenant.gql(
        SYNC, {"input": {"users": {"data": [{"name": "Old"}, {"name": "Bob"}]}}}
    )
    old, bob = before["data"]["sync"]["users"]["ids"]
    script = await run_script(node, host, tenant.key, tenant.id, "3")
    try:
        ready = await script.line()
        assert ready["ready"] is True
        assert ready["ack"] == {"tenant": tenant.id}
        assert ready["checkpoint"] == before["data"]["sync"]["checkpoint"]

        # three commits, each on records of its own: three emissions
        first = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Ada"}]}}})
        (ada,) = first["data"]["sync"]["users"]["ids"]
        second = await tenant.gql(SYNC, {"input": {"users": {"data": [{"id": old, "name": "O"}]}}})
        deleted = await tenant.gql(DELETE, {"id": bob})
        result = await script.result()
    finally:
        if script.process.returncode is None:
            script.process.kill()
            await script.process.wait()

    assert result["error"] is None, result
    assert all("errors" not in e for e in result["emissions"]), result
    changes = [e["data"]["changes"] for e in result["emissions"]]
    assert sorted(u["id"] for u in changes[0]["users"]["inserted"]) == sorted([old, bob])
    assert changes[0]["hasMore"] is False
    assert changes[1]["users"] == {
        "inserted": [{"id": ada, "name": "Ada"}],
        "updated": [],
        "deleted": [],
    }
    assert changes[2]["users"] == {
        "inserted": [],
        "updated": [{"id": old, "name": "O"}],
        "deleted": [],
    }
    assert changes[3]["users"] == {"inserted": [], "updated": [], "deleted": [bob]}
    assert [c["checkpoint"] for c in changes[1:]] == [
        first["data"]["sync"]["checkpoint"],
        second["data"]["sync"]["checkpoint"],
        deleted["data"]["pushChanges"]["checkpoint"],
    ]


async def test_graphql_ws_client_resumes_from_a_checkpoint(
    node: str, host: str, tenant: Tenant
) -> None:
    first = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Seen"}]}}})
    missed = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Missed"}]}}})
    since = first["data"]["sync"]["checkpoint"]
    script = await run_script(node, host, tenant.key, tenant.id, "0", since)
    ready = await script.line()
    assert ready["checkpoint"] == missed["data"]["sync"]["checkpoint"]
    result = await script.result()
    assert result["error"] is None, result
    (page,) = [e["data"]["changes"] for e in result["emissions"]]
    assert page["users"]["inserted"] == [
        {"id": missed["data"]["sync"]["users"]["ids"][0], "name": "Missed"}
    ]
    assert page["checkpoint"] == missed["data"]["sync"]["checkpoint"]


async def test_graphql_ws_client_with_a_bad_key_gets_4403(
    node: str, host: str, tenant: Tenant
) -> None:
    script = await run_script(node, host, "sgk_not-a-key", tenant.id)
    result = await script.result()
    assert result["ack"] is None
    assert result["emissions"] == []
    assert result["closeCode"] == 4403, result
