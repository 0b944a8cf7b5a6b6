"""syncgraph from Python with gql (PyPI): pull `changes` page by page, push local changes
with `pushChanges`, and follow `subscription changes` over a websocket.

    pip install "gql[httpx,websockets]"
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

USER = "id name email version"
USER_CHANGES = f"users {{ inserted {{ {USER} }} updated {{ {USER} }} deleted }}"
PULL = f"""query Pull($since: String, $limit: Int) {{
  changes(since: $since, limit: $limit) {{ checkpoint hasMore fullSyncRequired {USER_CHANGES} }}
}}"""
PUSH = """mutation Push($input: PushInput!) {
  pushChanges(input: $input) {
    checkpoint caughtUp applied
    conflicts { entity id reason serverVersion serverRecord }
    errors { entity index id code message }
  }
}"""
LIVE = f"""subscription Live($since: String) {{
  changes(since: $since) {{ checkpoint hasMore {USER_CHANGES} }}
}}"""


def http_client(url: str, key: str) -> Client:
    """A client for queries and mutations: url is http(s)://host/graphql, key an API key."""
    headers = {"Authorization": f"Bearer {key}"}
    # httpx waits 5 s by default: a 1,000-item push on a busy server may take longer
    transport = HTTPXAsyncTransport(url=url, headers=headers, timeout=30)
    return Client(transport=transport)


async def pull(
    session: AsyncClientSession, since: str | None, *, limit: int = 1000
) -> tuple[list[dict[str, Any]], str]:
    """Every change after `since` (None: everything), page by page; and the next `since`."""
    pages: list[dict[str, Any]] = []
    while True:
        request = GraphQLRequest(PULL, variable_values={"since": since, "limit": limit})
        page = (await session.execute(request))["changes"]
        if page["fullSyncRequired"]:
            raise RuntimeError("full sync required: drop local data and pull from None")
        pages.append(page)
        since = page["checkpoint"]
        if not page["hasMore"]:
            return pages, since


async def push(
    session: AsyncClientSession, since: str | None, users: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Push {"inserted": [...], "updated": [...], "deleted": [...]} of users, based on `since`.
    When the report says caughtUp, its checkpoint is the next `since` (no echoes)."""
    request = GraphQLRequest(PUSH, variable_values={"input": {"since": since, "users": users}})
    return dict((await session.execute(request))["pushChanges"])


async def follow(
    url: str, key: str, tenant: str, since: str | None
) -> AsyncIterator[dict[str, Any]]:
    """Live change sets after `since`: catch-up pages first, then one per commit.
    url is ws(s)://host/graphql; credentials go in the connection_init payload."""
    payload = {"authorization": f"Bearer {key}", "tenant": tenant}
    transport = WebsocketsTransport(url=url, init_payload=payload)
    async with Client(transport=transport) as session:
        request = GraphQLRequest(LIVE, variable_values={"since": since})
        async for result in session.subscribe(request):
            yield result["changes"]
