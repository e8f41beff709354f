"""Prometheus metrics of one coordinator process, on its own registry (docs/metrics.md).

Two kinds of figure, said in every family's HELP: this process's own counters, incremented
where the event happens (requests, leases handed out, events the store committed), which a
fleet of several coordinator processes sums with `sum()`; and fleet-wide figures read from
the database at scrape time (tasks, devices, the books, CDN traffic), the same on every
process. Those are one grouped query per table (store/figures.py), read at most once per
`FIGURES_MAX_AGE_S` however many scrapers ask, so a scrape stays cheap at 10,000 devices.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fogwheel.coordinator.gcpause import GcPauses
from fogwheel.core.ledger import MICRO
from fogwheel.store import Store
from fogwheel.store import events as store_events
from fogwheel.store.figures import FleetFigures, LedgerSums, fleet_figures

FIGURES_MAX_AGE_S = 5.0  # fleet-wide figures are read from the database at most this often
# Request latency buckets, seconds: a sync takes milliseconds, a long poll up to 60 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A stage of a sync (a queue, a lock, a transaction): from well under a millisecond up.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PER_PROCESS = "(this process)"
FLEET_WIDE = "(fleet-wide, from the database)"


class Metrics:
    """Every family of /metrics; the routes and the store's tally feed it."""

    def __init__(self, store: Store, figures_max_age_s: float | None = None) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "fogwheel_http_request_duration_seconds",
            f"HTTP requests by method, route template and status class, from the request's "
            f"start to its last byte out {PER_PROCESS}; paths no route matches are one route, "
            "'unmatched'",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.submitted = Counter(
            "fogwheel_tasks_submitted",
            f"Tasks customers submitted {PER_PROCESS}; replicas made to check them are not counted",
            registry=r,
        )
        self.leased = Counter(
            "fogwheel_tasks_leased",
            f"Leases handed to nodes {PER_PROCESS}: the dispatch rate is its rate(); a task's "
            "replicas and retries lease separately, so it can exceed the tasks submitted",
            registry=r,
        )
        self.reported = Counter(
            "fogwheel_task_reports_acked",
            f"Task results acknowledged to nodes {PER_PROCESS}",
            registry=r,
        )
        self.shed = Counter(
            "fogwheel_syncs_shed",
            "Syncs that only asked for work, answered at once because they had queued too "
            f"long {PER_PROCESS}",
            registry=r,
        )
        self.pace_factor = Gauge(
            "fogwheel_sync_pace_factor",
            "How much this process stretches every node's wait to stay within its load "
            "(core/pacing.py Pacer; 1: not at all)",
            registry=r,
        )
        self.lease_seconds = Gauge(
            "fogwheel_lease_seconds",
            "How long a lease lasts now: the configured period, or longer while waits stretch",
            registry=r,
        )
        # Where a sync's time goes inside the process (docs/metrics.md, "Where a sync waits"):
        # its wait for a worker thread, then each write transaction's wait for this process's
        # write lock (SQLite: one writer at a time) and its time from the lock to the commit.
        self.sync_queued = Histogram(
            "fogwheel_sync_queue_seconds",
            f"How long a node's sync waited for a worker thread before it was served {PER_PROCESS}",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.lock_wait = Histogram(
            "fogwheel_store_lock_wait_seconds",
            "How long a write transaction waited for this process's write lock (SQLite; 0 on "
            f"PostgreSQL, where row locks wait inside the transaction) {PER_PROCESS}",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.tx_held = Histogram(
            "fogwheel_store_transaction_seconds",
            "A write transaction from its turn to its commit: statements, row-lock waits and "
            f"the commit {PER_PROCESS}",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        store.tx_timed = self._tx_timed
        ProcessCollector(registry=r)  # process_cpu_seconds_total, resident memory, open fds
        self.gc = GcPauses(r)  # timed once `fogwheel coordinator` installs it (server.py)
        max_age = os.environ.get("FOGWHEEL_METRICS_MAX_AGE_S")
        if figures_max_age_s is None:
            figures_max_age_s = float(max_age) if max_age else FIGURES_MAX_AGE_S
        self.fleet = FleetCollector(store, figures_max_age_s)
        r.register(self.fleet)
        r.register(TallyCollector(store.tally))

    def _tx_timed(self, waited_s: float, held_s: float) -> None:
        self.lock_wait.observe(waited_s)
        self.tx_held.observe(held_s)

    def refresh(self) -> None:
        """Set the process gauges that are read, not counted (the lease period)."""
        self.lease_seconds.set(self.store.lease_seconds)


class TallyCollector(Collector):
    """The store's committed events (store/events.py) as this process's counters."""

    FAMILIES = {
        store_events.LEASES_EXPIRED: (
            "fogwheel_leases_expired",
            "Leases that ran out before their node reported, their tasks queued again or "
            f"failed {PER_PROCESS}: the reaper's, and on PostgreSQL whichever process reaped",
        ),
        store_events.DISAGREEMENTS: (
            "fogwheel_verification_disagreements",
            "Results a node reported that disagreed with the agreed one (a replica's vote "
            f"against the quorum) {PER_PROCESS}",
        ),
        store_events.QUARANTINES: (
            "fogwheel_quarantines",
            f"Devices quarantined, caught returning a wrong result {PER_PROCESS}; "
            "fogwheel_nodes_quarantined is how many are quarantined now",
        ),
    }

    def __init__(self, tally: store_events.Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        for event, (name, help_) in self.FAMILIES.items():
            yield CounterMetricFamily(name, help_, value=self.tally.get(event))


class FleetCollector(Collector):
    """Fleet-wide families read from the database, cached for `max_age_s` seconds."""

    def __init__(self, store: Store, max_age_s: float) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e18  # monotonic time of the cached figures
        self._figures = FleetFigures()
        self._read_s = 0.0
        self._books = LedgerSums(0.0 if store.is_sqlite else LedgerSums.PG_SETTLE_S)

    def describe(self) -> Iterable[Metric]:
        """The families without reading the database (registering must not query it)."""
        return list(self._families(FleetFigures(), 0.0, 0.0, empty=True))

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one scraper reads; the others wait and reuse its figures
            now = time.monotonic()
            if now - self._at >= self.max_age_s:
                self._figures = fleet_figures(self.store, time.time(), self._books, now)
                self._read_s = time.monotonic() - now
                self._at = time.monotonic()
            figures, age, read_s = self._figures, time.monotonic() - self._at, self._read_s
        yield from self._families(figures, age, read_s)

    @staticmethod
    def _families(
        f: FleetFigures, age: float, read_s: float, empty: bool = False
    ) -> Iterator[Metric]:
        def gauge(name: str, help_: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, f"{help_} {FLEET_WIDE}", labels=labels)

        def counter(name: str, help_: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(name, f"{help_} {FLEET_WIDE}", labels=labels)

        tasks = gauge(
            "fogwheel_tasks",
            "Customers' tasks by state, each counted once: the replicas and backup copies "
            "that check or race them are fogwheel_task_copies, and attempts are not counted",
            ["state"],
        )
        copies = gauge(
            "fogwheel_task_copies",
            "Extra copies of tasks by state: replicas run on other devices to check a result "
            "(quorum) and backups of stragglers; each is a task row of its own",
            ["state"],
        )
        nodes = gauge(
            "fogwheel_nodes",
            "Devices by state: up (synced within the gone-after horizon), draining, gone, "
            "quarantined, revoked (each device in one state, in that order of precedence "
            "from the last)",
            ["state"],
        )
        cores = gauge("fogwheel_node_cores", "Cores the devices offer, by their state", ["state"])
        quarantined = gauge(
            "fogwheel_nodes_quarantined", "Devices quarantined now (revoked ones included)"
        )
        disputed = gauge(
            "fogwheel_node_disputed_results",
            "Disputed results on the devices' trust records now (a pardon clears a device's); "
            "fogwheel_verification_disagreements_total counts each as it happens",
        )
        books = counter(
            "fogwheel_ledger_credits",
            "The ledger's entries summed, in credits, by kind of account (customer, node, "
            "platform) and side (debit, credit): customers charged is "
            '{account="customer",side="debit"}, paid to owners (for their devices) '
            '{account="node",side="credit"}, platform fees {account="platform",'
            'side="credit"}; corrections add to the other side',
            ["account", "side"],
        )
        served = counter(
            "fogwheel_cdn_served_bytes",
            "CDN share bytes devices served, as receipted by the fetching clients (what "
            "owners are paid for)",
        )
        delivered = counter(
            "fogwheel_cdn_delivered_bytes", "CDN content bytes delivered to fetching clients"
        )
        fetched = counter(
            "fogwheel_cdn_fetched_share_bytes",
            "Share bytes fetching clients read, by source: peers (devices) or origin (the "
            "coordinator); offload is peers over both",
            ["source"],
        )
        offload = gauge(
            "fogwheel_cdn_offload_ratio",
            "Share of the CDN bytes clients fetched that came from devices, not the "
            "coordinator, since the start (absent before the first fetch)",
        )
        repair = counter(
            "fogwheel_cdn_repair_bytes",
            "Bytes moved to restore CDN redundancy (shares placed again on other devices)",
        )
        age_g = GaugeMetricFamily(
            "fogwheel_metrics_figures_age_seconds",
            f"How old the fleet-wide figures in this scrape are (read at most every "
            f"{FIGURES_MAX_AGE_S:g} s by default) {PER_PROCESS}",
        )
        read_g = GaugeMetricFamily(
            "fogwheel_metrics_figures_read_seconds",
            f"How long the last read of the fleet-wide figures took {PER_PROCESS}",
        )
        if not empty:
            for s, n in f.tasks.items():
                tasks.add_metric([s], n)
            for s, n in f.copies.items():
                copies.add_metric([s], n)
            for s, n in f.nodes.items():
                nodes.add_metric([s], n)
            for s, n in f.cores.items():
                cores.add_metric([s], n)
            quarantined.add_metric([], f.quarantined)
            disputed.add_metric([], f.disputed)
            for (account, side), micro in sorted(f.ledger.items()):
                books.add_metric([account, side], micro / MICRO)
            served.add_metric([], f.cdn_bytes.get("served", 0))
            delivered.add_metric([], f.cdn_bytes.get("fetch", 0))
            fetched.add_metric(["peers"], f.cdn_from_peers)
            fetched.add_metric(["origin"], f.cdn_from_origin)
            moved = f.cdn_from_peers + f.cdn_from_origin
            if moved:
                offload.add_metric([], f.cdn_from_peers / moved)
            repair.add_metric([], f.cdn_bytes.get("repair", 0))
            age_g.add_metric([], age)
            read_g.add_metric([], read_s)
        yield from (tasks, copies, nodes, cores, quarantined, disputed, books)
        yield from (served, delivered, fetched, offload, repair, age_g, read_g)
