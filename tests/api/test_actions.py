"""Devices and the action log through HTTP, as a device uses them (DESIGN §2, §3, §7 "Actions").

Every test runs on SQLite and PostgreSQL. Devices are driven by ``actions_client.Device``,
which encodes and signs exactly the way a real client does.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.engine.devices.devices import DEVICES
from app.main import create_app
from app.settings import Settings
from app.state import make_state
from tests.api.actions_client import (
    PUSH,
    REPORT_REMOVED,
    Device,
    chunks,
    delete,
    pull_all,
    sign,
    upsert,
)
from tests.conftest import Tenant, make_tenant

SYNCGRAPH = str(Path(sys.executable).with_name("syncgraph"))  # .venv/bin/syncgraph
SYNC = """mutation($input: SyncInput!) { sync(input: $input) {
  totals { failed } badges { ids } users { ids } } }"""
BADGES = "id name feed version"
CHANGES = f"""query($since: String) {{ changes(since: $since) {{ checkpoint
  badges {{ inserted {{ {BADGES} }} updated {{ {BADGES} }} deleted }}
  users {{ inserted {{ id name }} updated {{ id name }} deleted }} }} }}"""
BADGE = "query($id: ID) { badge(id: $id) { " + BADGES + " } }"
IS_REMOVED = "query($token: String!) { isDeviceRemoved(token: $token) }"
REMOVE = "mutation($id: ID!) { removeDevice(deviceId: $id) }"
ME = "{ me { tenantId deviceId scopes } }"


# --- helpers -------------------------------------------------------------------------------


def note(n: int, **extra: Any) -> dict[str, Any]:
    """A custom action type: stored and relayed, never applied."""
    return {"type": "note", "n": n, **extra}


async def register(tenant: Tenant, name: str = "phone") -> Device:
    return await Device.register(tenant.http, tenant.key, name)


async def push_error(device: Device, actions: list[dict[str, Any]]) -> dict[str, Any]:
    """A push that must fail as a whole; its only error."""
    response = await device.post(PUSH, {"actions": actions})
    body = response.json()
    assert body["data"] is None, body
    [error] = body["errors"]
    return dict(error)


def errors_of(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors") or []]


async def stored(device: Device) -> list[int]:
    """The sequence numbers of the device's actions in the log, in log order."""
    items = await pull_all(device.http, device.token, include_own=True, limit=1000)
    return [i["sequenceNumber"] for i in items if i["deviceId"] == device.device_id]


async def changes(tenant: Tenant, since: str | None = None) -> dict[str, Any]:
    body = await tenant.gql(CHANGES, {"since": since})
    return dict(body["data"]["changes"])


async def checkpoint(tenant: Tenant) -> str:
    return str((await changes(tenant))["checkpoint"])


async def badge(tenant: Tenant, id_: str) -> dict[str, Any] | None:
    body = await tenant.gql(BADGE, {"id": id_})
    found: dict[str, Any] | None = body["data"]["badge"]
    return found


async def sync_badge(tenant: Tenant, name: str) -> str:
    body = await tenant.gql(SYNC, {"input": {"badges": {"data": [{"name": name}]}}})
    [id_] = body["data"]["sync"]["badges"]["ids"]
    return str(id_)


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def lenient(
    backend: str, database_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Tenant]:
    """A tenant on a server configured (through the environment, as an operator does) to
    accept ``ping`` and ``beacon`` unsigned and to take at most 5 actions per push."""
    monkeypatch.setenv("SYNCGRAPH_UNSIGNED_ACTION_TYPES", "ping, beacon")
    monkeypatch.setenv("SYNCGRAPH_MAX_ACTIONS_PER_PUSH", "5")
    settings = Settings(database_url=database_urls[backend], dev=False, pool_size=5)
    state = make_state(settings)
    try:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield await make_tenant(state, http, "lenient")
    finally:
        await state.close()


# --- registration --------------------------------------------------------------------------


async def test_register_gives_a_device_token_that_reads_and_uses_the_log(tenant: Tenant) -> None:
    device = await register(tenant)

    assert uuid.UUID(device.device_id)
    assert device.token != device.secret
    me = (await device.gql(ME))["data"]["me"]
    assert me["tenantId"] == tenant.id
    assert me["deviceId"] == device.device_id
    async with tenant.state.engine.connect() as conn:
        row = (await conn.execute(sa.select(DEVICES).where(DEVICES.c.id == device.device_id))).one()
    assert row.token_hash != device.token  # a credential: stored hashed
    assert device.token not in str(tuple(row))


async def test_register_needs_a_write_key(tenant: Tenant) -> None:
    reader = await tenant.new_key("sync:read")
    device = await register(tenant)
    query = 'mutation { registerDevice(name: "x") { deviceId } }'

    by_reader = await tenant.gql(query, key=reader, expect_errors=True)
    by_device = await tenant.gql(query, key=device.token, expect_errors=True)
    unnamed = await tenant.gql(
        'mutation { registerDevice(name: " ") { deviceId } }', expect_errors=True
    )

    assert errors_of(by_reader) == ["FORBIDDEN"]
    assert errors_of(by_device) == ["FORBIDDEN"]
    assert errors_of(unnamed) == ["BAD_REQUEST"]
    writer = await tenant.new_key("sync:write")
    assert (await Device.register(tenant.http, writer)).device_id


# --- push and pull -------------------------------------------------------------------------


async def test_push_stores_actions_in_order_with_the_whole_payload(tenant: Tenant) -> None:
    device = await register(tenant)
    payloads = [note(0), {"type": "cart.add", "item": {"sku": "A-1", "qty": 2}}, note(2, x=None)]

    result = await device.push(device.actions(*payloads))

    assert result == {
        "shouldDoFullSync": False,
        "accepted": 3,
        "duplicates": 0,
        "rejected": [],
        "lastSequenceNumber": 2,
    }
    reader = await tenant.new_key("sync:read")
    items = await pull_all(tenant.http, reader)
    assert [i["payload"] for i in items] == payloads
    assert [i["type"] for i in items] == ["note", "cart.add", "note"]
    assert [i["sequenceNumber"] for i in items] == [0, 1, 2]
    assert {i["deviceId"] for i in items} == {device.device_id}
    assert all(datetime.fromisoformat(i["receivedAt"]).tzinfo for i in items)
    assert [int(i["cursor"]) for i in items] == sorted({int(i["cursor"]) for i in items})


async def test_a_client_queue_goes_in_chunks_of_50(tenant: Tenant) -> None:
    device = await register(tenant)
    queue = device.actions(*(note(i) for i in range(120)))

    results = await device.push_queue(queue)

    assert [r["accepted"] for r in results] == [50, 50, 20]
    assert results[-1]["lastSequenceNumber"] == 119
    assert await stored(device) == list(range(120))


async def test_over_50_actions_is_a_bad_request_and_stores_nothing(tenant: Tenant) -> None:
    device = await register(tenant)

    error = await push_error(device, device.actions(*(note(i) for i in range(51))))

    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert await stored(device) == []
    device.next_sequence = 0
    assert (await device.push(device.actions(note(0))))["lastSequenceNumber"] == 0


async def test_the_limit_per_push_is_configurable(lenient: Tenant) -> None:
    device = await register(lenient)

    error = await push_error(device, device.actions(*(note(i) for i in range(6))))
    device.next_sequence = 0
    result = await device.push(device.actions(*(note(i) for i in range(5))))

    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert result["accepted"] == 5


async def test_sequence_numbers_must_increase_within_a_push(tenant: Tenant) -> None:
    device = await register(tenant)
    cases = {
        "decreasing": [1, 0],
        "repeated": [3, 3],
        "out of order": [0, 2, 1],
        "repeated later": [5, 6, 7, 7, 8],
    }

    for name, numbers in cases.items():
        actions = [device.action(note(n), sequence_number=n) for n in numbers]
        error = await push_error(device, actions)
        assert error["extensions"]["code"] == "BAD_REQUEST", name

    assert await stored(device) == []


async def test_a_sequence_number_out_of_range_is_a_bad_request(tenant: Tenant) -> None:
    device = await register(tenant)
    # each push is increasing, so only the range is wrong
    cases = {"negative": [-1, 0], "above Int (32-bit)": [0, 2**31], "above 2^53": [0, 2**53]}

    for name, numbers in cases.items():
        actions = [device.action(note(n), sequence_number=n) for n in numbers]
        error = await push_error(device, actions)
        assert error["extensions"]["code"] == "BAD_REQUEST", name

    assert await stored(device) == []


async def test_the_largest_int_is_a_valid_sequence_number(tenant: Tenant) -> None:
    device = await register(tenant)

    result = await device.push([device.action(note(0), sequence_number=2**31 - 1)])

    assert result["lastSequenceNumber"] == 2**31 - 1
    assert (await device.push([device.action(note(0), sequence_number=5)]))["duplicates"] == 1


# --- integrity and shape -------------------------------------------------------------------


def bad_signatures(device: Device, other: Device, seq: int, encoded: str) -> dict[str, str]:
    """Integrity values a broken or hostile client might send for one action."""
    good = sign(device.secret, seq, device.device_id, encoded)
    return {
        "wrong": sign(device.secret, seq, device.device_id, encoded + " "),
        "upper-case": good.upper(),
        "truncated": good[:64],
        "other device's secret": sign(other.secret, seq, device.device_id, encoded),
        "other device's id": sign(device.secret, seq, other.device_id, encoded),
        "other sequence number": sign(device.secret, seq + 1, device.device_id, encoded),
        "SHA-256 length": good[:64] + "0" * 64,
        "empty (type not unsigned)": "",
        "non-ASCII": "é" * 128,
        "padded": f" {good}",
        "base64": "A" * 88,
    }


async def test_a_bad_signature_rejects_only_that_action(tenant: Tenant) -> None:
    device, other = await register(tenant), await register(tenant, "other")
    actions: list[dict[str, Any]] = []
    expected: dict[int, str] = {}
    for case in bad_signatures(device, other, 0, ""):  # the cases, by name
        actions.append(device.action(note(len(actions))))  # a good one between bad ones
        seq, encoded = len(actions), json.dumps(note(len(actions)))
        integrity = bad_signatures(device, other, seq, encoded)[case]
        actions.append(device.action(None, encoded=encoded, integrity=integrity))
        expected[seq] = case
    actions.append(device.action(note(len(actions))))

    result = await device.push(actions)

    rejected = {r["sequenceNumber"]: r["reason"] for r in result["rejected"]}
    assert {seq: expected[seq] for seq in rejected} == expected
    assert all(rejected.values())
    assert result["accepted"] == len(actions) - len(expected)
    assert result["shouldDoFullSync"] is True
    assert result["lastSequenceNumber"] == len(actions) - 1
    assert await stored(device) == [n for n in range(len(actions)) if n not in expected]


MALFORMED = {  # encodedAction -> a word its rejection reason must contain
    "{not json": "JSON",
    "": "JSON",
    "[1, 2]": "object",
    '[{"type": "note"}]': "object",
    '"note"': "object",
    "null": "object",
    "42": "object",
    '{"n": 1}': "type",
    '{"type": 5}': "type",
    '{"type": null}': "type",
    '{"type": ["note"]}': "type",
    '{"type": {"name": "note"}}': "type",
    json.dumps({"type": "note", "blob": "x" * 65_536}): "bytes",
}


async def test_a_malformed_action_is_rejected_with_its_reason(tenant: Tenant) -> None:
    device = await register(tenant)
    actions = []
    for encoded in MALFORMED:
        actions.append(device.action(None, encoded=encoded))
        actions.append(device.action(note(len(actions))))

    result = await device.push(actions)

    reasons = [r["reason"] for r in result["rejected"]]
    assert [r["sequenceNumber"] for r in result["rejected"]] == list(range(0, len(actions), 2))
    for (encoded, word), reason in zip(MALFORMED.items(), reasons, strict=True):
        assert word.lower() in reason.lower(), (encoded[:40], reason)
    assert result["accepted"] == len(MALFORMED)
    assert result["shouldDoFullSync"] is True
    assert await stored(device) == list(range(1, len(actions), 2))


async def test_an_action_of_exactly_64KiB_is_accepted(tenant: Tenant) -> None:
    device = await register(tenant)
    skeleton = json.dumps({"type": "note", "blob": ""})
    blob = "é" * ((65_536 - len(skeleton)) // 2) + "x" * ((65_536 - len(skeleton)) % 2)
    encoded = json.dumps({"type": "note", "blob": blob}, ensure_ascii=False)
    assert len(encoded.encode()) == 65_536  # bytes, not characters

    result = await device.push([device.action(None, encoded=encoded)])

    assert result["accepted"] == 1


async def test_odd_but_valid_payloads_are_stored_verbatim(tenant: Tenant) -> None:
    device = await register(tenant)
    payloads = [
        {"type": "note", "text": "nul \x00 byte"},
        {"type": "note", "text": "emoji 🚀 and ünïcødé"},
        {"type": "", "big": 2**70, "float": 1.5, "nested": {"a": [1, {"b": None}]}},
        {"type": "note", "type2": "x", "id": "not-a-uuid"},
    ]

    result = await device.push(device.actions(*payloads))

    assert result["accepted"] == len(payloads), result
    items = await pull_all(tenant.http, tenant.key)
    assert [i["payload"] for i in items] == payloads


async def test_unsigned_types_are_accepted_only_when_configured(
    tenant: Tenant, lenient: Tenant
) -> None:
    for server, accepted in ((lenient, [0, 2]), (tenant, [])):
        device = await register(server)
        actions = [
            device.action({"type": "ping"}, integrity=""),
            device.action({"type": "pong"}, integrity=""),
            device.action({"type": "beacon", "at": 1}, integrity=""),
        ]

        result = await device.push(actions)

        assert await stored(device) == accepted
        assert [r["sequenceNumber"] for r in result["rejected"]] == [
            n for n in (0, 1, 2) if n not in accepted
        ]
        assert result["shouldDoFullSync"] is True


async def test_an_unsigned_type_still_checks_a_given_signature(lenient: Tenant) -> None:
    device = await register(lenient)
    actions = [
        device.action({"type": "ping"}),
        device.action({"type": "ping"}, integrity="0" * 128),
    ]

    result = await device.push(actions)

    assert result["accepted"] == 1
    assert [r["sequenceNumber"] for r in result["rejected"]] == [1]


# --- built-in entity actions ---------------------------------------------------------------


async def test_entity_upsert_and_delete_apply_and_appear_in_changes(tenant: Tenant) -> None:
    device = await register(tenant)
    start = await checkpoint(tenant)
    a, b = new_id(), new_id()

    result = await device.push(
        device.actions(
            upsert("badges", {"id": a, "name": "Ann", "feed": "FREE"}),
            upsert("BADGE", {"id": b, "name": "Bob"}),
        )
    )
    after_upsert = await changes(tenant, start)
    await device.push(
        device.actions(upsert("badges", {"id": a, "feed": "PAID"}), delete("BADGE", b))
    )
    after_delete = await changes(tenant, after_upsert["checkpoint"])

    assert result["accepted"] == 2
    inserted = {r["id"]: r for r in after_upsert["badges"]["inserted"]}
    assert inserted[a] == {"id": a, "name": "Ann", "feed": "FREE", "version": 1}
    assert inserted[b]["name"] == "Bob"
    assert after_delete["badges"]["updated"] == [
        {"id": a, "name": "Ann", "feed": "PAID", "version": 2}
    ]
    assert after_delete["badges"]["deleted"] == [b]
    log = await pull_all(tenant.http, tenant.key)
    assert [i["type"] for i in log] == ["entity.upsert"] * 3 + ["entity.delete"]


async def test_entity_actions_apply_last_write_wins(tenant: Tenant) -> None:
    device = await register(tenant)
    id_ = new_id()
    await device.push(
        device.actions(
            upsert("badges", {"id": id_, "name": "new"}, changedAt="2030-01-02T00:00:00Z")
        )
    )

    result = await device.push(
        device.actions(
            upsert("badges", {"id": id_, "name": "old"}, changedAt="2030-01-01T00:00:00Z")
        )
    )

    assert result["rejected"] == []  # a change that lost to a newer one is still logged
    assert (await badge(tenant, id_) or {})["name"] == "new"
    assert len(await stored(device)) == 2


FAILING = "11111111-1111-4111-8111-111111111111"
ENTITY_FAILURES = [  # (what, action, a word its rejection reason must contain)
    ("unknown entity", upsert("gizmos", {"id": FAILING}), "gizmos"),
    ("no entity", {"type": "entity.upsert", "data": {"id": FAILING}}, "entity"),
    ("bad enum value", upsert("badges", {"id": FAILING, "feed": "MAYBE"}), "feed"),
    ("missing required field", upsert("users", {"id": FAILING, "email": "x@y"}), "name"),
    ("unresolved reference", upsert("arrivals", {"id": FAILING, "badge": "nope"}), "badge"),
    ("unknown field type", upsert("badges", {"id": FAILING, "vegan": "very"}), "vegan"),
    ("data.id not an id", upsert("badges", {"id": "not an id!", "name": "x"}), "id"),
    ("no data.id", upsert("badges", {"name": "x"}), "id"),
    ("data not an object", {"type": "entity.upsert", "entity": "badges", "data": [1]}, "data"),
    ("no data", {"type": "entity.upsert", "entity": "badges"}, "data"),
    ("delete id not an id", delete("badges", "x" * 37), "id"),
    ("delete without id", {"type": "entity.delete", "entity": "badges"}, "id"),
]


async def test_an_entity_action_that_fails_is_rejected_and_not_applied(tenant: Tenant) -> None:
    device = await register(tenant)
    start = await checkpoint(tenant)
    kept, ok = new_id(), new_id()
    first = upsert("badges", {"id": kept, "name": "kept", "feed": "FREE"})
    half = upsert("badges", {"id": kept, "name": "half", "feed": "NOPE"})  # valid name, bad feed
    failing = [half, *(action for _, action, _ in ENTITY_FAILURES)]
    last = upsert("badges", {"id": ok, "name": "ok"})

    result = await device.push(device.actions(first, *failing, last))

    rejected = result["rejected"]
    assert [r["sequenceNumber"] for r in rejected] == list(range(1, len(failing) + 1))
    for (what, _, word), reason in zip(ENTITY_FAILURES, rejected[1:], strict=True):
        assert word.lower() in reason["reason"].lower(), (what, reason)
    assert result["accepted"] == 2
    assert result["shouldDoFullSync"] is True
    assert result["lastSequenceNumber"] == len(failing) + 1
    page = await changes(tenant, start)
    assert page["badges"]["inserted"] == [
        {"id": kept, "name": "kept", "feed": "FREE", "version": 1},
        {"id": ok, "name": "ok", "feed": None, "version": 1},
    ]
    assert page["badges"]["updated"] == page["badges"]["deleted"] == []
    assert page["users"] == {"inserted": [], "updated": [], "deleted": []}
    assert await badge(tenant, FAILING) is None
    assert await stored(device) == [0, len(failing) + 1]


async def test_hostile_actions_are_rejected_not_failed(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    """Values the database cannot store are each rejected with a reason; the push goes on."""
    device = await register(tenant)
    aliased = await sync_badge(tenant, "aliased")
    await tenant.gql(SYNC, {"input": {"badges": {"data": [{"id": aliased, "alias": "B-1"}]}}})
    start = await checkpoint(tenant)
    project = {"id": new_id(), "name": "p"}
    cases = [  # (action, a word of its rejection reason, or None when it is accepted)
        ({"type": "t" * 256}, "type"),
        ({"type": "t" * 255}, None),
        (upsert("badges", {"id": new_id()}, changedAt="9999-12-31T23:59:59-05:00"), "changedAt"),
        (upsert("badges", {"id": new_id()}, changedAt="0001-01-01T00:00:00+01:00"), "changedAt"),
        (upsert("badges", {"id": new_id()}, changedAt="yesterday"), "changedAt"),
        (upsert("badges", {"id": new_id()}, changedAt=12345), "changedAt"),
        (upsert("projects", {**project, "companyGuid": other_tenant.id}), "companyGuid"),
        (upsert("projects", {**project, "companyGuid": tenant.id.upper()}), None),
        (upsert("badges", {"id": new_id(), "alias": "B-1"}), "alias"),
        (upsert("badges", {"id": new_id(), "tenant_id": other_tenant.id}), "tenant_id"),
        (upsert("badges", {"id": new_id(), "name": "n" * 300}), "name"),
        ({"type": "note", "text": "\ud800"}, "JSON"),  # json.dumps escapes a lone surrogate
    ]

    result = await device.push(device.actions(*(action for action, _ in cases)))

    reasons = {r["sequenceNumber"]: r["reason"] for r in result["rejected"]}
    for seq, (action, word) in enumerate(cases):
        if word is None:
            assert seq not in reasons, (action, reasons.get(seq))
        else:
            assert word.lower() in reasons.get(seq, "").lower(), (str(action)[:80], reasons)
    page = await changes(tenant, start)
    assert page["badges"] == {"inserted": [], "updated": [], "deleted": []}
    assert await pull_all(other_tenant.http, other_tenant.key) == []


async def test_lone_surrogates_in_the_request_are_rejected_not_failed(tenant: Tenant) -> None:
    device = await register(tenant)
    good = device.action(note(0))
    lone = "\ud800"  # json.dumps sends it as a \\ud800 escape; the server decodes it as is
    actions = [
        good,
        {"sequenceNumber": 1, "encodedAction": '{"type": "x' + lone + '"}', "integrity": ""},
        {"sequenceNumber": 2, "encodedAction": good["encodedAction"], "integrity": lone * 128},
    ]

    response = await device.http.post(
        "/graphql",
        content=json.dumps({"query": PUSH, "variables": {"actions": actions}}),  # ASCII escapes
        headers={"Authorization": f"Bearer {device.token}", "Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    result = response.json()["data"]["pushActions"]
    assert [r["sequenceNumber"] for r in result["rejected"]] == [1, 2]
    assert result["accepted"] == 1


async def test_an_entity_action_never_reaches_another_tenant(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await sync_badge(other_tenant, "theirs")
    their_start = await checkpoint(other_tenant)
    device = await register(tenant)

    result = await device.push(
        device.actions(delete("badges", theirs), upsert("badges", {"id": theirs, "name": "mine"}))
    )

    # deleting an id this tenant does not have is a no-op (pushChanges' rule), stored
    assert (result["rejected"], result["accepted"]) == ([], 2)
    assert await badge(other_tenant, theirs) == {
        "id": theirs,
        "name": "theirs",
        "feed": None,
        "version": 1,
    }
    assert await checkpoint(other_tenant) == their_start
    # the same UUID in this tenant names a record of its own
    assert (await badge(tenant, theirs) or {})["name"] == "mine"
    assert await pull_all(other_tenant.http, other_tenant.key, include_own=True) == []


# --- duplicates ----------------------------------------------------------------------------


async def test_resending_a_chunk_changes_nothing(tenant: Tenant) -> None:
    device = await register(tenant)
    id_ = new_id()
    chunk = device.actions(note(0), upsert("badges", {"id": id_, "name": "x"}), note(2))
    first = await device.push(chunk)
    log = await pull_all(tenant.http, tenant.key)
    mark = await checkpoint(tenant)

    again = await device.push(chunk)

    assert first["accepted"] == 3
    assert again == {
        "shouldDoFullSync": False,
        "accepted": 0,
        "duplicates": 3,
        "rejected": [],
        "lastSequenceNumber": 2,
    }
    assert await pull_all(tenant.http, tenant.key) == log
    assert await checkpoint(tenant) == mark


async def test_an_overlapping_chunk_counts_the_old_part_as_duplicates(tenant: Tenant) -> None:
    device = await register(tenant)
    queue = device.actions(*(note(i) for i in range(8)))
    await device.push(queue[:5])

    result = await device.push(queue[3:])

    assert (result["accepted"], result["duplicates"], result["lastSequenceNumber"]) == (3, 2, 7)
    assert await stored(device) == list(range(8))


async def test_duplicates_are_judged_per_device(tenant: Tenant) -> None:
    one, two = await register(tenant, "one"), await register(tenant, "two")
    await one.push(one.actions(note(0), note(1)))

    result = await two.push(two.actions(note(0), note(1)))

    assert result["accepted"] == 2
    assert await stored(two) == [0, 1]


# --- reading the log -----------------------------------------------------------------------


async def test_actions_page_in_order_with_an_opaque_cursor(tenant: Tenant) -> None:
    one, two = await register(tenant, "one"), await register(tenant, "two")
    await one.push(one.actions(note(0), note(1), note(2)))
    await two.push(two.actions(note(0), note(1)))
    await one.push(one.actions(note(3), note(4)))
    reader = await tenant.new_key("sync:read")

    pages, after = [], None
    while True:
        body = await tenant.gql(
            "query($a: String) { actions(after: $a, limit: 3) { cursor hasMore "
            "items { deviceId sequenceNumber cursor } } }",
            {"a": after},
            key=reader,
        )
        page = body["data"]["actions"]
        pages.append(page)
        after = page["cursor"]
        if not page["hasMore"]:
            break
    tail = await one.pull(after, include_own=True)

    names = {one.device_id: "one", two.device_id: "two"}
    seen = [(names[i["deviceId"]], i["sequenceNumber"]) for p in pages for i in p["items"]]
    assert seen == [
        ("one", 0),
        ("one", 1),
        ("one", 2),
        ("two", 0),
        ("two", 1),
        ("one", 3),
        ("one", 4),
    ]
    assert [len(p["items"]) for p in pages] == [3, 3, 1]
    assert pages[0]["cursor"] == pages[0]["items"][-1]["cursor"]
    assert tail == {"cursor": after, "hasMore": False, "items": []}


async def test_a_device_sees_others_actions_unless_include_own(tenant: Tenant) -> None:
    one, two = await register(tenant, "one"), await register(tenant, "two")
    await one.push(one.actions(note(0), note(1)))
    await two.push(two.actions(note(10)))
    await one.push(one.actions(note(2)))

    one_sees = await pull_all(one.http, one.token, limit=1)
    two_sees = await pull_all(two.http, two.token, limit=1)
    two_all = await pull_all(two.http, two.token, limit=2, include_own=True)

    assert [i["payload"]["n"] for i in one_sees] == [10]
    assert [i["payload"]["n"] for i in two_sees] == [0, 1, 2]
    assert [i["payload"]["n"] for i in two_all] == [0, 1, 10, 2]


async def test_a_cursor_resumes_after_new_actions(tenant: Tenant) -> None:
    one, two = await register(tenant, "one"), await register(tenant, "two")
    await one.push(one.actions(note(0)))
    first = await two.pull()
    await one.push(one.actions(note(1), note(2)))

    second = await two.pull(first["cursor"])
    idle = await two.pull(second["cursor"])

    assert [i["payload"]["n"] for i in first["items"]] == [0]
    assert [i["payload"]["n"] for i in second["items"]] == [1, 2]
    assert idle["items"] == []
    assert idle["cursor"] == second["cursor"]


async def test_actions_are_per_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    mine = await register(tenant)
    theirs = await register(other_tenant)
    await mine.push(mine.actions(note(0)))

    assert await pull_all(other_tenant.http, other_tenant.key) == []
    assert await pull_all(theirs.http, theirs.token) == []
    cross = await tenant.gql(
        "{ actions { cursor } }",
        key=theirs.token,
        headers={"X-Tenant-Id": tenant.id},
        expect_errors=True,
    )
    assert errors_of(cross) == ["FORBIDDEN"]


async def test_bad_actions_arguments(tenant: Tenant) -> None:
    query = (
        "query($after: String, $limit: Int) { actions(after: $after, limit: $limit) { cursor } }"
    )
    cases: list[dict[str, Any]] = [
        {"after": "abc"},
        {"after": "-1"},
        {"after": "1.5"},
        {"limit": 0},
        {"limit": -5},
    ]

    for variables in cases:
        body = await tenant.gql(query, variables, expect_errors=True)
        assert errors_of(body) == ["BAD_REQUEST"], variables


# --- what a device token may do ------------------------------------------------------------


async def test_a_device_token_reads_but_does_not_sync_or_push_changes(tenant: Tenant) -> None:
    id_ = await sync_badge(tenant, "seen")
    device = await register(tenant)

    feed = await device.gql(CHANGES)
    listed = await device.gql("{ badges { nodes { id } } }")
    sync = (await device.post(SYNC, {"input": {"badges": {"data": [{"name": "no"}]}}})).json()
    push = (
        await device.post(
            "mutation($i: PushInput!) { pushChanges(input: $i) { applied } }",
            {"i": {"badges": {"inserted": [{"id": new_id(), "data": {"name": "no"}}]}}},
        )
    ).json()
    resync = (await device.post("mutation { resync(objectType: BADGE) { resynced } }")).json()

    assert [r["id"] for r in feed["data"]["changes"]["badges"]["inserted"]] == [id_]
    assert [n["id"] for n in listed["data"]["badges"]["nodes"]] == [id_]
    assert errors_of(sync) == ["FORBIDDEN"]
    assert errors_of(push) == ["FORBIDDEN"]
    assert errors_of(resync) == ["FORBIDDEN"]
    assert [r["name"] for r in (await changes(tenant))["badges"]["inserted"]] == ["seen"]


async def test_an_api_key_cannot_push_actions(tenant: Tenant) -> None:
    body = await tenant.gql(PUSH, {"actions": []}, expect_errors=True)
    assert errors_of(body) == ["FORBIDDEN"]


# --- removal -------------------------------------------------------------------------------


async def test_report_device_removed_revokes_the_token(tenant: Tenant) -> None:
    device = await register(tenant)
    live = await register(tenant, "live")
    await device.push(device.actions(note(0)))

    assert (await device.gql(REPORT_REMOVED))["data"]["reportDeviceRemoved"] is True

    for query, variables in (
        (PUSH, {"actions": device.actions(note(1))}),
        ("{ actions { cursor } }", None),
        (CHANGES, None),
        (ME, None),
    ):
        response = await device.post(query, variables)
        assert response.status_code == 401, query
        [error] = response.json()["errors"]
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert "removed" in error["message"]
    again = await device.post(REPORT_REMOVED)
    assert (again.status_code, again.json()["data"]) == (200, {"reportDeviceRemoved": True})
    assert await stored(live) == []  # the removed device's one action stays in the log
    assert len(await pull_all(tenant.http, tenant.key)) == 1


async def test_is_device_removed_is_true_only_for_a_revoked_token(tenant: Tenant) -> None:
    removed, live = await register(tenant, "removed"), await register(tenant, "live")
    await removed.gql(REPORT_REMOVED)

    async def ask(token: str) -> bool:
        response = await tenant.http.post(
            "/graphql", json={"query": IS_REMOVED, "variables": {"token": token}}
        )  # no credentials at all
        assert response.status_code == 200, response.text
        return bool(response.json()["data"]["isDeviceRemoved"])

    assert await ask(removed.token) is True
    assert await ask(live.token) is False
    assert await ask(f"sgd_{secrets.token_urlsafe(32)}") is False
    assert await ask("") is False
    assert await ask(tenant.key) is False
    with_bad_credentials = await tenant.gql(
        IS_REMOVED, {"token": removed.token}, key="nonsense", expect_errors=True
    )
    assert with_bad_credentials["data"] == {"isDeviceRemoved": True}


async def test_remove_device_needs_manage(tenant: Tenant, other_tenant: Tenant) -> None:
    device, bystander = await register(tenant), await register(tenant, "bystander")
    writer = await tenant.new_key("sync:write")
    theirs = await register(other_tenant)

    by_writer = await tenant.gql(REMOVE, {"id": device.device_id}, key=writer, expect_errors=True)
    by_device = await tenant.gql(
        REMOVE, {"id": bystander.device_id}, key=device.token, expect_errors=True
    )
    cross = await tenant.gql(REMOVE, {"id": theirs.device_id})
    unknown = await tenant.gql(REMOVE, {"id": new_id()})
    bad = await tenant.gql(REMOVE, {"id": "nope"}, expect_errors=True)

    assert errors_of(by_writer) == ["FORBIDDEN"]
    assert errors_of(by_device) == ["FORBIDDEN"]
    assert cross["data"]["removeDevice"] is False
    assert unknown["data"]["removeDevice"] is False
    assert errors_of(bad) == ["BAD_REQUEST"]
    assert (await theirs.gql(ME))["data"]["me"]["deviceId"] == theirs.device_id
    assert (await device.gql(ME))["data"]["me"]["deviceId"] == device.device_id

    removed = await tenant.gql(REMOVE, {"id": device.device_id})
    twice = await tenant.gql(REMOVE, {"id": device.device_id})

    assert removed["data"]["removeDevice"] is True
    assert twice["data"]["removeDevice"] is True
    response = await device.post(ME)
    assert response.status_code == 401
    assert "removed" in response.json()["errors"][0]["message"]
    assert (await tenant.gql(IS_REMOVED, {"token": device.token}))["data"]["isDeviceRemoved"]
    assert (await bystander.gql(ME))["data"]["me"]["deviceId"] == bystander.device_id


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrent_overlapping_pushes_store_each_action_once(tenant: Tenant) -> None:
    device, other = await register(tenant, "busy"), await register(tenant, "other")
    record = new_id()

    def payload(n: int) -> dict[str, Any]:
        return upsert("badges", {"id": record, "name": f"v{n}"}) if n % 2 == 0 else note(n)

    queue = device.actions(*(payload(n) for n in range(100)))
    # Every chunk of a round starts at or below the first number not yet stored, so in
    # whatever order the server takes them nothing is skipped.
    rounds = [
        [queue[:50], queue[:20], queue[:35], queue[:5], queue[:50]],
        [queue[30:80], queue[50:100], queue[45:55], queue[50:90], queue[:50]],
    ]
    other_queue = other.actions(*(note(1000 + n) for n in range(60)))
    results: list[dict[str, Any]] = []
    for chunks_of_round, other_chunk in zip(rounds, chunks(other_queue, 30), strict=True):
        results += await asyncio.gather(
            *(device.push(c) for c in chunks_of_round), other.push(other_chunk)
        )

    mine = [r for i, r in enumerate(results) if i % 6 != 5]
    assert sum(r["accepted"] for r in mine) == 100
    assert sum(r["accepted"] + r["duplicates"] for r in mine) == sum(
        len(c) for r in rounds for c in r
    )
    assert all(r["rejected"] == [] for r in results)
    assert max(r["lastSequenceNumber"] for r in mine) == 99
    assert (await device.push([queue[-1]]))["lastSequenceNumber"] == 99
    assert await stored(device) == list(range(100))
    assert await stored(other) == list(range(60))
    log = await pull_all(tenant.http, tenant.key, limit=37)
    assert len(log) == 160
    assert len({i["id"] for i in log}) == 160
    assert [int(i["cursor"]) for i in log] == sorted({int(i["cursor"]) for i in log})
    # the device's entity actions were applied in its own order: 50 upserts, the last wins
    assert await badge(tenant, record) == {"id": record, "name": "v98", "feed": None, "version": 50}


async def test_concurrent_devices_all_land_in_the_log(tenant: Tenant) -> None:
    devices = [await register(tenant, f"d{i}") for i in range(6)]

    async def drain(device: Device) -> None:
        await device.push_queue(device.actions(*(note(n) for n in range(60))))

    await asyncio.gather(*(drain(d) for d in devices))

    log = await pull_all(tenant.http, tenant.key, limit=50)
    assert len(log) == 360
    for d in devices:
        assert [i["sequenceNumber"] for i in log if i["deviceId"] == d.device_id] == list(range(60))


# --- command line --------------------------------------------------------------------------


async def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCGRAPH_")}
    env["DATABASE_URL"] = url
    return await asyncio.to_thread(
        subprocess.run,
        [SYNCGRAPH, "device", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_lists_and_removes_devices(
    tenant: Tenant, other_tenant: Tenant, backend: str, database_urls: dict[str, str]
) -> None:
    url = database_urls[backend]
    phone, tablet = await register(tenant, "phone"), await register(tenant, "tablet")
    theirs = await register(other_tenant, "theirs")
    await phone.push(phone.actions(note(0), note(1)))

    listed = await _cli(url, "list", "--tenant", tenant.id)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["name"], r["lastSequenceNumber"], r["removedAt"]) for r in rows] == [
        (phone.device_id, "phone", 1, None),
        (tablet.device_id, "tablet", -1, None),
    ]
    assert {r["tenantId"] for r in rows} == {tenant.id}

    wrong_tenant = await _cli(url, "remove", theirs.device_id, "--tenant", tenant.id)
    removed = await _cli(url, "remove", phone.device_id, "--tenant", tenant.id)
    everything = await _cli(url, "list")

    assert wrong_tenant.returncode == 1
    assert json.loads(wrong_tenant.stdout) == {"removed": False}
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"removed": True}
    by_id = {r["id"]: r for r in map(json.loads, everything.stdout.splitlines())}
    assert by_id[phone.device_id]["removedAt"] is not None
    assert by_id[tablet.device_id]["removedAt"] is None
    assert by_id[theirs.device_id]["removedAt"] is None
    response = await phone.post(ME)
    assert response.status_code == 401
    assert "removed" in response.json()["errors"][0]["message"]
    assert (await tenant.gql(IS_REMOVED, {"token": phone.token}))["data"]["isDeviceRemoved"]
