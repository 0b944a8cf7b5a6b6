"""The ``fastlane`` accelerator (validated documents past Strawberry's HTTP pipeline) answers
exactly as the plain view: every request here goes to an app built with the lane and to one
built without it (each with a tenant of its own holding the same data), and the status, the
media type, the request-id header and the body must be the same. Each case also says whether
the lane must have taken the request, so a lane that silently hands everything back (or takes
what it must not) fails. The apps are built under ``accel.only``, so this holds whatever
``SYNCGRAPH_ACCEL`` says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from app import accel
from app.accel.fastlane import FastLane
from app.main import create_app
from app.settings import Settings
from app.state import make_state
from tests.api.test_accel_graphql import scrub
from tests.conftest import Tenant, example, make_tenant

EVERY_BUT_LANE = [name for name in accel.ACCELERATORS if name != "fastlane"]


@dataclass
class Side:
    tenant: Tenant
    lane: FastLane | None


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[tuple[Side, Side]]:
    """(with the lane, without it): two apps on one database, one tenant each."""
    sides, states, clients = [], [], []
    for lane in (True, False):
        state = make_state(settings)
        with accel.only(*EVERY_BUT_LANE, *(["fastlane"] if lane else [])):
            app = create_app(state=state)
        graphql = next(r for r in app.routes if getattr(r, "path", "") == "/graphql").endpoint  # type: ignore[attr-defined]
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        states.append(state)
        clients.append(client)
        tenant = await make_tenant(state, client, "lane" if lane else "plain")
        sides.append(Side(tenant, graphql.fast_lane))
    assert sides[0].lane is not None
    assert sides[1].lane is None
    yield sides[0], sides[1]
    for client in clients:
        await client.aclose()
    for state in states:
        await state.close()


async def both(
    pair: tuple[Side, Side],
    *,
    taken: bool,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    key: bool = True,
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Send one request to both apps; compare; check the lane took it (or handed it back)."""
    answers = []
    lane = pair[0]
    before = lane.lane.served if lane.lane else 0
    for side in pair:
        sent = {"authorization": f"Bearer {side.tenant.key}"} if key else {}
        sent.update(headers or {})
        if body is not None:
            content = orjson.dumps(body)
            sent.setdefault("content-type", "application/json")
        response = await side.tenant.http.request(
            method, "/graphql", content=content, headers=sent, params=params
        )
        answers.append(response)
    fast, slow = answers
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.headers.get("content-type") == slow.headers.get("content-type")
    assert fast.headers.get("retry-after") == slow.headers.get("retry-after")
    assert len(fast.headers.get("x-request-id", "")) == len(slow.headers.get("x-request-id", ""))
    assert scrub(fast.json()) == scrub(slow.json())
    assert lane.lane is not None
    assert lane.lane.served == before + (1 if taken else 0), "the lane took or left it wrongly"
    return fast.status_code, fast.json()


POLL = """query Poll($since: String) { changes(since: $since) { checkpoint hasMore
  persons { inserted { id name } updated { id name } deleted } } }"""
SYNC = """mutation Sync($input: SyncInput!) { sync(input: $input) {
  totals { inserted updated unchanged failed }
  persons { ids errors { index field code message } } } }"""
TWO = "query A { __typename } query B { me { scopes } }"


async def test_reads_and_writes_answer_alike(pair: tuple[Side, Side]) -> None:
    status, body = await both(pair, taken=True, body={"query": "{ __typename }"})
    assert (status, body["data"]) == (200, {"__typename": "Query"})
    payload = example("festival-sync.json")
    _, body = await both(pair, taken=True, body={"query": SYNC, "variables": {"input": payload}})
    assert body["data"]["sync"]["totals"]["inserted"] > 0
    _, body = await both(pair, taken=True, body={"query": POLL, "variables": {"since": None}})
    assert body["data"]["changes"]["persons"]["inserted"]
    since = body["data"]["changes"]["checkpoint"]
    await both(pair, taken=True, body={"query": POLL, "variables": {"since": since}})
    # the same document again: from the lane's cache
    await both(pair, taken=True, body={"query": POLL, "variables": {"since": since}})
    broken = {"persons": {"data": [{"id": "p-1", "name": None}, {"id": "not a uuid", "name": "x"}]}}
    _, body = await both(pair, taken=True, body={"query": SYNC, "variables": {"input": broken}})
    assert body["data"]["sync"]["persons"]["errors"]
    await both(pair, taken=True, body={"query": TWO, "operationName": "B"})
    await both(
        pair,
        taken=True,
        body={"query": "{ __typename }", "extensions": {"tracing": True}},
        headers={"content-type": "application/json; charset=utf-8"},
    )


@pytest.mark.parametrize("accept", [None, "application/graphql-response+json"])
async def test_errors_answer_alike(pair: tuple[Side, Side], accept: str | None) -> None:
    headers = {"accept": accept} if accept else {}
    # a variable of the wrong type: an error before execution, from a validated document
    status, body = await both(
        pair,
        taken=True,
        body={"query": POLL, "variables": {"since": {"an": "object"}}},
        headers=headers,
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert status == (400 if accept else 200)
    # no credentials: the resolver refuses, 401
    status, body = await both(pair, taken=True, key=False, body={"query": POLL}, headers=headers)
    assert status == 401
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # a key without the write scope
    for side in pair:
        side.tenant.key = await side.tenant.new_key("sync:read")
    status, body = await both(
        pair, taken=True, body={"query": SYNC, "variables": {"input": {}}}, headers=headers
    )
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({"body": {"query": "{ nope }"}}, id="fails validation"),
        pytest.param({"body": {"query": "{ __typename"}}, id="does not parse"),
        pytest.param({"body": {"query": TWO}}, id="two operations, none named"),
        pytest.param({"body": {"query": TWO, "operationName": "C"}}, id="unknown operation"),
        pytest.param({"body": {"query": "subscription { changes { checkpoint } }"}}, id="sub"),
        pytest.param({"body": {"query": "{" * 40 + "}" * 40}}, id="too deep"),
        pytest.param({"body": [{"query": "{ __typename }"}]}, id="a batch"),
        pytest.param({"body": {"query": "{ __typename }", "more": 1}}, id="unknown key"),
        pytest.param({"body": {"query": "{ __typename }", "variables": [1]}}, id="bad variables"),
        pytest.param({"body": {"query": 7}}, id="query not a string"),
        pytest.param({"body": {"variables": {}}}, id="no query"),
        pytest.param({"content": b"{not json"}, id="malformed JSON"),
        pytest.param({"content": b"\xff\xfe"}, id="not UTF-8"),
        pytest.param(
            {"body": {"query": "{ __typename }"}, "headers": {"content-type": "text/plain"}},
            id="not JSON content",
        ),
        pytest.param(
            {"method": "GET", "params": {"query": "{ __typename }"}, "headers": {}}, id="GET"
        ),
        pytest.param(
            {"body": {"query": "{ __typename }"}, "headers": {"idempotency-key": "k-1"}},
            id="keyed",
        ),
        pytest.param(
            {"body": {"query": "{ __typename }"}, "headers": {"accept": "multipart/mixed"}},
            id="streaming accept",
        ),
    ],
)
async def test_the_plain_path_answers_the_rest(
    pair: tuple[Side, Side], request_: dict[str, Any]
) -> None:
    request_ = dict(request_)
    if "content" in request_:
        request_.setdefault("headers", {"content-type": "application/json"})
    await both(pair, taken=False, **request_)


async def test_a_document_that_failed_is_not_retried_through_the_lane(
    pair: tuple[Side, Side],
) -> None:
    """A document the lane refused is remembered as the plain path's (no parse per request),
    and one that becomes valid cannot, since the schema does not change under a server."""
    for _ in range(3):
        await both(pair, taken=False, body={"query": "{ nope }"})
    lane = pair[0].lane
    assert lane is not None
    assert lane.prepared.cache_info().misses == 1
