"""Prometheus metrics of one coordinator process, on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from fogwheel.store import Store


class Metrics:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "fogwheel_tasks_submitted", "Tasks submitted by customers", registry=self.registry
        )
        self.leased = Counter(
            "fogwheel_tasks_leased", "Task leases handed to nodes", registry=self.registry
        )
        self.reported = Counter(
            "fogwheel_task_reports_acked",
            "Task results acknowledged to nodes",
            registry=self.registry,
        )
        self.shed = Counter(
            "fogwheel_syncs_shed",
            "Syncs that only asked for work, answered at once because they had queued too long",
            registry=self.registry,
        )
        self.tasks = Gauge(
            "fogwheel_tasks", "Tasks in the store by state", ["state"], registry=self.registry
        )
        self.nodes = Gauge("fogwheel_nodes", "Nodes by state", ["state"], registry=self.registry)
        self.pace_factor = Gauge(
            "fogwheel_sync_pace_factor",
            "How much this process stretches every node's wait to stay within its load "
            "(core/pacing.py Pacer; 1: not at all)",
            registry=self.registry,
        )
        self.lease_seconds = Gauge(
            "fogwheel_lease_seconds",
            "How long a lease lasts now: the configured period, or longer while waits stretch",
            registry=self.registry,
        )

    def refresh(self) -> None:
        """Read gauges from the store at scrape time: the database is the truth."""
        import time

        for state in ("pending", "leased", "done", "failed", "cancelled"):
            self.tasks.labels(state).set(0)
        for state, n in self.store.counts().items():
            self.tasks.labels(state).set(n)
        counts = {"up": 0, "draining": 0, "gone": 0}
        for node in self.store.list_nodes(time.time()):
            counts[node["state"]] = counts.get(node["state"], 0) + 1
        for state, n in counts.items():
            self.nodes.labels(state).set(n)
        self.lease_seconds.set(self.store.lease_seconds)
