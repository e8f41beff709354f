"""Jobs, their tasks and results as customers see them, and who owns which blob."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core.costs import to_micro
from fogwheel.core.tasks import (
    TERMINAL,
    Cancelled,
    TaskState,
    apply,
)
from fogwheel.protocol import JobIn
from fogwheel.store import apps, envs, images, parts
from fogwheel.store.base import (
    _TASK_COLS,
    StoreBase,
    _job_out,
    _number_finished,
    _task,
    _task_cols,
    keep_name,
    retry_conflicts,
)
from fogwheel.store.schema import (
    attempts,
    blob_owners,
    blob_uploads,
    jobs,
    task_blobs,
    tasks,
)

JOBS_CACHED = 10_000  # immutable job rows kept in memory (see _job_row)
_OPEN = [TaskState.PENDING, TaskState.LEASED, TaskState.VERIFYING]  # a cancel may stop these


class JobsStore(StoreBase):
    finisher: parts.Finisher  # a cancelled task's end (store/leasing.py)
    task_waits: parts.TaskWaits  # why a task waits (store/waits.py)
    costs: parts.Costs  # what a job has cost (store/ledger.py)

    # -- jobs -------------------------------------------------------------------------------

    def create_job(
        self, customer_id: str, job: JobIn, now: float, app_id: str | None = None
    ) -> int:
        """Insert a job and all its tasks in one transaction: acknowledged means durable.
        `app_id`: the app whose version each task's lease binds (store/apps.py)."""
        fn_json = job.fn.model_dump_json() if job.fn else None
        with self.tx() as c:
            if job.client_token:
                twin = c.execute(
                    select(jobs.c.id).where(
                        jobs.c.customer_id == customer_id, jobs.c.client_token == job.client_token
                    )
                ).scalar()
                if twin is not None:
                    return int(twin)
            job_id: int = c.execute(
                jobs.insert()
                .values(
                    {
                        "customer_id": customer_id,
                        "name": job.name,
                        "kind": job.kind,
                        "fn": fn_json,
                        "fn_sha": job.fn.sha if job.fn else None,
                        "limits": job.limits.model_dump_json(),
                        "created_at": now,
                        "total": len(job.tasks),
                        "finished": 0,
                        "failed": 0,
                        "cancelled": False,
                        "client_token": job.client_token,
                        "tolerance": job.tolerance.model_dump_json() if job.tolerance else None,
                        "backups": job.backups,
                        "max_cost": None if job.max_cost is None else to_micro(job.max_cost),
                        "replicas": str(job.replicas),  # why a task waits (store/waits.py)
                        "env": job.env,
                        "app_id": app_id,
                        "deadline": job.deadline,
                    }
                )
                .returning(jobs.c.id)
            ).scalar_one()
            env_bytes = envs.env_size(c, job.env) if job.env else 0
            rows: list[dict[str, Any]] = []
            refs: list[tuple[int, str]] = []
            # Fixed replication runs every task on N distinct nodes from the start; adaptive
            # replication (quorum 0) decides per task when its first result arrives.
            fixed = job.replicas if isinstance(job.replicas, int) else None
            quorum = 0 if fixed is None else (1 if fixed == 1 else min(job.quorum, fixed))
            extra = 0 if fixed is None else fixed - 1
            for i, t in enumerate(job.tasks):
                blobs = {
                    v.sha: v.size
                    for v in [t.args, *t.inputs.values()]
                    if v is not None and v.data is None
                }
                if job.env:
                    # A node that holds the environment built holds this much of what the
                    # task needs (store/envs.py): locality prefers it, as for inputs.
                    blobs[job.env] = env_bytes
                if t.keep_in:
                    # State kept on a node counts as an input held there (locality), by its
                    # per-customer name; its size is what the holder reported.
                    blobs[keep_name(customer_id, t.keep_in)] = 1
                needs = set(t.needs)
                if t.image:
                    # Its image's blobs are read like inputs (and held where fetched); its
                    # architecture is a need, so no node of another takes it (store/images.py).
                    found = images.image_refs(c, customer_id, t.image)
                    if found is None:
                        raise LookupError(f"no image {t.image} of yours: push it first")
                    needs |= found[0]
                    blobs.update(found[1])
                rows.append(
                    {
                        "job_id": job_id,
                        "customer_id": customer_id,
                        "idx": i,
                        "state": TaskState.PENDING.value,
                        "attempts": 0,
                        "max_attempts": job.max_attempts,
                        "memory_mb": job.limits.memory_mb,
                        "needs": json.dumps(sorted(needs)),
                        "spec": t.model_dump_json(exclude_defaults=True),
                        "cpu_s": 0.0,
                        "quorum": quorum,
                        "replicas": extra,
                        "input_bytes": sum(blobs.values()),
                        "sticky": t.keep_in is not None,
                    }
                )
                refs.extend((i, sha) for sha in blobs)
            c.execute(tasks.insert(), rows)
            if refs or extra:
                ids = dict(
                    c.execute(select(tasks.c.idx, tasks.c.id).where(tasks.c.job_id == job_id)).all()
                )
                if extra:
                    replicas = [
                        {**row, "replica_of": ids[row["idx"]], "quorum": 0, "replicas": 0}
                        for row in rows
                        for _ in range(extra)
                    ]
                    c.execute(tasks.insert(), replicas)
                if refs:
                    members = c.execute(
                        select(tasks.c.idx, tasks.c.id).where(tasks.c.job_id == job_id)
                    ).all()
                    by_idx: dict[int, list[int]] = {}
                    for idx, tid in members:
                        by_idx.setdefault(idx, []).append(tid)
                    blob_rows = {(tid, sha) for i, sha in refs for tid in by_idx[i]}
                    c.execute(task_blobs.insert(), [{"task_id": t, "sha": s} for t, s in blob_rows])
        return job_id

    def _job_row(self, c: Connection, job_id: int) -> dict[str, Any]:
        """The immutable part of a job (function, limits), cached.

        Only columns that no statement ever updates are cached, so what another coordinator
        process writes (a cancel, a max cost reached) can never leave this stale: `cancelled`
        and the counters are always read from the database. Emptied when it holds
        `JOBS_CACHED` rows (a long-lived coordinator sees many jobs; a clear is atomic
        where evicting one by one from several threads is not)."""
        row = self._jobs_cache.get(job_id)
        if row is None:
            if len(self._jobs_cache) >= JOBS_CACHED:
                self._jobs_cache.clear()
            r = c.execute(
                select(
                    jobs.c.kind,
                    jobs.c.fn,
                    jobs.c.limits,
                    jobs.c.customer_id,
                    jobs.c.tolerance,
                    jobs.c.created_at,
                    jobs.c.env,
                    jobs.c.app_id,
                    jobs.c.deadline,
                ).where(jobs.c.id == job_id)
            ).one()
            row = {
                "kind": r.kind,
                "fn": json.loads(r.fn) if r.fn else None,
                "limits": json.loads(r.limits),
                "customer_id": r.customer_id,
                "tolerance": json.loads(r.tolerance) if r.tolerance else None,
                "created_at": r.created_at,
                "env": r.env,
                "app_id": r.app_id,
                "deadline": r.deadline,  # placement's slack (core/scheduler.py: deadline)
            }
            self._jobs_cache[job_id] = row
        return row

    def get_job(self, customer_id: str, job_id: int) -> dict[str, Any] | None:
        with self.read() as c:
            r = (
                c.execute(
                    select(jobs).where(jobs.c.id == job_id, jobs.c.customer_id == customer_id)
                )
                .mappings()
                .first()
            )
            money = self._money(c, [r]) if r is not None else {}
        return None if r is None else {**_job_out(r), **money.get(r["id"], {})}

    def list_jobs(self, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.read() as c:
            rows = (
                c.execute(
                    select(jobs)
                    .where(jobs.c.customer_id == customer_id)
                    .order_by(jobs.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            money = self._money(c, rows)
        return [{**_job_out(r), **money.get(r["id"], {})} for r in rows]

    def _money(self, c: Connection, rows: Sequence[Any]) -> dict[int, dict[str, Any]]:
        """Cost, checks, cap and stop reason of these jobs (store/ledger.py: job_costs)."""
        figures = self.costs.job_costs(c, [r["id"] for r in rows])
        return {
            r["id"]: {
                **figures[r["id"]],
                "max_cost": r.get("max_cost"),
                "cancel_reason": r.get("cancel_reason"),
                "deadline": r.get("deadline"),
            }
            for r in rows
        }

    @retry_conflicts
    def cancel_job(self, customer_id: str, job_id: int, now: float) -> dict[str, Any] | None:
        """Cancel a job's open tasks, then mark the job: task rows first, the job row last,
        the order every transaction takes them in (no circle of waits with a sync)."""
        with self.tx() as c:
            owner = c.execute(select(jobs.c.customer_id).where(jobs.c.id == job_id)).scalar()
            if owner != customer_id:
                return None
            self._cancel_open(c, job_id, None, now)
            c.execute(update(jobs).where(jobs.c.id == job_id).values(cancelled=True))
            _number_finished(c)  # the answer below counts the tasks cancelled now
            r = c.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
            return _job_out(r)

    def _stop_job(self, c: Connection, job_id: int, reason: str, now: float) -> None:
        """Cancel a job for `reason` (its max cost reached, say: store/ledger.py), kept on it
        as `cancel_reason` and as its open tasks' error. Tasks first, then the job row."""
        self._cancel_open(c, job_id, None, now, message=reason)
        c.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(cancelled=True, cancel_reason=reason[:200])
        )

    @retry_conflicts
    def cancel_task(
        self, customer_id: str, job_id: int, index: int, now: float
    ) -> dict[str, Any] | None:
        """Cancel task `index` of a job, its replicas and backup copies too; None when the job
        is not this customer's or has no such task. A task that had finished keeps its result
        (`cancelled` is False). A node running it stops it at its next sync (its renewal is
        refused), and its late result is dropped: nobody is charged or paid for it."""
        with self.tx() as c:
            owner = c.execute(select(jobs.c.customer_id).where(jobs.c.id == job_id)).scalar()
            if owner != customer_id:
                return None
            cancelled = self._cancel_open(c, job_id, index, now)
            state = c.execute(
                select(tasks.c.state).where(
                    tasks.c.job_id == job_id, tasks.c.idx == index, tasks.c.replica_of.is_(None)
                )
            ).scalar()
            if state is None:
                return None
            return {"job_id": job_id, "index": index, "state": state, "cancelled": cancelled}

    @retry_conflicts
    def cancel_tasks(
        self, customer_id: str, job_id: int, indexes: Sequence[int], now: float
    ) -> list[int] | None:
        """Cancel several tasks of one job in one transaction (as `cancel_task` each); the
        indexes it cancelled (those still open). None when the job is not this customer's."""
        with self.tx() as c:
            owner = c.execute(select(jobs.c.customer_id).where(jobs.c.id == job_id)).scalar()
            if owner != customer_id:
                return None
            wanted = sorted(set(indexes))
            before = set(
                c.execute(
                    select(tasks.c.idx).where(
                        tasks.c.job_id == job_id,
                        tasks.c.idx.in_(wanted),
                        tasks.c.replica_of.is_(None),
                        tasks.c.state.in_(_OPEN),
                    )
                ).scalars()
            )
            self._cancel_open(c, job_id, wanted, now)
            after = c.execute(
                select(tasks.c.idx).where(
                    tasks.c.job_id == job_id,
                    tasks.c.idx.in_(sorted(before)),
                    tasks.c.replica_of.is_(None),
                    tasks.c.state == TaskState.CANCELLED,
                )
            ).scalars()
            return sorted(after)

    def _cancel_open(
        self,
        c: Connection,
        job_id: int,
        index: int | Sequence[int] | None,
        now: float,
        message: str = "cancelled by the customer",
    ) -> bool:
        """Cancel the open tasks of a job (of one task `index`, with its replicas); whether the
        task itself (not only a replica) was open. `message` is the tasks' error.

        The open rows are locked in ascending id and read under the lock (a task a sync
        finished meanwhile is not open any more); each is cancelled from the state it is in
        now, and counted on the job only if this transaction moved it (`_finish`)."""
        open_states = _OPEN
        q = select(*_TASK_COLS, tasks.c.replica_of).where(
            tasks.c.job_id == job_id, tasks.c.state.in_(open_states)
        )
        if isinstance(index, int):
            q = q.where(tasks.c.idx == index)
        elif index is not None:
            q = q.where(tasks.c.idx.in_(list(index)))
        if not self.is_sqlite:
            q = q.order_by(tasks.c.id).with_for_update()
        rows = c.execute(q).all()
        finished = []
        for r in rows:
            t = apply(_task(r), Cancelled())
            if r.replica_of is None:
                finished.append((r.id, r.job_id, t, None))
            else:
                c.execute(
                    update(tasks)
                    .where(tasks.c.id == r.id, tasks.c.state == r.state)
                    .values(**_task_cols(t))
                )
        error = json.dumps({"kind": "cancelled", "message": message})
        moved = self.finisher._finish(
            c, finished, now, error_json=error, expected={r.id: r.state for r in rows}
        )
        c.execute(
            update(attempts)
            .where(attempts.c.task_id.in_([r.id for r in rows]), attempts.c.outcome.is_(None))
            .values(outcome="cancelled", ended_at=now)
        )
        return bool(moved)

    def task_logs(self, customer_id: str, job_id: int, index: int) -> dict[str, Any] | None:
        """What a customer may read of one task: its state, stored result reference and error,
        and every attempt (replicas' included); None when not this customer's."""
        with self.read() as c:
            kind = c.execute(
                select(jobs.c.kind).where(jobs.c.id == job_id, jobs.c.customer_id == customer_id)
            ).scalar()
            if kind is None:
                return None
            row = c.execute(
                select(tasks.c.id, tasks.c.result).where(
                    tasks.c.job_id == job_id, tasks.c.idx == index, tasks.c.replica_of.is_(None)
                )
            ).first()
            if row is None:
                return None
            detail = self._task_detail(c, row.id)
        detail["kind"] = kind
        detail["result"] = json.loads(row.result) if row.result else None
        return detail

    def results_since(
        self, customer_id: str, job_id: int, after: int, limit: int = 10_000, leased: bool = False
    ) -> dict[str, Any] | None:
        """A job's results numbered after `after`; with `leased`, also the indexes of its
        tasks a node holds now (the SDK's `Future.running()`), at most `limit` of them."""
        with self.read() as c:
            job = c.execute(
                select(jobs.c.total, jobs.c.finished).where(
                    jobs.c.id == job_id, jobs.c.customer_id == customer_id
                )
            ).first()
            if job is None:
                return None
            rows = c.execute(
                select(
                    tasks.c.id,
                    tasks.c.idx,
                    tasks.c.state,
                    tasks.c.result,
                    tasks.c.error,
                    tasks.c.finish_seq,
                )
                # Only terminal rows are results (TaskResult.state); a numbered row in any
                # other state would be a task reopened by a lost race, which the guards in
                # store/leasing.py prevent; it is never answered as a result, nor a 500.
                .where(
                    tasks.c.job_id == job_id,
                    tasks.c.finish_seq > after,
                    tasks.c.state.in_([s.value for s in TERMINAL]),
                )
                .order_by(tasks.c.finish_seq)
                .limit(limit)
            ).all()
        results = []
        for r in rows:
            res = json.loads(r.result) if r.result else {}
            results.append(
                {
                    "index": r.idx,
                    "task_id": r.id,
                    "seq": r.finish_seq,
                    "state": r.state,
                    "value": res.get("value"),
                    "outputs": res.get("outputs", {}),
                    "error": json.loads(r.error) if r.error else None,
                }
            )
        cursor = results[-1]["seq"] if results else after
        out: dict[str, Any] = {
            "job_id": job_id,
            "cursor": cursor,
            "total": job.total,
            "finished": job.finished,
            "results": results,
        }
        if leased:
            with self.read() as c:
                out["leased"] = list(
                    c.execute(
                        select(tasks.c.idx)
                        .where(
                            tasks.c.job_id == job_id,
                            tasks.c.state == TaskState.LEASED,
                            tasks.c.replica_of.is_(None),
                        )
                        .order_by(tasks.c.idx)
                        .limit(limit)
                    ).scalars()
                )
        return out

    def list_tasks(
        self,
        customer_id: str,
        job_id: int,
        state: str | None,
        limit: int,
        offset: int,
        now: float | None = None,
    ) -> list[dict[str, Any]] | None:
        """A page of a job's tasks; with `now`, each says why it waits (`waiting_for`)."""
        with self.read() as c:
            if (
                c.execute(
                    select(jobs.c.id).where(jobs.c.id == job_id, jobs.c.customer_id == customer_id)
                ).first()
                is None
            ):
                return None
            q = select(tasks.c.id).where(tasks.c.job_id == job_id, tasks.c.replica_of.is_(None))
            if state:
                q = q.where(tasks.c.state == state)
            ids = c.execute(q.order_by(tasks.c.idx).limit(limit).offset(offset)).scalars().all()
            details = [self._task_detail(c, i) for i in ids]
            if now is not None:
                waits = self.task_waits._waits(c, ids, now)
                for d in details:
                    w = waits.get(d["id"])
                    if w is not None:
                        d["waiting_for"] = {
                            "reason": w.reason,
                            "sentence": w.sentence,
                            "stuck": w.stuck,
                        }
            return details

    def get_task(self, customer_id: str, task_id: int) -> dict[str, Any] | None:
        with self.read() as c:
            owner = c.execute(select(tasks.c.customer_id).where(tasks.c.id == task_id)).scalar()
            if owner != customer_id:
                return None
            return self._task_detail(c, task_id)

    def _task_detail(self, c: Connection, task_id: int) -> dict[str, Any]:
        """A task with the history of every attempt at it, its replicas' included."""
        t = c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().one()
        group = t["replica_of"] or task_id
        members = select(tasks.c.id).where((tasks.c.id == group) | (tasks.c.replica_of == group))
        hist = (
            c.execute(
                select(attempts).where(attempts.c.task_id.in_(members)).order_by(attempts.c.id)
            )
            .mappings()
            .all()
        )
        return {
            "id": t["id"],
            "job_id": t["job_id"],
            "index": t["idx"],
            "state": t["state"],
            "attempts": t["attempts"],
            "node_id": t["node_id"],
            "error": json.loads(t["error"]) if t["error"] else None,
            "history": [
                {k: h[k] for k in ("n", "node_id", "leased_at", "ended_at", "outcome", "reason")}
                for h in hist
            ],
        }

    # -- blobs ------------------------------------------------------------------------------

    def own_blob(self, customer_id: str, sha: str, size: int, now: float | None = None) -> None:
        with self.tx() as c:
            self._own_blobs(c, customer_id, [(sha, size)], now)

    def _own_blobs(
        self,
        c: Connection,
        customer_id: str,
        blobs: Sequence[tuple[str, int]],
        now: float | None = None,
    ) -> None:
        if not blobs:
            return
        shas = {s for s, _ in blobs}
        have = set(
            c.execute(
                select(blob_owners.c.sha).where(
                    blob_owners.c.customer_id == customer_id, blob_owners.c.sha.in_(shas)
                )
            ).scalars()
        )
        new = {s: n for s, n in blobs if s not in have}
        if new:
            c.execute(
                blob_owners.insert(),
                [
                    {"sha": s, "customer_id": customer_id, "size": n, "at": now}
                    for s, n in new.items()
                ],
            )

    def list_blobs(
        self, customer_id: str, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """A customer's blobs (uploaded, or its tasks' accepted outputs), newest first:
        sha, size and `created` (None for blobs older than that column)."""
        with self.read() as c:
            rows = c.execute(
                select(blob_owners.c.sha, blob_owners.c.size, blob_owners.c.at)
                .where(blob_owners.c.customer_id == customer_id)
                .order_by(blob_owners.c.at.desc().nulls_last(), blob_owners.c.sha)
                .limit(limit)
                .offset(offset)
            ).all()
        return [{"sha": r.sha, "size": r.size, "created": r.at} for r in rows]

    def note_upload(self, node_id: str, sha: str, now: float) -> None:
        """A node uploaded blob `sha` (its bytes hashed to the name): it may name it as an
        output of a task it ran. Ownership follows only an accepted result (`_finish`)."""
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(blob_uploads)
        with self.tx() as c:
            c.execute(
                insert.values(sha=sha, node_id=node_id, at=now).on_conflict_do_nothing(
                    index_elements=["sha", "node_id"]
                )
            )

    def _uploaded_by(self, c: Connection, node_id: str, shas: set[str]) -> set[str]:
        """Which of `shas` this node uploaded itself."""
        if not shas:
            return set()
        return set(
            c.execute(
                select(blob_uploads.c.sha).where(
                    blob_uploads.c.node_id == node_id, blob_uploads.c.sha.in_(shas)
                )
            ).scalars()
        )

    def owned_blobs(self, customer_id: str, shas: set[str]) -> set[str]:
        if not shas:
            return set()
        with self.read() as c:
            return set(
                c.execute(
                    select(blob_owners.c.sha).where(
                        blob_owners.c.customer_id == customer_id, blob_owners.c.sha.in_(shas)
                    )
                ).scalars()
            )

    def node_may_read(self, node_id: str, sha: str) -> bool:
        """A node may fetch a blob that a task it holds reads (its function, arguments, inputs)."""
        with self.read() as c:
            held = select(tasks.c.id).where(
                tasks.c.node_id == node_id, tasks.c.state == TaskState.LEASED
            )
            if c.execute(
                select(task_blobs.c.task_id)
                .where(task_blobs.c.sha == sha, task_blobs.c.task_id.in_(held))
                .limit(1)
            ).first():
                return True
            if apps.node_may_read(c, node_id, sha):  # of the app version its lease bound
                return True
            held_jobs = held.with_only_columns(tasks.c.job_id)
            locks = envs.wheel_locks(c, sha)  # a wheel of a held task's environment
            return (
                c.execute(
                    select(jobs.c.id)
                    .where(
                        (jobs.c.fn_sha == sha) | jobs.c.env.in_(locks)
                        if locks
                        else jobs.c.fn_sha == sha,
                        jobs.c.id.in_(held_jobs),
                    )
                    .limit(1)
                ).first()
                is not None
            )
