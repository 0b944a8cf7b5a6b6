"""Prometheus metrics of the engine (one registry per app, so tests stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "syncgraph_requests", "GraphQL requests", ["operation"], registry=self.registry
        )
        self.errors = Counter(
            "syncgraph_errors", "GraphQL errors by code", ["code"], registry=self.registry
        )
        self.rows = Counter(
            "syncgraph_rows_synced",
            "Rows written by sync, by entity and outcome",
            ["entity", "outcome"],
            registry=self.registry,
        )
        self.pull_size = Histogram(
            "syncgraph_pull_records",
            "Records returned per changes page",
            buckets=(0, 1, 10, 100, 1000, 10_000),
            registry=self.registry,
        )

    def rows_synced(self, entity: str, inserted: int, updated: int, deleted: int) -> None:
        for outcome, count in (("inserted", inserted), ("updated", updated), ("deleted", deleted)):
            if count:
                self.rows.labels(entity, outcome).inc(count)

    def pulled(self, size: int) -> None:
        self.pull_size.observe(size)
