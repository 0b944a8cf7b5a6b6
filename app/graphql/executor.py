"""Which executor Strawberry runs a schema's operations with.

The plain one is graphql-core's, as Strawberry sets it up (``SyncExecutor``). The
accelerators ``bulkinput`` and ``fastpath`` (``app/accel/``) are executor classes of their
own; ``executor_class`` mixes in those that are on, once per schema, and gives each its
per-schema caches as class attributes, so they live and die with the schema.
"""

from __future__ import annotations

from typing import Any

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app import accel
from app.accel.bulkinput import BulkInputExecutor, Checker
from app.accel.fastpath import FastExecutor, FastPlans
from app.settings import Settings


class SyncExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's executor, with each subscription event's field cache its own."""

    def build_per_event_executor(self, payload: Any) -> Any:
        """graphql-core's per-event executor is a shallow copy that shares (and grows) the
        subscription's field cache for the life of the subscription: give it a fresh one."""
        executor = super().build_per_event_executor(payload)
        executor._relevant_sub_fields = {}
        return executor


def executor_class(settings: Settings) -> type[SyncExecutor]:
    """The executor for one schema: ``SyncExecutor`` with the accelerators that are on mixed
    in. ``settings.fast_path`` (default on) turns both executor accelerators off, as it
    always has; ``SYNCGRAPH_ACCEL`` chooses among them."""
    bases: list[type] = []
    caches: dict[str, Any] = {}
    if settings.fast_path and accel.enabled("bulkinput"):
        bases.append(BulkInputExecutor)
        caches["checker"] = Checker()
    if settings.fast_path and accel.enabled("fastpath"):
        bases.append(FastExecutor)
        caches["plans"] = FastPlans()
    if not bases:
        return SyncExecutor
    made: type[SyncExecutor] = type("AcceleratedExecutor", (*bases, SyncExecutor), caches)
    return made
