# No "from __future__ import annotations": resolver annotations name generated types.
"""``build_schema(registry, settings)``: the whole GraphQL schema, generated in phases —
entity types, request/report types, then the root fields."""

import base64
import logging
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from app.engine.changes import ChangePage, parse_checkpoint
from app.engine.items import camel, parse_uuid
from app.engine.push import KINDS, Change, EntityPush, PushRequest
from app.engine.registry import EntitySpec, Registry
from app.engine.sync import Batch, EntityResult, SyncResult
from app.errors import BadRequest, SyncError
from app.graphql import actions, subscriptions
from app.graphql.bulkinput import bulk_argument
from app.graphql.context import Context, require, require_key
from app.graphql.entities import EntityTypes, TypeBuilder
from app.graphql.executor import executor_class
from app.graphql.reports import (
    ConflictPolicy,
    Principal,
    ResyncResult,
    SyncCounts,
    conflict_type,
    entity_enum,
    entity_sync_result_type,
    item_error_type,
    push_report_type,
)
from app.graphql.scalars import parse_datetime, scalar_map
from app.graphql.selection import changes_selection
from app.settings import Settings

log = logging.getLogger("syncgraph.graphql")


@lru_cache(maxsize=512)
def wire_name(name: str) -> str:
    return camel(name)


def to_wire(obj: Any) -> dict[str, Any]:
    """A Strawberry input object as the engine takes it: camelCase keys, omitted fields left
    out (so an update keeps them), explicit nulls kept (so they clear)."""
    out: dict[str, Any] = {}
    for name in obj.__dataclass_fields__:
        value = getattr(obj, name)
        if value is strawberry.UNSET:
            continue
        if hasattr(value, "__dataclass_fields__"):
            value = to_wire(value)
        out[wire_name(name)] = value
    return out


class SchemaBuilder:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.types = TypeBuilder()
        self.entities: list[EntityTypes] = [self.types.build(s) for s in registry.ordered()]
        self.entity_enum = entity_enum([s.enum_name for s in registry.ordered()])
        self.item_error = item_error_type(self.entity_enum)
        self.entity_result = entity_sync_result_type(self.item_error)
        self.plurals = {s.plural: s for s in registry.ordered()}
        self.conflict = conflict_type(self.entity_enum)
        self.push_report = push_report_type(self.conflict, self.item_error)

    # --- request and report types -------------------------------------------------------

    def sync_input(self) -> type:
        annotations = {t.spec.plural: t.batch | None for t in self.entities}
        cls = type("SyncInput", (), {"__annotations__": annotations, **dict.fromkeys(annotations)})
        return strawberry.input(cls, description="Batches to upsert, one per entity.")

    def sync_report(self) -> type:
        annotations: dict[str, Any] = {
            "checkpoint": str,
            "dry_run": bool,
            "totals": SyncCounts,
        }
        annotations.update({t.spec.plural: self.entity_result | None for t in self.entities})
        cls = type(
            "SyncReport",
            (),
            {"__annotations__": annotations, **{t.spec.plural: None for t in self.entities}},
        )
        return strawberry.type(cls)

    def change_set(self) -> type:
        annotations: dict[str, Any] = {
            "checkpoint": str,
            "has_more": bool,
            "full_sync_required": bool,
            "server_time": datetime,
        }
        annotations.update({t.spec.plural: t.changes for t in self.entities})
        cls = type("ChangeSet", (), {"__annotations__": annotations})
        return strawberry.type(cls, description="One page of the delta feed.")

    def push_input(self) -> type:
        annotations: dict[str, Any] = {
            "since": str | None,
            "from_date": datetime | None,
            "atomic": bool | None,
            "conflict_policy": ConflictPolicy | None,
        }
        annotations.update({t.spec.plural: t.push | None for t in self.entities})
        defaults = {"atomic": False, "conflict_policy": ConflictPolicy.REJECT}
        cls = type(
            "PushInput",
            (),
            {"__annotations__": annotations, **dict.fromkeys(annotations), **defaults},
        )
        return strawberry.input(
            cls,
            description="Local changes to apply. The base of conflict detection is each "
            "change's baseVersion, else since (a checkpoint) or fromDate.",
        )

    # --- conversions ----------------------------------------------------------------------

    def report(self, cls: type, result: SyncResult, *, dry_run: bool) -> Any:
        totals = SyncCounts(
            **{
                k: result.total(k)
                for k in ("inserted", "updated", "unchanged", "deleted", "failed")
            }
        )
        per_entity = {p: self.entity_report(r) for p, r in result.entities.items()}
        return cls(checkpoint=str(result.checkpoint), dry_run=dry_run, totals=totals, **per_entity)

    def entity_report(self, r: EntityResult) -> Any:
        return self.entity_result(
            inserted=r.inserted,
            updated=r.updated,
            unchanged=r.unchanged,
            deleted=r.deleted,
            failed=r.failed,
            ids=r.ids,
            deleted_ids=r.deleted_ids,
            clean_sync=r.clean_sync,
            errors=[self.item_error_obj(e) for e in r.errors],
        )

    def item_error_obj(self, e: Any) -> Any:
        return self.item_error(
            entity=self.registry.entities[e.entity].enum_name,
            index=e.index,
            id=e.id,
            alias=e.alias,
            field=e.field,
            code=e.code,
            message=e.message,
        )

    def change_set_obj(self, cls: type, page: ChangePage) -> Any:
        per_entity = {}
        for t in self.entities:
            c = page.entities.get(t.spec.plural)
            per_entity[t.spec.plural] = t.changes(
                inserted=c.inserted if c else [],
                updated=c.updated if c else [],
                deleted=c.deleted if c else [],
            )
        return cls(
            checkpoint=str(page.checkpoint),
            has_more=page.has_more,
            full_sync_required=page.full_sync_required,
            server_time=page.server_time,
            **per_entity,
        )

    # --- root fields ----------------------------------------------------------------------

    def build(self) -> strawberry.Schema:
        sync_input, sync_report, change_set = (
            self.sync_input(),
            self.sync_report(),
            self.change_set(),
        )
        query_ns: dict[str, Any] = {
            "changes": self.changes_field(change_set),
            "me": strawberry.field(resolver=_me),
            "actions": strawberry.field(resolver=actions.resolve_actions),
            "is_device_removed": strawberry.field(resolver=actions.is_device_removed),
        }
        for t in self.entities:
            query_ns[t.spec.plural] = self.list_field(t)
            query_ns[_singular_field(t.spec)] = self.get_field(t)
        Query = strawberry.type(type("Query", (), query_ns))
        mutation_ns = {
            "sync": self.sync_field(sync_input, sync_report),
            "push_changes": self.push_field(self.push_input()),
            "resync": self.resync_field(),
            "register_device": strawberry.mutation(resolver=actions.register_device),
            "push_actions": strawberry.mutation(resolver=actions.push_actions),
            "report_device_removed": strawberry.mutation(resolver=actions.report_device_removed),
            "remove_device": strawberry.mutation(resolver=actions.remove_device),
        }
        Mutation = strawberry.type(type("Mutation", (), mutation_ns))
        Subscription = strawberry.type(
            type(
                "Subscription",
                (),
                {
                    "changes": subscriptions.changes_subscription(self, change_set),
                    "actions": strawberry.subscription(resolver=subscriptions.actions_subscription),
                },
            )
        )
        s = self.settings
        limits = [
            *QueryDepthLimiter(max_depth=s.max_query_depth).validation_rules,
            *MaxAliasesLimiter(max_alias_count=s.max_aliases).validation_rules,
        ]
        return SyncSchema(
            query=Query,
            mutation=Mutation,
            subscription=Subscription,
            execution_context_class=executor_class(s),
            extensions=[
                lambda: MaxTokensLimiter(max_token_count=s.max_tokens),
                # The same document objects and rule classes every time, so that a query a
                # client sends again is neither parsed nor validated again (the limiters'
                # own factories would make new rule classes per request: no cache hits).
                lambda: ParserCache(maxsize=256),
                lambda: AddValidationRules(limits),
                lambda: ValidationCache(maxsize=256),
            ],
            config=StrawberryConfig(
                disable_field_suggestions=not s.is_dev, scalar_map=scalar_map()
            ),
        )

    def sync_field(self, sync_input: type, sync_report: type) -> Any:
        builder = self

        async def sync(
            info: strawberry.Info,
            input: sync_input,  # type: ignore[valid-type]
            dry_run: bool | None = False,
            force: bool | None = False,
        ) -> sync_report:  # type: ignore[valid-type]
            principal = require_key(info, "sync:write")
            raw = bulk_argument(info, "input")
            if raw is not None:
                batches = {
                    plural: Batch(data=batch["data"], clean_sync=bool(batch.get("cleanSync")))
                    for plural, batch in raw.items()
                    if batch is not None
                }
            else:
                batches = {
                    plural: Batch(
                        data=[to_wire(i) for i in batch.data], clean_sync=bool(batch.clean_sync)
                    )
                    for plural in builder.plurals
                    if (batch := getattr(input, plural)) is not None
                }
            result = await info.context.state.service.sync(
                principal.tenant_id,
                batches,
                dry_run=bool(dry_run),
                force=bool(force),
                may_clean=principal.allows("sync:manage"),
            )
            return builder.report(sync_report, result, dry_run=bool(dry_run))

        return strawberry.mutation(
            resolver=sync,
            description="Bulk upsert (mirror a source of truth); see SyncReport.",
        )

    def push_field(self, push_input: type) -> Any:
        builder = self

        async def push_changes(
            info: strawberry.Info,
            input: push_input,  # type: ignore[valid-type]
        ) -> builder.push_report:  # type: ignore[name-defined]
            principal = require(info, "sync:write")
            raw = bulk_argument(info, "input")
            request = builder.push_request(input) if raw is None else builder.raw_push_request(raw)
            result = await info.context.state.service.push(principal.tenant_id, request)
            return builder.push_report(
                checkpoint=str(result.checkpoint),
                applied=result.applied,
                conflicts=[
                    builder.conflict(
                        entity=builder.registry.entities[c.entity].enum_name,
                        id=c.id,
                        reason=c.reason,
                        server_version=c.server_version,
                        server_record=c.server_record,
                    )
                    for c in result.conflicts
                ],
                errors=[builder.item_error_obj(e) for e in result.errors],
            )

        return strawberry.mutation(
            resolver=push_changes,
            description="Apply a client's local changes; conflicts come back with the "
            "server's record.",
        )

    def push_request(self, data: Any) -> PushRequest:
        entities: dict[str, EntityPush] = {}
        for plural in self.plurals:
            pushed = getattr(data, plural)
            if pushed is None:
                continue
            entities[plural] = EntityPush(
                **{kind: [_change(c) for c in getattr(pushed, kind) or []] for kind in KINDS}
            )
        policy = data.conflict_policy or ConflictPolicy.REJECT
        return PushRequest(
            entities=entities,
            since=parse_checkpoint(data.since),
            from_date=data.from_date,
            atomic=bool(data.atomic),
            policy=policy.value,
        )

    def raw_push_request(self, raw: dict[str, Any]) -> PushRequest:
        """A push from a variable the fast path kept raw (already checked)."""
        entities: dict[str, EntityPush] = {}
        for plural in self.plurals:
            pushed = raw.get(plural)
            if pushed is None:
                continue
            entities[plural] = EntityPush(
                **{kind: [_raw_change(c) for c in pushed.get(kind) or []] for kind in KINDS}
            )
        from_date = raw.get("fromDate")
        return PushRequest(
            entities=entities,
            since=parse_checkpoint(raw.get("since")),
            from_date=None if from_date is None else parse_datetime(from_date),
            atomic=bool(raw.get("atomic")),
            policy=raw.get("conflictPolicy") or "REJECT",
        )

    def resync_field(self) -> Any:
        builder = self

        async def resync(
            info: strawberry.Info,
            object_type: builder.entity_enum,  # type: ignore[name-defined]
            object_ids: list[strawberry.ID] | None = None,
        ) -> ResyncResult:
            principal = require_key(info, "sync:manage")
            spec = builder.registry.entities[
                next(s.name for s in builder.registry.ordered() if s.enum_name == object_type.value)
            ]
            result = await info.context.state.service.resync(
                principal.tenant_id, spec, None if object_ids is None else list(object_ids)
            )
            return ResyncResult(
                checkpoint=str(result.checkpoint),
                resynced=result.resynced,
                not_found=[strawberry.ID(i) for i in result.not_found],
            )

        return strawberry.mutation(
            resolver=resync,
            description="Re-send records to every puller and subscriber (version unchanged), "
            "after out-of-band writes; without objectIds, the whole entity.",
        )

    def changes_field(self, change_set: type) -> Any:
        builder = self

        async def changes(
            info: strawberry.Info,
            since: str | None = None,
            from_date: datetime | None = None,
            limit: int | None = 1000,
        ) -> change_set:  # type: ignore[valid-type]
            principal = require(info, "sync:read")
            selected = changes_selection(builder.plurals, info.selected_fields[0].selections)
            page = await info.context.state.service.changes(
                principal.tenant_id,
                entities=[builder.plurals[p] for p in builder.plurals if p in selected],
                since=parse_checkpoint(since),
                from_date=from_date.astimezone(UTC) if from_date else None,
                limit=1000 if limit is None else limit,
                columns=selected,
            )
            return builder.change_set_obj(change_set, page)

        return strawberry.field(
            resolver=changes, description="Changes after a checkpoint (or a date), in order."
        )

    def list_field(self, t: EntityTypes) -> Any:
        connection, spec = t.connection, t.spec

        async def list_records(
            info: strawberry.Info,
            first: int | None = 50,
            after: str | None = None,
            alias: str | None = None,
            include_deleted: bool | None = False,
        ) -> connection:  # type: ignore[valid-type]
            principal = require(info, "sync:read")
            return await _page(
                info,
                spec,
                connection,
                principal.tenant_id,
                first=50 if first is None else first,
                after=after,
                alias=alias,
                include_deleted=bool(include_deleted),
            )

        return strawberry.field(resolver=list_records, description=f"Browse {spec.plural}.")

    def get_field(self, t: EntityTypes) -> Any:
        spec = t.spec

        async def get_record(
            info: strawberry.Info,
            id: strawberry.ID | None = None,
            alias: str | None = None,
        ) -> t.object | None:  # type: ignore[name-defined]
            principal = require(info, "sync:read")
            return await _get(info, spec, principal.tenant_id, id=id, alias=alias)

        return strawberry.field(resolver=get_record, description=f"One {spec.name} by id or alias.")


def _change(change: Any) -> Change:
    data = change.data
    return Change(
        id=str(change.id),
        base_version=change.base_version,
        changed_at=change.changed_at,
        actor=change.actor,
        data=None if data is None else to_wire(data),
    )


def _raw_change(change: dict[str, Any]) -> Change:
    changed_at = change.get("changedAt")
    return Change(
        id=str(change["id"]),
        base_version=change.get("baseVersion"),
        changed_at=None if changed_at is None else parse_datetime(changed_at),
        actor=change.get("actor"),
        data=change.get("data"),
    )


def _singular_field(spec: EntitySpec) -> str:
    return spec.name[0].lower() + spec.name[1:]


def _me(info: strawberry.Info) -> Principal:
    p = require(info, "sync:read")
    return Principal(
        tenant_id=strawberry.ID(p.tenant_id),
        tenant_name=p.tenant_name,
        scopes=sorted(p.scopes),
        device_id=strawberry.ID(p.device_id) if p.device_id else None,
    )


def _encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_cursor(value: str) -> str:
    try:
        return base64.urlsafe_b64decode(value.encode()).decode()
    except ValueError:
        raise BadRequest(f"cursor {value!r} is not one this server issued") from None


async def _page(
    info: strawberry.Info,
    spec: EntitySpec,
    connection: type,
    tenant_id: str,
    *,
    first: int,
    after: str | None,
    alias: str | None,
    include_deleted: bool,
) -> Any:
    state = info.context.state
    if first < 0 or first > state.settings.max_page:
        raise BadRequest(f"first must be between 0 and {state.settings.max_page}")
    t = spec.table
    conds = [t.c.tenant_id == tenant_id]
    if not include_deleted:
        conds.append(t.c.deleted_at.is_(None))
    if alias is not None:
        conds.append(t.c.alias == alias)
    page_conds = [*conds, t.c.id > _decode_cursor(after)] if after else conds
    async with state.engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(t).where(*page_conds).order_by(t.c.id).limit(first + 1))
        ).all()

    async def count() -> int:
        async with state.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).where(*conds))).scalar_one())

    nodes = rows[:first]
    result = connection(
        nodes=nodes,
        end_cursor=_encode_cursor(nodes[-1].id) if nodes else None,
        has_next_page=len(rows) > first,
    )
    result.count = count
    return result


async def _get(
    info: strawberry.Info,
    spec: EntitySpec,
    tenant_id: str,
    *,
    id: str | None,
    alias: str | None,
) -> Any:
    if (id is None) == (alias is None):
        raise BadRequest("give exactly one of id and alias")
    t = spec.table
    conds = [t.c.tenant_id == tenant_id, t.c.deleted_at.is_(None)]
    if id is not None:
        canonical = parse_uuid(id)
        if canonical is None:
            raise BadRequest(f"id {id!r} is not a UUID")
        conds.append(t.c.id == canonical)
    else:
        conds.append(t.c.alias == alias)
    async with info.context.state.engine.connect() as conn:
        return (await conn.execute(sa.select(t).where(*conds))).one_or_none()


class SyncSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log only the unexpected: expected errors are answers (with codes), not incidents."""
        for error in errors:
            original = error.original_error
            while isinstance(original, GraphQLError) and original.original_error is not None:
                original = original.original_error
            if original is not None and not isinstance(original, GraphQLError | SyncError):
                log.error("unexpected error in %s", error.path, exc_info=original)


def build_schema(registry: Registry, settings: Settings) -> strawberry.Schema:
    return SchemaBuilder(registry, settings).build()


__all__ = ["Context", "build_schema"]
