"""A device of the action log, as a real client implements one (DESIGN §3, §7 "Actions").

It registers itself with an API key, keeps its own sequence counter, encodes each action
with ``json.dumps``, signs it with the HMAC-SHA512 of ``str(sequenceNumber) + deviceId +
encodedAction`` keyed with the UTF-8 secret, and pushes its queue in chunks of 50.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import httpx

CHUNK = 50

REGISTER = """mutation($name: String!) {
  registerDevice(name: $name) { deviceId token secret } }"""
PUSH = """mutation($actions: [ActionInput!]!) { pushActions(actions: $actions) {
  shouldDoFullSync accepted duplicates rejected { sequenceNumber reason } lastSequenceNumber } }"""
ACTIONS = """query($after: String, $limit: Int, $includeOwn: Boolean) {
  actions(after: $after, limit: $limit, includeOwn: $includeOwn) {
    cursor hasMore items { id deviceId sequenceNumber type payload receivedAt cursor } } }"""
REPORT_REMOVED = "mutation { reportDeviceRemoved }"


def sign(secret: str, sequence_number: int, device_id: str, encoded_action: str) -> str:
    message = f"{sequence_number}{device_id}{encoded_action}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha512).hexdigest()


def upsert(entity: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "entity.upsert", "entity": entity, "data": data, **extra}


def delete(entity: str, id_: str, **extra: Any) -> dict[str, Any]:
    return {"type": "entity.delete", "entity": entity, "id": id_, **extra}


def chunks(items: list[Any], size: int = CHUNK) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class GraphQLFailed(AssertionError):
    """The server answered with errors where the client expected data."""


@dataclass
class Device:
    """One registered device: its credentials and its local queue counter."""

    http: httpx.AsyncClient
    device_id: str
    token: str
    secret: str
    next_sequence: int = 0

    @classmethod
    async def register(
        cls, http: httpx.AsyncClient, key: str, name: str = "phone", **headers: str
    ) -> Device:
        body = await _request(http, REGISTER, {"name": name}, token=key, headers=headers)
        reg = body["data"]["registerDevice"]
        return cls(http, reg["deviceId"], reg["token"], reg["secret"])

    # --- building actions -------------------------------------------------------------------

    def action(
        self,
        payload: Any,
        *,
        sequence_number: int | None = None,
        encoded: str | None = None,
        integrity: str | None = None,
    ) -> dict[str, Any]:
        """The next queued action (or one at ``sequence_number``), encoded and signed."""
        if sequence_number is None:
            sequence_number = self.next_sequence
        self.next_sequence = max(self.next_sequence, sequence_number + 1)
        encoded = json.dumps(payload) if encoded is None else encoded
        if integrity is None:
            integrity = sign(self.secret, sequence_number, self.device_id, encoded)
        return {
            "sequenceNumber": sequence_number,
            "encodedAction": encoded,
            "integrity": integrity,
        }

    def actions(self, *payloads: Any) -> list[dict[str, Any]]:
        return [self.action(p) for p in payloads]

    # --- talking to the server --------------------------------------------------------------

    async def post(self, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {self.token}"},
        )

    async def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return await _request(self.http, query, variables, token=self.token)

    async def push(self, actions: list[dict[str, Any]]) -> dict[str, Any]:
        """One ``pushActions`` call that must succeed; its result."""
        body = await self.gql(PUSH, {"actions": actions})
        return dict(body["data"]["pushActions"])

    async def push_queue(self, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Push a queue the way a client does: chunks of 50, one after another."""
        return [await self.push(chunk) for chunk in chunks(actions)]

    async def pull(
        self, after: str | None = None, *, limit: int | None = None, include_own: bool = False
    ) -> dict[str, Any]:
        variables: dict[str, Any] = {"after": after, "includeOwn": include_own}
        if limit is not None:
            variables["limit"] = limit
        body = await self.gql(ACTIONS, variables)
        return dict(body["data"]["actions"])


async def pull_all(
    http: httpx.AsyncClient, token: str, *, limit: int = 100, include_own: bool = False
) -> list[dict[str, Any]]:
    """Every action ``token`` may see, following the cursor while ``hasMore``."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        variables = {"after": after, "limit": limit, "includeOwn": include_own}
        page = (await _request(http, ACTIONS, variables, token=token))["data"]["actions"]
        items.extend(page["items"])
        after = page["cursor"]
        if not page["hasMore"]:
            return items


async def _request(
    http: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None,
    *,
    token: str,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await http.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )
    body: dict[str, Any] = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise GraphQLFailed(f"HTTP {response.status_code}: {body}")
    return body
