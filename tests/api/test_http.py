"""The HTTP edge: health, metrics, request ids, limits, malformed requests, error masking,
GraphiQL (DESIGN §4, §5, §7 "HTTP")."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from app.state import make_state
from tests.conftest import Tenant, make_tenant

SYNC = """mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }"""
ME = "{ me { tenantId } }"


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    [error] = body["errors"]
    return dict(error)


@pytest.fixture
async def strict(backend: str, database_urls: dict[str, str]) -> AsyncIterator[Tenant]:
    """A tenant on an app with small limits: 2 KiB bodies, depth 5, 5 aliases, 100 tokens."""
    settings = Settings(
        database_url=database_urls[backend],
        dev=False,
        pool_size=2,
        max_body_bytes=2048,
        max_query_depth=5,
        max_aliases=5,
        max_tokens=100,
    )
    state = make_state(settings)
    transport = httpx.ASGITransport(app=create_app(state=state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield await make_tenant(state, client, "strict")
    await state.close()


# --- health and metrics -----------------------------------------------------------------------


async def test_health_and_readiness(tenant: Tenant) -> None:
    health = await tenant.http.get("/healthz")
    ready = await tenant.http.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + label_text + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_metrics_count_requests_errors_and_rows(tenant: Tenant) -> None:
    first = [{"alias": "a", "name": "a"}, {"alias": "b", "name": "b"}]
    second = [{"alias": "a", "name": "a2"}, {"alias": "c", "name": "c"}]
    await tenant.gql(SYNC, {"input": {"users": {"data": first}}})
    await tenant.gql(SYNC, {"input": {"users": {"data": second}}})
    await tenant.gql("{ changes { users { inserted { id } } } }")
    await tenant.gql('{ changes(since: "x") { checkpoint } }', expect_errors=True)
    await tenant.http.post("/graphql", json={"query": ME})  # no credentials

    response = await tenant.http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "syncgraph_requests_total", operation="mutation") == 2
    assert metric(text, "syncgraph_requests_total", operation="query") == 3
    assert metric(text, "syncgraph_rows_synced_total", entity="users", outcome="inserted") == 3
    assert metric(text, "syncgraph_rows_synced_total", entity="users", outcome="updated") == 1
    assert metric(text, "syncgraph_errors_total", code="BAD_REQUEST") == 1
    assert metric(text, "syncgraph_errors_total", code="UNAUTHENTICATED") == 1
    assert metric(text, "syncgraph_pull_records_count") == 1  # the failed pull never ran
    assert metric(text, "syncgraph_pull_records_sum") == 3


def test_the_operation_kind_is_cached_for_ordinary_documents_only() -> None:
    """Metrics label every request with its operation kind; a document of ordinary size is
    parsed once, a huge one (a body can be 10 MB) is labelled right but never kept."""
    from app.graphql import view

    view._cached_operation_kind.cache_clear()
    short = "mutation M { sync(input: {}) { checkpoint } }"
    huge = "query Q { me { tenantId } }" + " " * view.CACHED_DOCUMENT_MAX
    for _ in range(3):
        assert view.operation_kind(short, None, max_tokens=100) == "mutation"
        assert view.operation_kind(huge, "Q", max_tokens=100) == "query"
    assert view.operation_kind("{ me", None, max_tokens=100) == "invalid"
    info = view._cached_operation_kind.cache_info()
    assert (info.currsize, info.hits) == (2, 2)  # the short document and the invalid one


# --- request ids ------------------------------------------------------------------------------


async def test_request_id_is_echoed(tenant: Tenant) -> None:
    for header in ("X-Request-Id", "X-msgid"):
        response = await tenant.post(ME, headers={header: "client-42.a:b"})
        assert response.json()["extensions"]["requestId"] == "client-42.a:b", header
        assert response.headers["x-request-id"] == "client-42.a:b", header


async def test_request_id_is_generated_when_absent(tenant: Tenant) -> None:
    first = await tenant.post(ME)
    second = await tenant.post(ME)
    generated = first.json()["extensions"]["requestId"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert first.headers["x-request-id"] == generated
    assert second.json()["extensions"]["requestId"] != generated


async def test_unsafe_request_id_is_replaced(tenant: Tenant) -> None:
    for value in ("has spaces", "x" * 129, "semi;colon", "<script>", ""):
        response = await tenant.post(ME, headers={"X-Request-Id": value})
        request_id = response.json()["extensions"]["requestId"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id), value
        assert response.headers["x-request-id"] == request_id


async def test_request_id_is_on_errors_and_other_routes(tenant: Tenant) -> None:
    response = await tenant.http.post(
        "/graphql", json={"query": ME}, headers={"X-Request-Id": "rid-1"}
    )
    health = await tenant.http.get("/healthz", headers={"X-msgid": "rid-2"})
    assert response.status_code == 401
    assert only_error(response.json())["extensions"]["requestId"] == "rid-1"
    assert health.headers["x-request-id"] == "rid-2"


# --- limits and malformed requests --------------------------------------------------------------


async def test_body_over_the_limit_is_413(strict: Tenant) -> None:
    small = await strict.post(ME, {"pad": "x" * 1000})
    large = await strict.post(ME, {"pad": "x" * 3000})
    assert small.status_code == 200
    assert large.status_code == 413
    error = only_error(large.json())
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "2048 bytes" in error["message"]


async def test_streamed_body_over_the_limit_is_413(strict: Tenant) -> None:
    """Without a Content-Length the limit still holds while the body is read."""

    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * 1000

    response = await strict.http.post(
        "/graphql",
        content=chunks(),
        headers={"Authorization": f"Bearer {strict.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def refused(response: httpx.Response) -> dict[str, Any]:
    """A 400 for a request that is not GraphQL, with a GraphQL-shaped error body."""
    assert response.status_code == 400, response.text
    body = response.json()
    error = only_error(body)
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert error["extensions"]["requestId"] == body["extensions"]["requestId"]
    return error


def auth(tenant: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


NOT_JSON_OBJECTS = [b"not json", b'{"query": ', b'"a string"', b"42", b"null"]
NOT_GRAPHQL = [
    {},
    {"variables": {}},
    {"query": None},
    {"query": 42},
    {"query": ME, "variables": [1]},
]


async def test_body_that_is_not_a_json_object_is_400(tenant: Tenant) -> None:
    headers = {**auth(tenant), "Content-Type": "application/json"}
    for content in NOT_JSON_OBJECTS:
        refused(await tenant.http.post("/graphql", content=content, headers=headers))


async def test_json_that_is_not_a_graphql_request_is_400(tenant: Tenant) -> None:
    for payload in NOT_GRAPHQL:
        refused(await tenant.http.post("/graphql", json=payload, headers=auth(tenant)))


async def test_batches_and_other_content_types_are_400(tenant: Tenant) -> None:
    batch = [{"query": ME}, {"query": ME}]
    refused(await tenant.http.post("/graphql", json=batch, headers=auth(tenant)))
    headers = {**auth(tenant), "Content-Type": "text/plain"}
    refused(await tenant.http.post("/graphql", content=ME.encode(), headers=headers))


async def test_mutation_over_get_is_refused(tenant: Tenant) -> None:
    query = 'mutation { sync(input: {users: {data: [{name: "x"}]}}) { checkpoint } }'
    response = await tenant.http.get("/graphql", params={"query": query}, headers=auth(tenant))
    refused(response)
    changes = await tenant.gql("{ changes { users { inserted { id } } } }")
    assert changes["data"]["changes"]["users"]["inserted"] == []


async def test_query_over_get_works(tenant: Tenant) -> None:
    response = await tenant.http.get("/graphql", params={"query": ME}, headers=auth(tenant))
    assert response.status_code == 200
    assert response.json()["data"]["me"]["tenantId"] == tenant.id


INVALID_GRAPHQL = {
    "syntax": ("{ me { tenantId }", {}),
    "unknown-field": ("{ nope }", {}),
    "no-subselection": ("{ me }", {}),
    "bad-variable": ("query($l: Int) { changes(limit: $l) { checkpoint } }", {"l": "ten"}),
    "missing-variable": ("query($l: Int!) { changes(limit: $l) { checkpoint } }", {}),
}


async def test_invalid_graphql_is_200_with_bad_request(tenant: Tenant) -> None:
    for case, (query, variables) in INVALID_GRAPHQL.items():
        response = await tenant.post(query, variables)
        assert response.status_code == 200, case
        body = response.json()
        assert body["data"] is None, case
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_REQUEST"], case
        assert "Internal error" not in response.text, case


DEEP = "{ changes { pieces { inserted { assembly { component { project { name } } } } } } }"
ALIASES = "{ " + " ".join(f"a{i}: me {{ tenantId }}" for i in range(6)) + " }"
TOKENS = "{ " + " ".join("me { tenantId tenantName }" for _ in range(30)) + " }"


async def test_query_limits_answer_with_a_code_not_masked(strict: Tenant) -> None:
    # each twice: parsed and validated documents are cached, and so are their errors
    cases = [(DEEP, "depth"), (ALIASES, "aliases"), (TOKENS, "token")] * 2
    for query, words in cases:
        response = await strict.post(query)
        body = response.json()
        error = only_error(body)
        assert response.status_code == 200, words
        assert body["data"] is None, words
        assert error["extensions"]["code"] == "BAD_REQUEST", words
        assert words in error["message"].lower()


async def test_queries_within_the_limits_run(strict: Tenant) -> None:
    query = "{ changes { users { inserted { id } } } a1: me { tenantId } a2: me { tenantId } }"
    body = await strict.gql(query)
    assert body["data"]["a1"]["tenantId"] == strict.id


# --- masking -------------------------------------------------------------------------------------


async def test_unexpected_exception_is_masked_with_the_request_id(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("password=hunter2 at db.internal:5432")

    monkeypatch.setattr(tenant.state.service, "changes", boom)

    response = await tenant.post(
        "{ changes { checkpoint } me { tenantId } }", headers={"X-Request-Id": "trace-9"}
    )

    body = response.json()
    assert response.status_code == 200
    error = only_error(body)
    assert error["message"] == "Internal error (request id trace-9)"
    assert error["extensions"]["code"] == "INTERNAL"
    assert error["path"] == ["changes"]
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    metrics = (await tenant.http.get("/metrics")).text
    assert metric(metrics, "syncgraph_errors_total", code="INTERNAL") == 1


FAILING = {
    "checkpoint": ("query($s: String) { changes(since: $s) { checkpoint } }", {"s": "abc"}),
    "limit": ("{ changes(limit: 0) { checkpoint } }", {}),
    "id": ('{ user(id: "not an id!") { id } }', {}),
    "first": ('{ a: user(alias: "x") { id } b: users(first: -1) { totalCount } }', {}),
    "subscription": ("subscription { nothing }", {}),
}


async def test_every_error_has_a_code_and_request_id(tenant: Tenant) -> None:
    for case, (query, variables) in FAILING.items():
        body = (await tenant.post(query, variables)).json()
        assert body["errors"], case
        for error in body["errors"]:
            assert error["extensions"]["code"] == "BAD_REQUEST", (case, error)
            assert error["extensions"]["requestId"] == body["extensions"]["requestId"]


# --- GraphiQL --------------------------------------------------------------------------------


class AssetRefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {"script": "src", "link": "href"}.get(tag)
        url = dict(attrs).get(attr) if attr else None
        if url:
            self.urls.append(url)


async def test_graphiql_page_is_served_without_credentials_and_offline(tenant: Tenant) -> None:
    page = await tenant.http.get("/graphql", headers={"Accept": "text/html"})

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    parser = AssetRefs()
    parser.feed(page.text)
    assets = [u for u in parser.urls if not u.startswith("data:")]
    assert len(assets) == 7
    assert all(u.startswith("/static/graphiql/") for u in assets), assets
    assert "unpkg.com" not in page.text
    for url in assets:
        asset = await tenant.http.get(url)
        assert asset.status_code == 200, url
