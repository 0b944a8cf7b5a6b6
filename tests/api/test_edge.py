"""Every failure at the request edge is a GraphQL answer (issue #18): a database that is down
or refuses (503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``, and recovery without restart),
malformed bodies, streamed bodies over the limit; and GraphQL over HTTP (issue #17): the
``application/graphql-response+json`` media type with the specification's status codes."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.edge import failure_code
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from app.state import AppState, make_state
from tests.conftest import PG_ADMIN_URL, Tenant, make_tenant

GRAPHQL_RESPONSE = "application/graphql-response+json"
APOLLO_ACCEPT = "application/graphql-response+json,application/json;q=0.9"
ME = "{ me { tenantId } }"
REMOVED = '{ isDeviceRemoved(token: "sgd_nobody") }'  # executes without credentials


def only_error(response: httpx.Response) -> dict[str, Any]:
    """The answer's single error, with its code and the request id it shares with the body
    and the ``X-Request-Id`` header."""
    body = response.json()
    [error] = body["errors"]
    assert error["extensions"]["requestId"] == body["extensions"]["requestId"]
    assert response.headers["x-request-id"] == body["extensions"]["requestId"]
    return dict(error)


@pytest.fixture
async def client(http: httpx.AsyncClient, tenant: Tenant) -> httpx.AsyncClient:
    http.headers["Authorization"] = f"Bearer {tenant.key}"
    return http


# --- malformed bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"query": "\xff\xfe{ me { tenantId } }"}', "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"query": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "nested"),
    ],
    ids=["invalid-utf8", "100k-levels-of-lists", "50k-levels-of-objects"],
)
async def test_malformed_bodies_are_400_in_graphql_json(
    client: httpx.AsyncClient, body: bytes, reason: str
) -> None:
    response = await client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = only_error(response)
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert reason in error["message"]


@pytest.fixture
async def small(backend: str, database_urls: dict[str, str]) -> AsyncIterator[Tenant]:
    """A tenant on an app whose body limit is 2 KiB."""
    settings = Settings(database_url=database_urls[backend], dev=False, max_body_bytes=2048)
    state = make_state(settings)
    transport = httpx.ASGITransport(app=create_app(state=state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield await make_tenant(state, http, "small")
    await state.close()


async def chunks(count: int, size: int = 1000) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b" " * size


@pytest.mark.parametrize("accept", ["application/json", APOLLO_ACCEPT])
async def test_a_chunked_body_over_the_limit_is_413_in_graphql_json(
    small: Tenant, accept: str
) -> None:
    """Without a Content-Length the body is counted as it streams in; the answer is the same
    GraphQL JSON as for a declared oversize body (it was Starlette's text/plain)."""
    headers = {
        "Authorization": f"Bearer {small.key}",
        "Accept": accept,
        "Content-Type": "application/json",
    }
    streamed = await small.http.post("/graphql", content=chunks(4), headers=headers)
    declared = await small.http.post("/graphql", content=b" " * 4000, headers=headers)

    for response in (streamed, declared):
        assert response.status_code == 413
        assert response.headers["content-type"] == accept.split(",")[0]
        error = only_error(response)
        assert error["extensions"]["code"] == "BAD_REQUEST"
        assert "2048 bytes" in error["message"]


# --- the database down -------------------------------------------------------------------------


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def own_pg() -> AsyncIterator[tuple[Tenant, str]]:
    """An app on a PostgreSQL database of its own (so that it can be cut off), with a tenant."""
    name = f"syncgraph_edge_{uuid.uuid4().hex[:10]}"
    await admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    await asyncio.to_thread(upgrade, url)
    # No credential cache: the outage must reach authentication's own query (a cached key
    # would answer `me` from memory for up to the cache's seconds, which needs no database).
    settings = Settings(database_url=url, dev=False, pool_size=2, credential_cache_seconds=0)
    state = make_state(settings)
    transport = httpx.ASGITransport(app=create_app(state=state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield await make_tenant(state, http, "outage"), name
    await state.close()
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def cut_off(name: str) -> None:
    """The database refuses new connections and its open ones are gone."""
    await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    error = only_error(response)
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert "retry" in error["message"]


async def test_a_database_that_refuses_is_503_and_recovers_without_restart(
    own_pg: tuple[Tenant, str],
) -> None:
    tenant, name = own_pg
    assert (await tenant.post(ME)).status_code == 200

    await cut_off(name)
    known = await tenant.post(ME)  # fails while authenticating
    unknown = await tenant.post(ME, key="sgk_" + "x" * 43)
    executing = await tenant.post(REMOVED)  # no credentials needed: fails while executing
    apollo = await tenant.post(ME, headers={"Accept": APOLLO_ACCEPT})
    await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    after = await tenant.post(ME)

    for response in (known, unknown, executing, apollo):
        assert_unavailable(response)
    assert "data" not in apollo.json()
    assert apollo.headers["content-type"] == GRAPHQL_RESPONSE
    assert after.status_code == 200
    assert after.json()["data"]["me"]["tenantId"] == tenant.id


async def test_a_cached_credential_still_reads_what_needs_no_database(
    own_pg: tuple[Tenant, str],
) -> None:
    """With the credential cache on (PostgreSQL's default), a key seen in the last seconds
    answers ``me`` from memory during an outage; what needs the database is still a 503."""
    tenant, name = own_pg
    tenant.state.credentials.ttl = 60  # the cache the fixture turned off, turned on
    assert (await tenant.post(ME)).status_code == 200
    await cut_off(name)
    cached = await tenant.post(ME)
    reading = await tenant.post("{ changes { checkpoint } }")
    await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert cached.status_code == 200
    assert cached.json()["data"]["me"]["tenantId"] == tenant.id
    assert_unavailable(reading)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_database_that_is_not_there_is_503() -> None:
    """PostgreSQL at a closed loopback port: refused at once, with or without credentials."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x"
    state: AppState = make_state(Settings(database_url=url, dev=False))
    transport = httpx.ASGITransport(app=create_app(state=state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        keyed = await http.post(
            "/graphql", json={"query": ME}, headers={"Authorization": "Bearer sgk_x"}
        )
        anonymous = await http.post("/graphql", json={"query": REMOVED})
        ready = await http.get("/readyz")
    await state.close()

    assert_unavailable(keyed)
    assert_unavailable(anonymous)
    assert ready.status_code == 503


# --- GraphQL over HTTP -------------------------------------------------------------------------


async def post(client: httpx.AsyncClient, accept: str | None, **json: Any) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    return await client.post("/graphql", json=json, headers=headers)


@pytest.mark.parametrize(
    "accept",
    [GRAPHQL_RESPONSE, APOLLO_ACCEPT, "application/json;q=0.5, */*;q=0.1, " + GRAPHQL_RESPONSE],
)
async def test_graphql_response_json_is_answered_in_its_media_type(
    client: httpx.AsyncClient, tenant: Tenant, accept: str
) -> None:
    response = await post(client, accept, query=ME)

    assert response.status_code == 200
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert response.json()["data"]["me"]["tenantId"] == tenant.id


@pytest.mark.parametrize(
    "accept", [None, "application/json", "*/*", f"{GRAPHQL_RESPONSE};q=0.5, application/json"]
)
async def test_otherwise_json_as_before(client: httpx.AsyncClient, accept: str | None) -> None:
    ok = await post(client, accept, query=ME)
    invalid = await post(client, accept, query="{ me { nope } }")

    assert (ok.status_code, ok.headers["content-type"]) == (200, "application/json")
    assert (invalid.status_code, invalid.headers["content-type"]) == (200, "application/json")
    assert invalid.json()["data"] is None


REQUEST_ERRORS = [
    ({"query": "{ me { tenantId "}, "BAD_REQUEST"),  # does not parse
    ({"query": "{ me { nope } }"}, "BAD_REQUEST"),  # does not validate
    ({"query": "query($n: Int!) { changes(limit: $n) { checkpoint } }"}, "BAD_REQUEST"),
    (
        {"query": "query($n: Int!) { changes(limit: $n) { checkpoint } }", "variables": {"n": "x"}},
        "BAD_REQUEST",
    ),
    ({"query": "query A { me { tenantId } } query B { me { tenantId } }"}, "BAD_REQUEST"),
    ({"query": ME, "operationName": "Other"}, "BAD_REQUEST"),
    ({"variables": {}}, "BAD_REQUEST"),  # no query
]


@pytest.mark.parametrize(
    ("body", "code"),
    REQUEST_ERRORS,
    ids=[
        "parse",
        "validation",
        "missing-variable",
        "bad-variable",
        "ambiguous",
        "unknown-op",
        "no-query",
    ],
)
async def test_request_errors_are_400_without_data(
    client: httpx.AsyncClient, body: dict[str, Any], code: str
) -> None:
    """GraphQL over HTTP: a request that fails before execution is 4xx, and an answer with
    no ``data`` entry never has a 2xx status."""
    response = await post(client, APOLLO_ACCEPT, **body)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert "data" not in response.json()
    assert only_error(response)["extensions"]["code"] == code


async def test_unparsable_json_is_400_in_its_media_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        content=b"{nope",
        headers={"Accept": APOLLO_ACCEPT, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert only_error(response)["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("authorization", [None, "Bearer sgk_unknown", "Basic x"])
async def test_missing_or_bad_credentials_are_401_with_the_graphql_body(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    """What Apollo needs to surface ``UNAUTHENTICATED`` (it read a bare 401 before)."""
    headers = {"Accept": APOLLO_ACCEPT}
    if authorization:
        headers["Authorization"] = authorization
    response = await http.post("/graphql", json={"query": ME}, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert "data" not in response.json()
    assert only_error(response)["extensions"]["code"] == "UNAUTHENTICATED"


async def test_field_errors_of_an_executed_operation_stay_200(client: httpx.AsyncClient) -> None:
    response = await post(client, APOLLO_ACCEPT, query="{ changes(limit: -1) { checkpoint } }")

    assert response.status_code == 200
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    body = response.json()
    assert body["data"] is None
    assert only_error(response)["extensions"]["code"] == "BAD_REQUEST"


async def test_another_tenants_id_is_403_without_data(
    client: httpx.AsyncClient, other_tenant: Tenant
) -> None:
    response = await client.post(
        "/graphql",
        json={"query": ME},
        headers={"Accept": APOLLO_ACCEPT, "X-Tenant-Id": other_tenant.id},
    )

    assert response.status_code == 403
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert "data" not in response.json()
    assert only_error(response)["extensions"]["code"] == "FORBIDDEN"


# --- which driver errors are which -------------------------------------------------------------


async def run_all(engine: AsyncEngine, statements: list[str]) -> None:
    async with engine.connect() as conn:
        for statement in statements:
            params = {"nul": "a\x00b"} if ":nul" in statement else {}
            await conn.execute(sa.text(statement), params)


@pytest.mark.parametrize(
    ("statements", "code"),
    [
        (["SET statement_timeout = 50", "SELECT pg_sleep(5)"], "SERVICE_UNAVAILABLE"),
        (["SELECT pg_terminate_backend(pg_backend_pid())"], "SERVICE_UNAVAILABLE"),
        (["SELECT length(CAST(:nul AS text))"], "BAD_REQUEST"),
        (["SELECT 1/0"], "INTERNAL"),
    ],
    ids=["statement-timeout", "connection-killed", "nul-in-text", "a-bug"],
)
async def test_postgres_failures_get_their_code(
    database_urls: dict[str, str], statements: list[str], code: str
) -> None:
    engine = create_async_engine(database_urls["postgres"])
    try:
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await run_all(engine, statements)
    finally:
        await engine.dispose()

    assert failure_code(caught.value) == code
