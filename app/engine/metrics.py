"""Prometheus metrics of the engine (one registry per app, so tests stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self._view_metrics()
        self.subscribers = Gauge(
            "syncgraph_subscribers", "Connected change subscribers", registry=self.registry
        )
        self.hub_reads = Counter(
            "syncgraph_hub_reads", "Feed reads by the per-tenant hubs", registry=self.registry
        )
        self.fanout = Histogram(
            "syncgraph_fanout_seconds",
            "From a hub's wake-up to every subscriber having the window",
            registry=self.registry,
        )
        self.action_tail_reads = Counter(
            "syncgraph_action_tail_reads",
            "Action log reads that extend a tenant's in-memory tail for its subscribers",
            registry=self.registry,
        )
        self.lagging = Counter(
            "syncgraph_lagging_subscribers",
            "Times a slow subscriber was switched to catch-up reads",
            registry=self.registry,
        )

    def _view_metrics(self) -> None:
        self.view_pulls = Counter(
            "syncgraph_view_pulls",
            "changes pages read through a view",
            ["view"],
            registry=self.registry,
        )
        self.view_moves = Counter(
            "syncgraph_view_moves",
            "Records that moved into or out of a client's view (sent on a pull)",
            ["view", "direction"],
            registry=self.registry,
        )
        self.view_subscribers = Gauge(
            "syncgraph_view_subscribers",
            "Change subscribers bound to a view",
            ["view"],
            registry=self.registry,
        )

    def rows_synced(self, entity: str, inserted: int, updated: int, deleted: int) -> None:
        for outcome, count in (("inserted", inserted), ("updated", updated), ("deleted", deleted)):
            if count:
                self.rows.labels(entity, outcome).inc(count)

    def pulled(self, size: int, *, view: str | None = None) -> None:
        self.pull_size.observe(size)
        if view is not None:
            self.view_pulls.labels(view).inc()

    def moved(self, view: str, moved_in: int, moved_out: int) -> None:
        if moved_in:
            self.view_moves.labels(view, "in").inc(moved_in)
        if moved_out:
            self.view_moves.labels(view, "out").inc(moved_out)
