"""``build_schema(registry, settings)``: the whole GraphQL schema, composed in phases — the
generated types (``catalog``), then the root fields, one resolver module per operation."""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.exceptions import DuplicatedTypeName
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from app import edge
from app.engine.registry import Registry
from app.errors import SyncError
from app.graphql import actions, subscriptions
from app.graphql.catalog import Catalog, build_catalog
from app.graphql.changes import changes_field
from app.graphql.context import Context
from app.graphql.executor import executor_class
from app.graphql.me import me
from app.graphql.names import FieldClash, clash_error, with_entities
from app.graphql.push import push_field
from app.graphql.records import get_field, list_field, singular_field
from app.graphql.resync import resync_field
from app.graphql.scalars import scalar_map
from app.graphql.sync import sync_field
from app.settings import Settings

log = logging.getLogger("syncgraph.graphql")


def query_type(catalog: Catalog) -> type:
    own: dict[str, Any] = {
        "changes": changes_field(catalog),
        "me": strawberry.field(resolver=me),
        "actions": strawberry.field(resolver=actions.resolve_actions),
        "is_device_removed": strawberry.field(resolver=actions.is_device_removed),
    }
    per_entity: dict[str, Any] = {}
    for t in catalog.entities:
        per_entity[t.spec.plural] = list_field(t)
        per_entity[singular_field(t.spec)] = get_field(t)
    return strawberry.type(type("Query", (), with_entities("Query", own, per_entity)))


def mutation_type(catalog: Catalog) -> type:
    fields = {
        "sync": sync_field(catalog),
        "push_changes": push_field(catalog),
        "resync": resync_field(catalog),
        "register_device": strawberry.mutation(resolver=actions.register_device),
        "push_actions": strawberry.mutation(resolver=actions.push_actions),
        "report_device_removed": strawberry.mutation(resolver=actions.report_device_removed),
        "remove_device": strawberry.mutation(resolver=actions.remove_device),
        "set_device_view": strawberry.mutation(resolver=actions.set_device_view),
    }
    return strawberry.type(type("Mutation", (), fields))


def subscription_type(catalog: Catalog) -> type:
    fields = {
        "changes": subscriptions.changes_subscription(catalog),
        "actions": strawberry.subscription(resolver=subscriptions.actions_subscription),
    }
    return strawberry.type(type("Subscription", (), fields))


class SyncSchema(strawberry.Schema):
    def __init__(self, *args: Any, validation_limits: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validation_limits = validation_limits
        """The rules added to GraphQL's own validation (``validation_limits``, run by an
        extension): the fast lane (``app/accel/fastlane.py``) validates with the same."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log only the unexpected: expected errors are answers (with codes), not incidents."""
        for error in errors:
            original = error.original_error
            while isinstance(original, GraphQLError) and original.original_error is not None:
                original = original.original_error
            if original is None or isinstance(original, GraphQLError | SyncError):
                continue
            code = edge.failure_code(original)
            if code == "INTERNAL":
                log.error("unexpected error in %s", error.path, exc_info=original)
            else:  # the database down, or text it refuses: an answer with a code, no traceback
                log.warning("%s in %s: %s", code, error.path, original)


def build_schema(registry: Registry, settings: Settings) -> strawberry.Schema:
    """The schema of a frozen registry; an entity named like one of syncgraph's own types or
    fields is a ``StartupError`` (``names.py``)."""
    try:
        return _schema(registry, settings)
    except (DuplicatedTypeName, FieldClash) as exc:
        raise clash_error(registry, exc) from exc


def validation_limits(settings: Settings) -> list[Any]:
    """The validation rules syncgraph adds to GraphQL's own: query depth and aliases."""
    return [
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    ]


def _schema(registry: Registry, settings: Settings) -> strawberry.Schema:
    catalog = build_catalog(registry)
    s = settings
    limits = validation_limits(s)
    return SyncSchema(
        query=query_type(catalog),
        mutation=mutation_type(catalog),
        subscription=subscription_type(catalog),
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
        config=StrawberryConfig(disable_field_suggestions=not s.is_dev, scalar_map=scalar_map()),
        validation_limits=limits,
    )


__all__ = ["Context", "build_schema"]
