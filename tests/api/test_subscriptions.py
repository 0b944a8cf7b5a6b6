"""Live subscriptions over a real websocket (DESIGN §3 "Subscriptions", §7): a frontend
authenticates in ``connection_init``, subscribes to ``changes(since, entities)``, gets its
catch-up pages (the first at once, even empty) and then one ChangeSet per commit touching its
entities; every emission carries the checkpoint to resume from. Runs on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import sqlalchemy.exc
import uvicorn
import websockets
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app import accel
from app.engine.live import hub
from app.main import create_app
from app.settings import Settings
from app.state import AppState, make_state
from tests.api.actions_client import Device
from tests.api.live import WsClient, live_server
from tests.conftest import Tenant, statements

BOUND = 5.0
"""Seconds within which a committed write must reach a current subscriber."""
PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]

RECORD = "id name version"
CHANGES = f"""
subscription($since: String, $entities: [Entity!]) {{
  changes(since: $since, entities: $entities) {{
    checkpoint hasMore fullSyncRequired serverTime
    users {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}
    persons {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}
  }}
}}"""
USERS_ONLY = f"""
subscription($since: String) {{
  changes(since: $since) {{
    checkpoint hasMore
    users {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}
  }}
}}"""
ACTIONS = """
subscription($after: String, $includeOwn: Boolean) {
  actions(after: $after, includeOwn: $includeOwn) {
    cursor hasMore items { deviceId sequenceNumber type payload cursor }
  }
}"""
SYNC = """
mutation($input: SyncInput!) { sync(input: $input) {
  checkpoint totals { failed } users { ids } persons { ids } } }"""
DELETE_USERS = """
mutation($ids: [UserChange!]) { pushChanges(input: {users: {deleted: $ids}}) {
  checkpoint applied errors { code message } } }"""


# --- helpers -------------------------------------------------------------------------------


def creds(tenant: Tenant, key: str | None = None) -> dict[str, str]:
    return {"authorization": f"Bearer {key or tenant.key}", "tenant": tenant.id}


async def write(tenant: Tenant, plural: str, *items: dict[str, Any]) -> tuple[str, list[str]]:
    """One sync request (one commit); its checkpoint and the ids in input order."""
    body = await tenant.gql(SYNC, {"input": {plural: {"data": list(items)}}})
    report = body["data"]["sync"]
    assert report["totals"]["failed"] == 0, report
    return report["checkpoint"], list(report[plural]["ids"])


async def add_users(tenant: Tenant, *names: str) -> tuple[str, list[str]]:
    return await write(tenant, "users", *({"name": n} for n in names))


async def delete_users(tenant: Tenant, *ids: str) -> str:
    body = await tenant.gql(DELETE_USERS, {"ids": [{"id": i} for i in ids]})
    report = body["data"]["pushChanges"]
    assert not report["errors"], report
    assert report["applied"] == len(ids), report
    return str(report["checkpoint"])


async def emission(client: WsClient, within: float = BOUND) -> dict[str, Any]:
    data = await client.next_data(within)
    return dict(data["changes"])


async def silent(client: WsClient, seconds: float = 0.5) -> None:
    """Nothing arrives for ``seconds`` (keep-alives aside)."""
    try:
        message = await client.receive(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"nothing should have arrived, got {message}")


def ids(page: dict[str, Any], plural: str = "users", kind: str = "inserted") -> list[str]:
    return [r["id"] for r in page[plural][kind]]


def metric(state: AppState, name: str) -> float:
    value = state.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def close_code(
    host: str, payload: dict[str, Any] | None, protocol: str
) -> tuple[int | None, list[Any]]:
    """Send ``connection_init`` with ``payload``; the close code and what came before it."""
    received: list[Any] = []
    async with websockets.connect(f"ws://{host}/graphql", subprotocols=[protocol]) as ws:
        init: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:  # None: no payload at all (a null payload is a 4400)
            init["payload"] = payload
        await ws.send(json.dumps(init))
        try:
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), BOUND)))
        except websockets.ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else None), received


@pytest.fixture
async def host(state: AppState) -> AsyncIterator[str]:
    async with live_server(state) as address:
        yield address


# --- delivery ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscribe_then_receive_a_write(tenant: Tenant, host: str, protocol: str) -> None:
    async with WsClient.connect(host, creds(tenant), protocol) as ws:
        started = time.monotonic()
        await ws.subscribe(CHANGES)
        first = await emission(ws)
        assert time.monotonic() - started < 2, "the first emission comes at once"
        assert first["hasMore"] is False
        assert first["fullSyncRequired"] is False
        assert first["users"] == {"inserted": [], "updated": [], "deleted": []}
        assert first["checkpoint"] == "0"

        checkpoint, (ada,) = await add_users(tenant, "Ada")
        written = time.monotonic()
        live = await emission(ws)
        assert time.monotonic() - written < BOUND
        assert live["users"]["inserted"] == [{"id": ada, "name": "Ada", "version": 1}]
        assert live["checkpoint"] == checkpoint
        assert live["hasMore"] is False

        checkpoint, _ = await write(tenant, "users", {"id": ada, "name": "Ada L."})
        live = await emission(ws)
        assert live["users"]["updated"] == [{"id": ada, "name": "Ada L.", "version": 2}]
        assert live["users"]["inserted"] == []
        assert live["checkpoint"] == checkpoint


async def test_an_unchanged_resend_emits_nothing(tenant: Tenant, host: str) -> None:
    _, (ada,) = await add_users(tenant, "Ada")
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        current = await emission(ws)
        await write(tenant, "users", {"id": ada, "name": "Ada"})  # identical: no change event
        await silent(ws)
        checkpoint, (bob,) = await add_users(tenant, "Bob")
        live = await emission(ws)
        assert ids(live) == [bob]
        assert live["checkpoint"] == checkpoint
        assert int(live["checkpoint"]) > int(current["checkpoint"])


async def test_first_emission_of_existing_data_is_a_snapshot(tenant: Tenant, host: str) -> None:
    checkpoint, created = await add_users(tenant, "Ada", "Bob")
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        first = await emission(ws, within=2)
    assert ids(first) == created
    assert first["hasMore"] is False
    assert first["checkpoint"] == checkpoint


async def test_catch_up_in_pages_then_live(tenant: Tenant, host: str) -> None:
    old, _ = await add_users(tenant, "before")
    missed: list[str] = []
    for chunk in range(3):  # 2,100 records after the client's checkpoint: three pages
        _, created = await add_users(tenant, *(f"u{chunk}-{i}" for i in range(700)))
        missed += created
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY, {"since": old})
        pages = []
        while not pages or pages[-1]["hasMore"]:
            pages.append(await emission(ws))
        assert len(pages) >= 3, [len(p["users"]["inserted"]) for p in pages]
        got = [i for p in pages for i in ids(p)]
        assert got == missed, "every change once, in seq order"
        checkpoints = [int(p["checkpoint"]) for p in pages]
        assert checkpoints == sorted(checkpoints)
        assert len(set(checkpoints)) == len(checkpoints)

        checkpoint, (live_id,) = await add_users(tenant, "live")
        live = await emission(ws)
        assert ids(live) == [live_id]
        assert live["checkpoint"] == checkpoint


async def test_reconnect_with_last_checkpoint_gets_exactly_the_missed_changes(
    tenant: Tenant, host: str
) -> None:
    _, (ada, bob, cid) = await add_users(tenant, "Ada", "Bob", "Cid")
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        last = (await emission(ws))["checkpoint"]
        _, (dan,) = await add_users(tenant, "Dan")
        page = await emission(ws)
        assert ids(page) == [dan]
        last = page["checkpoint"]

    # while disconnected: an insert, an update, a delete, and a record created then deleted
    _, (eve, tmp) = await add_users(tenant, "Eve", "Tmp")
    await write(tenant, "users", {"id": ada, "name": "Ada 2"})
    await delete_users(tenant, bob, tmp)

    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY, {"since": last})
        page = await emission(ws)
        assert page["hasMore"] is False
        assert ids(page) == [eve]
        assert page["users"]["updated"] == [{"id": ada, "name": "Ada 2", "version": 2}]
        assert sorted(page["users"]["deleted"]) == sorted([bob, tmp])
        await silent(ws)  # nothing twice: no replay of what was already delivered

        checkpoint, _ = await write(tenant, "users", {"id": cid, "name": "Cid 2"})
        page = await emission(ws)
        assert [r["id"] for r in page["users"]["updated"]] == [cid]
        assert page["users"]["inserted"] == []
        assert page["users"]["deleted"] == []
        assert page["checkpoint"] == checkpoint


async def test_deletes_arrive_in_deleted(tenant: Tenant, host: str) -> None:
    _, (ada, bob) = await add_users(tenant, "Ada", "Bob")
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        await emission(ws)
        checkpoint = await delete_users(tenant, bob)
        page = await emission(ws)
    assert page["users"] == {"inserted": [], "updated": [], "deleted": [bob]}
    assert page["checkpoint"] == checkpoint
    assert ada not in page["users"]["deleted"]


async def test_a_subscriber_never_sees_another_tenants_changes(
    tenant: Tenant, other_tenant: Tenant, host: str
) -> None:
    async with (
        WsClient.connect(host, creds(tenant)) as mine,
        WsClient.connect(host, creds(other_tenant)) as theirs,
    ):
        await mine.subscribe(USERS_ONLY)
        await theirs.subscribe(USERS_ONLY)
        await emission(mine)
        await emission(theirs)

        _, (foreign,) = await add_users(other_tenant, "Theirs")
        assert ids(await emission(theirs)) == [foreign]
        await silent(mine)

        checkpoint, (own,) = await add_users(tenant, "Mine")
        page = await emission(mine)
        assert ids(page) == [own]
        assert page["checkpoint"] == checkpoint
        await silent(theirs)

    # a fresh snapshot of one tenant holds none of the other's records either
    async with WsClient.connect(host, creds(tenant)) as mine:
        await mine.subscribe(USERS_ONLY)
        assert ids(await emission(mine)) == [own]


async def test_a_write_while_the_hub_starts_is_not_missed(
    tenant: Tenant, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new hub first learns where the feed is; the first subscriber's catch-up ends there
    or later, so a commit made meanwhile is in the catch-up, and the next one is live (it
    used to fall between the two and wait for a later commit)."""
    gate = asyncio.Event()
    real_current_seq = hub.current_seq

    async def slow_start(conn: Any, tenant_id: str) -> int:
        await gate.wait()
        return await real_current_seq(conn, tenant_id)

    monkeypatch.setattr(hub, "current_seq", slow_start)
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        await asyncio.sleep(0.1)  # the hub is starting
        checkpoint, created = await add_users(tenant, "during start")
        gate.set()
        page = await emission(ws)
        assert ids(page) == created
        assert page["checkpoint"] == checkpoint
        assert page["hasMore"] is False
        for n in range(3):
            checkpoint, created = await add_users(tenant, f"after start {n}")
            page = await emission(ws)
            assert ids(page) == created
            assert page["checkpoint"] == checkpoint


async def test_back_to_back_commits_are_one_emission_each(tenant: Tenant, host: str) -> None:
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        await emission(ws)
        commits = [await add_users(tenant, f"u{n}") for n in range(5)]
        pages = [await emission(ws) for _ in commits]
        await silent(ws, 0.3)
    assert [(p["checkpoint"], ids(p)) for p in pages] == commits


async def test_a_record_created_and_changed_before_the_hub_reads_arrives_inserted(
    tenant: Tenant, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the hub reads two commits at once and the second changed the first one's record,
    the database has only its latest version: it comes once, with the second commit, and as
    ``inserted``, since the client never saw it (it used to come as ``updated``)."""
    gate = asyncio.Event()
    gate.set()
    real_read_window = hub.read_window

    async def held(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await real_read_window(*args, **kwargs)

    monkeypatch.setattr(hub, "read_window", held)
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        await emission(ws)
        await asyncio.sleep(0.2)  # the hub's start-up read is done
        gate.clear()
        _, (ada,) = await add_users(tenant, "Ada")
        checkpoint, _ = await write(tenant, "users", {"id": ada, "name": "Ada L."})
        gate.set()
        page = await emission(ws)
        assert page["users"] == {
            "inserted": [{"id": ada, "name": "Ada L.", "version": 2}],
            "updated": [],
            "deleted": [],
        }
        assert page["checkpoint"] == checkpoint
        await silent(ws, 0.3)
        checkpoint, _ = await write(tenant, "users", {"id": ada, "name": "Ada K."})
        page = await emission(ws)
        assert [u["name"] for u in page["users"]["updated"]] == ["Ada K."]
        assert page["checkpoint"] == checkpoint


# --- filtering -----------------------------------------------------------------------------


async def test_selection_set_filters_entities(tenant: Tenant, host: str) -> None:
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        await emission(ws)
        await write(tenant, "persons", {"name": "P"})
        await silent(ws)  # a persons write is no emission for a users subscriber
        checkpoint, (ada,) = await add_users(tenant, "Ada")
        page = await emission(ws)
        assert ids(page) == [ada]
        assert page["checkpoint"] == checkpoint


async def test_entities_argument_filters(tenant: Tenant, host: str) -> None:
    async with (
        WsClient.connect(host, creds(tenant)) as users,
        WsClient.connect(host, creds(tenant)) as persons,
    ):
        await users.subscribe(CHANGES, {"entities": ["USER"]})
        await persons.subscribe(CHANGES, {"entities": ["PERSON"]})
        await emission(users)
        await emission(persons)

        _, (p,) = await write(tenant, "persons", {"name": "P"})
        page = await emission(persons)
        assert ids(page, "persons") == [p]
        assert page["users"]["inserted"] == []
        await silent(users)

        _, (u,) = await add_users(tenant, "U")
        page = await emission(users)
        assert ids(page) == [u]
        assert page["persons"]["inserted"] == []
        await silent(persons)


async def test_only_the_selected_fields_come_back(tenant: Tenant, host: str) -> None:
    query = """subscription { changes { checkpoint users { inserted { id name } } } }"""
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(query)
        first = await emission(ws)
        assert set(first) == {"checkpoint", "users"}
        _, (ada,) = await write(tenant, "users", {"name": "Ada", "email": "ada@example.org"})
        page = await emission(ws)
    assert page == {
        "checkpoint": page["checkpoint"],
        "users": {"inserted": [{"id": ada, "name": "Ada"}]},
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_messages_are_text_frames(tenant: Tenant, host: str, protocol: str) -> None:
    """graphql-transport-ws and graphql-ws messages are JSON text frames."""
    async with websockets.connect(f"ws://{host}/graphql", subprotocols=[protocol]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": creds(tenant)}))
        assert isinstance(await asyncio.wait_for(ws.recv(), BOUND), str)


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"authorization": "Bearer not-a-key"}, id="bad-key"),
        pytest.param({}, id="missing"),
        pytest.param(None, id="no-payload"),
        pytest.param({"tenant": "x"}, id="tenant-only"),
    ],
)
async def test_bad_credentials_close_with_4403_and_no_ack(
    tenant: Tenant, host: str, payload: Any
) -> None:
    if payload and "authorization" in payload:
        payload = {**payload, "tenant": tenant.id}
    code, received = await close_code(host, payload, "graphql-transport-ws")
    assert code == 4403
    assert received == []


async def test_tenant_mismatch_closes_with_4403(
    tenant: Tenant, other_tenant: Tenant, host: str
) -> None:
    payload = {"authorization": f"Bearer {tenant.key}", "tenant": other_tenant.id}
    code, received = await close_code(host, payload, "graphql-transport-ws")
    assert code == 4403
    assert received == []


async def test_legacy_protocol_refuses_a_bad_key_without_ack(tenant: Tenant, host: str) -> None:
    """The legacy protocol has no 4403: Strawberry answers ``connection_error`` and closes."""
    payload = {"authorization": "Bearer not-a-key", "tenant": tenant.id}
    _code, received = await close_code(host, payload, "graphql-ws")
    assert [m["type"] for m in received] == ["connection_error"]


async def test_a_device_token_can_subscribe(tenant: Tenant, host: str) -> None:
    device = await Device.register(tenant.http, tenant.key)
    async with WsClient.connect(host, creds(tenant, device.token)) as ws:
        await ws.subscribe(USERS_ONLY)
        await emission(ws)
        _, (ada,) = await add_users(tenant, "Ada")
        assert ids(await emission(ws)) == [ada]


async def test_a_read_only_key_can_subscribe(tenant: Tenant, host: str) -> None:
    key = await tenant.new_key("sync:read")
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(USERS_ONLY)
        await emission(ws)
        _, (ada,) = await add_users(tenant, "Ada")
        assert ids(await emission(ws)) == [ada]


# --- actions -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_actions_subscription_relays_another_devices_action(
    tenant: Tenant, host: str, protocol: str
) -> None:
    phone = await Device.register(tenant.http, tenant.key, "phone")
    tablet = await Device.register(tenant.http, tenant.key, "tablet")
    await phone.push(phone.actions({"type": "note", "text": "before"}))
    async with WsClient.connect(host, creds(tenant, tablet.token), protocol) as ws:
        await ws.subscribe(ACTIONS)
        first = (await ws.next_data())["actions"]
        assert [i["payload"]["text"] for i in first["items"]] == ["before"]
        assert first["hasMore"] is False

        await tablet.push(tablet.actions({"type": "note", "text": "own"}))
        await phone.push(phone.actions({"type": "note", "text": "hello"}))
        page = (await ws.next_data())["actions"]
        assert [(i["deviceId"], i["payload"]["text"]) for i in page["items"]] == [
            (phone.device_id, "hello")
        ], "the tablet's own action is left out without includeOwn"
        assert page["items"][0]["sequenceNumber"] == 1
        assert page["items"][0]["type"] == "note"

    # resume from the last cursor with includeOwn: only what came after it
    async with WsClient.connect(host, creds(tenant, tablet.token), protocol) as ws:
        await ws.subscribe(ACTIONS, {"after": page["cursor"], "includeOwn": True})
        first = (await ws.next_data())["actions"]
        assert first["items"] == []
        assert first["hasMore"] is False
        await tablet.push(tablet.actions({"type": "note", "text": "own 2"}))
        page = (await ws.next_data())["actions"]
        assert [i["payload"]["text"] for i in page["items"]] == ["own 2"]


async def test_many_device_subscribers_share_one_action_log_read_per_commit(
    tenant: Tenant, host: str, state: AppState
) -> None:
    """Every device of a tenant subscribes to the action log: a commit is read once for all
    of them (the tenant's in-memory tail), and each still gets only the others' actions."""
    devices = [await Device.register(tenant.http, tenant.key, f"d{n}") for n in range(6)]
    async with AsyncExitStack() as stack:
        clients = []
        for device in devices:
            ws = await stack.enter_async_context(
                WsClient.connect(host, creds(tenant, device.token))
            )
            await ws.subscribe(ACTIONS)
            assert (await ws.next_data())["actions"]["items"] == []
            clients.append(ws)
        before = metric(state, "syncgraph_action_tail_reads_total")
        recording = stack.enter_context(statements(state))
        for n in range(3):
            sender = devices[n]
            await sender.push(sender.actions({"type": "note", "n": n}))
            for device, ws in zip(devices, clients, strict=True):
                if device is sender:
                    continue
                page = (await ws.next_data())["actions"]
                assert [(i["deviceId"], i["payload"]["n"]) for i in page["items"]] == [
                    (sender.device_id, n)
                ]
            await silent(clients[n], 0.2)  # its own action is not sent back to it
        reads = metric(state, "syncgraph_action_tail_reads_total") - before
        log_reads = [
            q for q in recording if q.lstrip().startswith("SELECT") and "FROM actions" in q
        ]
    # one per commit (a PostgreSQL NOTIFY can wake the tail once more): not one per device
    assert 3 <= reads <= 6, reads
    assert 3 <= len(log_reads) <= 6, log_reads


# --- many subscribers ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def small_buffer_server(state: AppState) -> AsyncIterator[str]:
    """``live_server`` with small kernel send buffers on the server side (accepted sockets
    inherit the listening socket's), so a client that stops reading blocks the server's
    sends to it after a few kilobytes instead of after megabytes."""
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets (else Nagle delays frames)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(state=state), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    await state.start()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def slow_client(host: str, payload: dict[str, Any]) -> AsyncIterator[WsClient]:
    """A client that buffers little once it stops reading: a small receive buffer and a
    one-message queue, and no compression."""
    address, port = host.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (address, int(port)))
    async with websockets.connect(
        f"ws://{host}/graphql",
        sock=sock,
        subprotocols=["graphql-transport-ws"],
        max_queue=1,
        compression=None,  # what it is sent stays as large as it is
    ) as ws:
        client = WsClient(ws, "graphql-transport-ws")
        await client.send({"type": "connection_init", "payload": payload})
        assert (await client.receive())["type"] == "connection_ack"
        yield client


async def test_a_slow_consumer_does_not_block_a_fast_one(
    tenant: Tenant, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = 110
    monkeypatch.setattr(hub, "QUEUE_SIZE", 8)  # lag sooner (the default is 64 windows)
    lagging_before = metric(state, "syncgraph_lagging_subscribers_total")
    async with (
        small_buffer_server(state) as host,
        WsClient.connect(host, creds(tenant)) as fast,
        slow_client(host, creds(tenant)) as slow,
    ):
        await fast.subscribe(USERS_ONLY)
        await slow.subscribe(USERS_ONLY)
        await emission(fast)
        await emission(slow)
        # the slow client stops reading: the buffers fill, the server's sends to it block,
        # its hub queue overflows and it is switched to catch-up reads of its own
        pad = "x" * 230
        written: list[str] = []
        checkpoint = ""
        for n in range(commits):
            started = time.monotonic()
            checkpoint, created = await write(
                tenant, "users", *({"name": f"{n}-{i}-{pad}"} for i in range(5))
            )
            page = await emission(fast)
            assert time.monotonic() - started < BOUND
            assert ids(page) == created
            assert page["checkpoint"] == checkpoint
            written += created
        assert metric(state, "syncgraph_lagging_subscribers_total") > lagging_before, (
            "the slow subscriber was switched to its own catch-up reads"
        )

        seen: list[str] = []
        last = ""
        while len(seen) < len(written):
            page = await emission(slow)
            seen += ids(page)
            last = page["checkpoint"]
        assert seen == written, "every change exactly once, in order"
        assert last == checkpoint
        await silent(slow, 0.3)

        # and it is live again
        checkpoint, created = await add_users(tenant, "after")
        for client in (fast, slow):
            page = await emission(client)
            assert ids(page) == created
            assert page["checkpoint"] == checkpoint


async def test_one_hub_read_per_commit_whatever_the_subscribers(
    tenant: Tenant, host: str, state: AppState
) -> None:
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(WsClient.connect(host, creds(tenant)))
            for _ in range(10)
        ]
        for client in clients:
            await client.subscribe(USERS_ONLY)
        for client in clients:
            await emission(client)
        await asyncio.sleep(0.2)  # let the hub settle after its start-up read
        before = metric(state, "syncgraph_hub_reads_total")
        for n in range(5):
            checkpoint, created = await add_users(tenant, f"u{n}")
            for client in clients:
                page = await emission(client)
                assert ids(page) == created
                assert page["checkpoint"] == checkpoint
        await asyncio.sleep(0.2)
        reads = metric(state, "syncgraph_hub_reads_total") - before
    # one read per commit; on PostgreSQL a commit may also come back as a NOTIFY while the
    # hub is reading, which costs at most one more (empty) read
    assert 5 <= reads <= 10, reads


@pytest.fixture
async def fast_host(state: AppState) -> AsyncIterator[str]:
    """A server built with the ``fastpath`` accelerator, whatever ``SYNCGRAPH_ACCEL`` says."""
    with accel.only("fastpath"):
        server = live_server(state)
        address = await server.__aenter__()
    try:
        yield address
    finally:
        await server.__aexit__(None, None, None)


async def test_subscribers_alike_share_one_execution_per_commit(
    tenant: Tenant, fast_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Current subscribers with the same query and scopes get one execution of each live
    emission between them, also when they resumed from different checkpoints (``since``
    chose their stream, not how an event is executed); each still gets its own shape.
    (The ``fastpath`` accelerator's sharing; without it each subscriber executes.)"""
    host = fast_host
    executions = 0
    original = StrawberryGraphQLCoreExecutionContext.execute_operation

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal executions
        executions += self.operation.operation.value == "subscription"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_operation", counted)
    aliased = "subscription { changes { checkpoint people: users { inserted { who: name } } } }"
    reader = await tenant.new_key("sync:read")
    resumed, _ = await add_users(tenant, "Zed")
    subscribers: list[tuple[str, str | None, str | None]] = [(USERS_ONLY, None, None)] * 2
    subscribers += [(USERS_ONLY, None, resumed)] * 2
    subscribers += [(aliased, None, None), (USERS_ONLY, reader, None)]
    async with AsyncExitStack() as stack:
        clients = []
        for query, key, since in subscribers:
            client = await stack.enter_async_context(WsClient.connect(host, creds(tenant, key)))
            await client.subscribe(query, {"since": since} if since else None)
            await emission(client)
            clients.append(client)
        await asyncio.sleep(0.2)  # let the hub settle after its start-up read
        executions = 0
        checkpoint, (ada,) = await add_users(tenant, "Ada")
        pages = [await emission(client) for client in clients]

    same = {"checkpoint": checkpoint, "hasMore": False}
    same["users"] = {"inserted": [{"id": ada, "name": "Ada", "version": 1}], "updated": []}
    same["users"]["deleted"] = []
    for page in pages[:4] + pages[5:]:
        assert page == same
    assert pages[4] == {"checkpoint": checkpoint, "people": {"inserted": [{"who": "Ada"}]}}
    assert executions == 3  # one per distinct (query, scopes), not one per subscriber


async def test_variables_inside_the_selection_are_not_shared(tenant: Tenant, host: str) -> None:
    """Two subscribers of one query whose selection depends on a variable get each their
    own result."""
    query = """subscription($named: Boolean!) {
      changes { checkpoint users { inserted { id name @include(if: $named) } } } }"""
    async with AsyncExitStack() as stack:
        named, bare = [
            await stack.enter_async_context(WsClient.connect(host, creds(tenant))) for _ in range(2)
        ]
        await named.subscribe(query, {"named": True})
        await bare.subscribe(query, {"named": False})
        await emission(named)
        await emission(bare)
        _, (ada,) = await add_users(tenant, "Ada")
        with_name, without = await emission(named), await emission(bare)
    assert with_name["users"]["inserted"] == [{"id": ada, "name": "Ada"}]
    assert without["users"]["inserted"] == [{"id": ada}]


async def test_metrics_show_subscribers_while_connected(
    tenant: Tenant, host: str, state: AppState
) -> None:
    async def subscribers() -> float:
        response = await tenant.http.get("/metrics")
        assert response.status_code == 200
        for line in response.text.splitlines():
            if line.startswith("syncgraph_subscribers "):
                return float(line.split()[1])
        raise AssertionError(response.text)

    assert await subscribers() == 0
    async with (
        WsClient.connect(host, creds(tenant)) as one,
        WsClient.connect(host, creds(tenant)) as two,
    ):
        await one.subscribe(USERS_ONLY)
        await one.subscribe(CHANGES)
        await two.subscribe(USERS_ONLY)
        for client in (one, one, two):
            await emission(client)
        assert await subscribers() == 3
        metrics = (await tenant.http.get("/metrics")).text
        for name in ("syncgraph_hub_reads", "syncgraph_fanout_seconds", "syncgraph_lagging"):
            assert name in metrics
    deadline = time.monotonic() + BOUND
    while await subscribers() != 0:
        assert time.monotonic() < deadline, "subscribers are counted down on disconnect"
        await asyncio.sleep(0.05)


async def test_a_failed_catch_up_read_is_retried(
    tenant: Tenant, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool timeout or lost connection during a subscriber's own read is retried; it does
    not end the subscription with an error."""
    _, created = await add_users(tenant, "Ada")
    real_read_changes = hub.read_changes
    failures = [sqlalchemy.exc.TimeoutError("QueuePool limit reached (simulated)")]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_read_changes(*args, **kwargs)

    monkeypatch.setattr(hub, "read_changes", flaky)
    async with WsClient.connect(host, creds(tenant)) as ws:
        await ws.subscribe(USERS_ONLY)
        page = await emission(ws)
        assert ids(page) == created
        assert not failures
        checkpoint, created = await add_users(tenant, "Bob")
        page = await emission(ws)
        assert ids(page) == created
        assert page["checkpoint"] == checkpoint


async def test_subscribers_own_reads_leave_connections_to_writers(
    tenant: Tenant, host: str, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many subscribers catching up at once (connecting, or lagging together) read through a
    few pool connections at a time, so writes still get theirs."""
    real_read_changes = hub.read_changes
    running = 0
    most = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.05)
            return await real_read_changes(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(hub, "read_changes", counted)
    slots = state.hubs.catch_up_slots._value
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(WsClient.connect(host, creds(tenant))) for _ in range(8)
        ]
        for client in clients:
            await client.subscribe(USERS_ONLY)
        checkpoint, created = await add_users(tenant, "written while they catch up")
        for client in clients:
            pages = [await emission(client)]
            while pages[-1]["checkpoint"] != checkpoint:
                pages.append(await emission(client))
            assert [i for p in pages for i in ids(p)] == created
    assert 1 <= most <= slots < 8


# --- limits --------------------------------------------------------------------------------


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[AppState]:
    limited = make_state(settings.model_copy(update={"max_subscriptions_per_connection": 1}))
    yield limited
    await limited.close()


async def test_max_subscriptions_per_connection(tenant: Tenant, limited: AppState) -> None:
    transport = httpx.ASGITransport(app=create_app(state=limited))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
        live_server(limited) as host,
        WsClient.connect(host, creds(tenant)) as ws,
    ):
        writer = Tenant(tenant.id, tenant.key, http, limited)  # writes wake this app's hub
        first = await ws.subscribe(USERS_ONLY)
        assert (await ws.receive())["id"] == first
        second = await ws.subscribe(USERS_ONLY)
        refused = await ws.receive()
        assert refused["type"] == "error", refused
        assert refused["id"] == second
        assert "limit" in json.dumps(refused["payload"]).lower()
        # the first subscription still works
        _, (ada,) = await add_users(writer, "Ada")
        message = await ws.receive()
        assert message["id"] == first
        assert ids(message["payload"]["data"]["changes"]) == [ada]


async def test_a_browser_origin_must_be_allowed(tenant: Tenant, host: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://{host}/graphql",
            subprotocols=["graphql-transport-ws"],
            origin=websockets.Origin("https://evil.example"),
        ):
            pass
    assert refused.value.response.status_code == 403


async def test_an_allowed_browser_origin_subscribes(tenant: Tenant, settings: Settings) -> None:
    browser = make_state(settings.model_copy(update={"allowed_origins": "https://app.example"}))
    try:
        async with (
            live_server(browser) as host,
            websockets.connect(
                f"ws://{host}/graphql",
                subprotocols=["graphql-transport-ws"],
                origin=websockets.Origin("https://app.example"),
            ) as ws,
        ):
            client = WsClient(ws, "graphql-transport-ws")
            await client.send({"type": "connection_init", "payload": creds(tenant)})
            assert (await client.receive())["type"] == "connection_ack"
            await client.subscribe(USERS_ONLY)
            assert (await emission(client))["hasMore"] is False
    finally:
        await browser.close()
