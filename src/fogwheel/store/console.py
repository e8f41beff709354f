"""The queries behind the web console: what the fleet is doing, whose jobs are whose, how a
job progresses, and the flywheel's history (core/flywheel.py).

Each answer is bounded whatever the database holds: listings take a limit, a job's
throughput is a fixed number of buckets, the history a window and a row cap. Customer-scoped
reads take the customer id and answer None for a job that is not theirs, as store/jobs.py does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from fogwheel.core import flywheel
from fogwheel.core import quota as inflight
from fogwheel.core.tasks import TaskState
from fogwheel.store.base import StoreBase
from fogwheel.store.schema import (
    cdn_traffic,
    flywheel_samples,
    jobs,
    ledger,
    nodes,
    principals,
    tasks,
)

NODE_ACCOUNTS = ("node:", "node;")  # every `node:<id>` account sorts between these two
THROUGHPUT_BUCKETS = 30
STATES = ("pending", "leased", "verifying", "done", "failed", "cancelled")


class ConsoleStore(StoreBase):
    """Reads for the console's views; the only write is a flywheel sample."""

    # -- the fleet ---------------------------------------------------------------------------

    def fleet_extras(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """For each of `node_ids`: when it joined, its network and measured uplink, the jobs
        it holds tasks of now (job id -> tasks), and what it earned (micro-credits)."""
        ids = list(node_ids)
        out: dict[str, dict[str, Any]] = {
            i: {"joined_at": None, "network": None, "uplink_bps": None, "work": {}, "earned": 0}
            for i in ids
        }
        if not ids:
            return out
        with self.read() as c:
            for chunk in _chunks(ids, 500):
                for r in c.execute(
                    select(
                        nodes.c.id, nodes.c.joined_at, nodes.c.network, nodes.c.uplink_bps
                    ).where(nodes.c.id.in_(chunk))
                ):
                    out[r.id].update(
                        joined_at=r.joined_at, network=r.network, uplink_bps=r.uplink_bps
                    )
                for node_id, job_id, n in c.execute(
                    select(tasks.c.node_id, tasks.c.job_id, func.count())
                    .where(tasks.c.state == TaskState.LEASED, tasks.c.node_id.in_(chunk))
                    .group_by(tasks.c.node_id, tasks.c.job_id)
                ):
                    out[node_id]["work"][str(job_id)] = int(n)
                accounts = [f"node:{i}" for i in chunk]
                for account, total in c.execute(
                    select(ledger.c.account, func.sum(ledger.c.amount))
                    .where(ledger.c.account.in_(accounts))
                    .group_by(ledger.c.account)
                ):
                    out[account.removeprefix("node:")]["earned"] = int(total or 0)
        return out

    # -- jobs of every customer (the operator) ------------------------------------------------

    def all_jobs(self, limit: int) -> list[tuple[int, str, str]]:
        """The newest `limit` jobs of every customer: (job id, customer id, customer name)."""
        with self.read() as c:
            rows = c.execute(
                select(jobs.c.id, jobs.c.customer_id).order_by(jobs.c.id.desc()).limit(limit)
            ).all()
            names = self._customer_names(c, {r.customer_id for r in rows})
        return [(r.id, r.customer_id, names.get(r.customer_id, "")) for r in rows]

    def _customer_names(self, c: Any, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        found = c.execute(
            select(principals.c.id, func.max(principals.c.name))
            .where(principals.c.kind == "customer", principals.c.id.in_(sorted(ids)))
            .group_by(principals.c.id)
        ).all()
        return {i: n for i, n in found}

    def job_customer(self, job_id: int) -> str | None:
        """Whose job `job_id` is; None when there is none."""
        with self.read() as c:
            found: str | None = c.execute(
                select(jobs.c.customer_id).where(jobs.c.id == job_id)
            ).scalar()
        return found

    def task_customer(self, task_id: int) -> str | None:
        """Whose task `task_id` is; None when there is none."""
        with self.read() as c:
            found: str | None = c.execute(
                select(tasks.c.customer_id).where(tasks.c.id == task_id)
            ).scalar()
        return found

    # -- a job's progress --------------------------------------------------------------------

    def job_progress(self, customer_id: str, job_id: int, now: float) -> dict[str, Any] | None:
        """A job's tasks by state and its throughput: tasks finished done in each of
        THROUGHPUT_BUCKETS equal spans from its creation to now (or to its last finish).

        Counts the job's tasks, not their replicas (the checks a task's result needed);
        None when the job is not the customer's."""
        with self.read() as c:
            created = c.execute(
                select(jobs.c.created_at).where(
                    jobs.c.id == job_id, jobs.c.customer_id == customer_id
                )
            ).scalar()
            if created is None:
                return None
            primary = (tasks.c.job_id == job_id, tasks.c.replica_of.is_(None))
            counts: dict[str, int] = dict(
                c.execute(
                    select(tasks.c.state, func.count()).where(*primary).group_by(tasks.c.state)
                ).all()
            )
            finished = (
                c.execute(
                    select(tasks.c.finished_at).where(
                        *primary, tasks.c.state == TaskState.DONE, tasks.c.finished_at.is_not(None)
                    )
                )
                .scalars()
                .all()
            )
        states = {s: int(counts.get(s, 0)) for s in STATES}
        open_ = states["pending"] + states["leased"] + states["verifying"]
        end = now if open_ or not finished else max(finished)
        return {
            "job_id": job_id,
            "states": states,
            "throughput": _buckets(finished, created, max(end, created + 1.0)),
        }

    # -- the flywheel ------------------------------------------------------------------------

    def flywheel_counts(self, now: float, price: dict[str, Any]) -> flywheel.FleetCounts:
        """The fog's figures now, for a sample; `price` is the price sheet in force."""
        horizon = now - self.gone_after_s
        with self.read() as c:
            online = c.execute(
                select(nodes.c.cores, nodes.c.disk_mb, nodes.c.uplink_bps, nodes.c.quota).where(
                    nodes.c.state == "up",
                    ~nodes.c.revoked,
                    ~nodes.c.quarantined,
                    nodes.c.last_seen >= horizon,
                )
            ).all()
            known = c.execute(
                select(func.count()).select_from(nodes).where(~nodes.c.revoked)
            ).scalar_one()
            by_state: dict[str, int] = dict(
                c.execute(
                    select(tasks.c.state, func.count())
                    .where(tasks.c.state.in_([TaskState.LEASED, TaskState.DONE]))
                    .group_by(tasks.c.state)
                ).all()
            )
            earned = c.execute(
                select(func.coalesce(func.sum(ledger.c.amount), 0)).where(
                    ledger.c.account >= NODE_ACCOUNTS[0], ledger.c.account < NODE_ACCOUNTS[1]
                )
            ).scalar_one()
            served = c.execute(
                select(func.coalesce(func.sum(cdn_traffic.c.bytes), 0)).where(
                    cdn_traffic.c.kind == "served"
                )
            ).scalar_one()
        return flywheel.FleetCounts(
            devices_online=len(online),
            devices_known=int(known),
            cores_online=sum(r.cores for r in online),
            disk_mb_online=sum(r.disk_mb for r in online),
            uplink_bps_online=float(sum(r.uplink_bps or 0.0 for r in online)),
            tasks_running=int(by_state.get(TaskState.LEASED, 0)),
            slots_online=sum(inflight.scheduling_slots(r.quota, r.cores) for r in online),
            tasks_done=int(by_state.get(TaskState.DONE, 0)),
            credits_to_owners=int(earned),
            bytes_served=int(served),
            per_cpu_hour=int(price["per_cpu_hour"]),
            per_gb_served=int(price["per_gb_served"]),
        )

    def record_sample(self, sample: flywheel.Sample, keep_s: float) -> bool:
        """Write `sample` unless its slot has one already (another coordinator took it), and
        drop samples older than the window or beyond the row cap. True when written."""
        try:
            with self.tx() as c:
                c.execute(flywheel_samples.insert().values(**sample.row()))
                c.execute(
                    delete(flywheel_samples).where(
                        flywheel_samples.c.at < flywheel.oldest_kept(sample.at, keep_s)
                    )
                )
                c.execute(
                    delete(flywheel_samples).where(
                        flywheel_samples.c.slot <= sample.slot - flywheel.MAX_ROWS
                    )
                )
        except IntegrityError:
            return False  # this slot is sampled already
        return True

    def flywheel_history(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Samples taken after `since`, oldest first, at most the newest `limit` of them."""
        with self.read() as c:
            rows = (
                c.execute(
                    select(flywheel_samples)
                    .where(flywheel_samples.c.at > since)
                    .order_by(flywheel_samples.c.slot.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in reversed(rows)]


def _buckets(times: Sequence[float], start: float, end: float) -> list[dict[str, float]]:
    """Counts of `times` in THROUGHPUT_BUCKETS equal spans of [start, end]; each bucket has
    its start `at`, its `count` and that count as a rate (`per_s`)."""
    width = (end - start) / THROUGHPUT_BUCKETS
    counts: dict[int, int] = defaultdict(int)
    for t in times:
        counts[min(THROUGHPUT_BUCKETS - 1, max(0, int((t - start) // width)))] += 1
    return [
        {"at": start + i * width, "count": counts[i], "per_s": round(counts[i] / width, 4)}
        for i in range(THROUGHPUT_BUCKETS)
    ]


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
