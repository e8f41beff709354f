"""Why a job's tasks wait: the store builds core/waiting.py's views; core decides."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from fogwheel.core import owners, waiting
from fogwheel.core import quota as inflight
from fogwheel.core.tasks import TaskState
from fogwheel.store.base import StoreBase
from fogwheel.store.envs import lock_of
from fogwheel.store.fleet import devices
from fogwheel.store.schema import attempts, jobs, nodes, tasks

SUMMARY_MAX_TASKS = 2000  # a job's summary looks at this many of its unfinished tasks
_OPEN = (TaskState.PENDING.value, TaskState.LEASED.value, TaskState.VERIFYING.value)


class WaitsStore(StoreBase):
    def job_waiting(self, customer_id: str, job_id: int, now: float) -> dict[str, Any] | None:
        """The most telling reason the job's tasks wait (core/waiting.summary), as a dict:
        reason, sentence, stuck, tasks; None when nothing waits (or no such job)."""
        with self.read() as c:
            heads = (
                c.execute(
                    select(tasks.c.id)
                    .where(
                        tasks.c.job_id == job_id,
                        tasks.c.customer_id == customer_id,
                        tasks.c.replica_of.is_(None),
                        tasks.c.state.in_(_OPEN),
                    )
                    .order_by(tasks.c.idx)
                    .limit(SUMMARY_MAX_TASKS)
                )
                .scalars()
                .all()
            )
            if not heads:
                return None
            found = waiting.summary(self._waits(c, heads, now).values())
        if found is None:
            return None
        return {
            "reason": found.reason,
            "sentence": found.sentence,
            "stuck": found.stuck,
            "tasks": found.tasks,
        }

    def _waits(
        self, c: Connection, head_ids: Sequence[int], now: float
    ) -> dict[int, waiting.Waiting | None]:
        """Why each of these tasks (heads of their replica groups) waits, or None."""
        if not head_ids:
            return {}
        fleet = self._waiting_fleet(c, now)
        heads = c.execute(
            select(
                tasks.c.id,
                tasks.c.state,
                tasks.c.needs,
                tasks.c.memory_mb,
                tasks.c.quorum,
                jobs.c.replicas,
                jobs.c.env,
            )
            .join(jobs, jobs.c.id == tasks.c.job_id)
            .where(tasks.c.id.in_(head_ids))
        ).all()
        pending: Counter[int] = Counter()
        running: Counter[int] = Counter()
        for group, state in c.execute(
            select(tasks.c.replica_of, tasks.c.state).where(
                tasks.c.replica_of.in_(head_ids),
                tasks.c.state.in_([TaskState.PENDING.value, TaskState.LEASED.value]),
            )
        ).all():
            (pending if state == TaskState.PENDING.value else running)[group] += 1
        # As placement counts them (store/leasing.py): a node that holds a copy or produced a
        # result is barred from its checks; one that only lost a copy is not.
        ran: dict[int, set[str]] = defaultdict(set)
        for group, node_id in c.execute(
            select(func.coalesce(tasks.c.replica_of, tasks.c.id), attempts.c.node_id)
            .join(attempts, attempts.c.task_id == tasks.c.id)
            .where(
                tasks.c.id.in_(head_ids) | tasks.c.replica_of.in_(head_ids),
                attempts.c.digest.is_not(None) | attempts.c.outcome.is_(None),
            )
        ).all():
            ran[group].add(node_id)
        devs = devices(c, set().union(*ran.values())) if ran else {}
        out: dict[int, waiting.Waiting | None] = {}
        for h in heads:
            adaptive = h.replicas in (None, "", "adaptive")
            view = waiting.TaskView(
                state=h.state,
                needs=frozenset(json.loads(h.needs or "[]")),
                memory_mb=h.memory_mb or 0,
                copies_pending=pending[h.id],
                copies_running=running[h.id],
                ran_on=tuple(devs.get(n, owners.Device(n)) for n in sorted(ran[h.id])),
                devices_needed=max(h.quorum or 0, 2) if adaptive else max(h.quorum or 0, 1),
                adaptive=adaptive,
                env=lock_of(c, h.env) if h.env else None,
            )
            out[h.id] = waiting.waiting_for(view, fleet)
        return out

    def _waiting_fleet(self, c: Connection, now: float) -> waiting.Fleet:
        """The live nodes as core/waiting.py sees them (those placement could lease to)."""
        horizon = now - self.gone_after_s
        rows = c.execute(
            select(
                nodes.c.id,
                nodes.c.owner_id,
                nodes.c.network,
                nodes.c.cores,
                nodes.c.memory_mb,
                nodes.c.capabilities,
                nodes.c.quota,
                nodes.c.quarantined,
                nodes.c.env_platform,
            ).where(nodes.c.state == "up", nodes.c.last_seen >= horizon, ~nodes.c.revoked)
        ).all()
        held: dict[str, int] = dict(
            c.execute(
                select(tasks.c.node_id, func.count())
                .where(tasks.c.state == TaskState.LEASED.value)
                .group_by(tasks.c.node_id)
            ).all()
        )
        live = tuple(
            waiting.LiveNode(
                owners.Device(r.id, r.owner_id, r.network),
                free_slots=min(
                    max(0, r.cores - held.get(r.id, 0)),
                    inflight.room(r.quota, r.cores, held.get(r.id, 0)),
                ),
                memory_mb=r.memory_mb,
                capabilities=frozenset(json.loads(r.capabilities or "[]")),
                env_platform=r.env_platform or "",
            )
            for r in rows
            if not r.quarantined
        )
        return waiting.Fleet(live, quarantined=sum(bool(r.quarantined) for r in rows))
