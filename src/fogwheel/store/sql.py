"""The store: every state change of a task is a core transition, committed in one transaction.

SQLite (one file, embedded) by default; PostgreSQL for several coordinator processes, where
leasing takes rows with `SELECT … FOR UPDATE SKIP LOCKED` so that two coordinators never hand
out the same task. A result is acknowledged to a node only after its transaction commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, create_engine, event, func, select, update

from fogwheel.core import scheduler
from fogwheel.core.tasks import (
    TERMINAL,
    Cancelled,
    Completed,
    Errored,
    Expired,
    Leased,
    Released,
    Task,
    TaskState,
    apply,
)
from fogwheel.errors import IllegalTransition
from fogwheel.protocol import JobIn, NodeJoin, SyncIn, TaskReport
from fogwheel.store.schema import (
    attempts,
    blob_owners,
    jobs,
    metadata,
    nodes,
    principals,
    settings,
    task_blobs,
    tasks,
)

NODE_GONE_AFTER_LEASES = 3  # a node silent for this many lease periods is marked gone
RETRYABLE = {"crash", "lost", "input"}
_NO_NEEDS: frozenset[str] = frozenset()  # error kinds that are the device's fault, not the task's


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # customer | node | admin | join
    id: str
    name: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


@dataclass
class SyncResult:
    acked: list[int]
    rejected: list[dict[str, Any]]
    lost: list[int]
    tasks: list[dict[str, Any]]


class Store:
    """All coordinator state. Methods take `now`; none reads the clock itself."""

    def __init__(self, url: str, *, lease_seconds: float = 15.0, schema: str | None = None):
        self.url = url
        self.lease_seconds = lease_seconds
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._write_lock: contextlib.AbstractContextManager[Any] = threading.Lock()
        else:
            kwargs: dict[str, Any] = {"pool_size": 8, "max_overflow": 8, "pool_pre_ping": True}
            if schema:
                kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
            self.engine = create_engine(url, **kwargs)
            self._write_lock = contextlib.nullcontext()
        self._jobs_cache: dict[int, dict[str, Any]] = {}
        self._fleet: tuple[float, list[scheduler.NodeView]] = (-1e18, [])

    # -- plumbing ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def drop_schema(self) -> None:
        metadata.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Connection]:
        """One write transaction; on SQLite, writers in this process take turns."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # -- settings and secrets ---------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        with self.read() as c:
            return c.execute(select(settings.c.value).where(settings.c.key == key)).scalar()

    def set_setting(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute(settings.delete().where(settings.c.key == key))
            c.execute(settings.insert().values(key=key, value=value))

    def add_secret(self, kind: str, id_: str, name: str, secret: str, now: float) -> None:
        """Register `secret` for a principal; registering the same secret again is a no-op."""
        h = hash_secret(secret)
        with self.tx() as c:
            row = c.execute(select(principals.c.kind).where(principals.c.secret_hash == h)).first()
            if row is None:
                c.execute(
                    principals.insert().values(
                        secret_hash=h, kind=kind, id=id_, name=name, created_at=now
                    )
                )

    def authenticate(self, secret: str) -> Principal | None:
        h = hash_secret(secret)
        with self.read() as c:
            row = c.execute(
                select(principals.c.kind, principals.c.id, principals.c.name).where(
                    principals.c.secret_hash == h
                )
            ).first()
        return None if row is None else Principal(row.kind, row.id, row.name)

    def has_secrets(self, kind: str) -> bool:
        with self.read() as c:
            q = select(func.count()).select_from(principals).where(principals.c.kind == kind)
            return bool(c.execute(q).scalar())

    def create_customer(self, name: str, now: float) -> tuple[str, str]:
        """A new customer and its API key (shown once; only the hash is kept)."""
        customer_id = "c-" + secrets.token_hex(4)
        key = new_secret("fwc")
        self.add_secret("customer", customer_id, name, key, now)
        return customer_id, key

    # -- nodes ------------------------------------------------------------------------------

    def join_node(self, info: NodeJoin, now: float) -> tuple[str, str]:
        node_id = "n-" + secrets.token_hex(4)
        credential = new_secret("fwn")
        with self.tx() as c:
            c.execute(
                nodes.insert().values(
                    id=node_id,
                    name=info.name,
                    cores=info.cores,
                    memory_mb=info.memory_mb,
                    disk_mb=info.disk_mb,
                    platform=info.platform,
                    capabilities=json.dumps(sorted(set(info.capabilities))),
                    joined_at=now,
                    last_seen=now,
                    state="up",
                    slots_free=info.cores,
                    done=0,
                    lost=0,
                )
            )
            c.execute(
                principals.insert().values(
                    secret_hash=hash_secret(credential),
                    kind="node",
                    id=node_id,
                    name=info.name,
                    created_at=now,
                )
            )
        return node_id, credential

    def list_nodes(self, now: float) -> list[dict[str, Any]]:
        with self.read() as c:
            held = dict(
                c.execute(
                    select(tasks.c.node_id, func.count())
                    .where(tasks.c.state == TaskState.LEASED)
                    .group_by(tasks.c.node_id)
                ).all()
            )
            rows = c.execute(select(nodes).order_by(nodes.c.joined_at)).mappings().all()
        out = []
        for r in rows:
            view = scheduler.NodeView(r["id"], r["cores"], r["memory_mb"], 0, r["done"], r["lost"])
            out.append(
                {
                    "id": r["id"],
                    "name": r["name"],
                    "state": self._node_state(r, now),
                    "cores": r["cores"],
                    "memory_mb": r["memory_mb"],
                    "disk_mb": r["disk_mb"],
                    "platform": r["platform"],
                    "capabilities": json.loads(r["capabilities"]),
                    "held": held.get(r["id"], 0),
                    "done": r["done"],
                    "lost": r["lost"],
                    "reliability": round(scheduler.reliability(view), 4),
                    "last_seen": r["last_seen"],
                }
            )
        return out

    def _node_state(self, row: Any, now: float) -> str:
        if (
            row["state"] == "up"
            and now - row["last_seen"] > self.lease_seconds * NODE_GONE_AFTER_LEASES
        ):
            return "gone"
        return row["state"]

    def _fleet_views(self, c: Connection, now: float) -> list[scheduler.NodeView]:
        """Live nodes, cached for a second: placement needs the fleet's shape, not its pulse."""
        at, views = self._fleet
        if now - at < 1.0:
            return views
        horizon = now - self.lease_seconds * NODE_GONE_AFTER_LEASES
        rows = c.execute(
            select(
                nodes.c.id,
                nodes.c.cores,
                nodes.c.memory_mb,
                nodes.c.slots_free,
                nodes.c.done,
                nodes.c.lost,
            ).where(nodes.c.state == "up", nodes.c.last_seen >= horizon)
        ).all()
        views = [
            scheduler.NodeView(r.id, r.cores, r.memory_mb, r.cores - r.slots_free, r.done, r.lost)
            for r in rows
        ]
        self._fleet = (now, views)
        return views

    # -- jobs -------------------------------------------------------------------------------

    def create_job(self, customer_id: str, job: JobIn, now: float) -> int:
        """Insert a job and all its tasks in one transaction: acknowledged means durable."""
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
            job_id = c.execute(
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
                    }
                )
                .returning(jobs.c.id)
            ).scalar_one()
            rows = []
            refs: list[tuple[int, str]] = []
            for i, t in enumerate(job.tasks):
                rows.append(
                    {
                        "job_id": job_id,
                        "customer_id": customer_id,
                        "idx": i,
                        "state": TaskState.PENDING.value,
                        "attempts": 0,
                        "max_attempts": job.max_attempts,
                        "memory_mb": job.limits.memory_mb,
                        "needs": json.dumps(sorted(set(t.needs))),
                        "spec": t.model_dump_json(exclude_defaults=True),
                        "cpu_s": 0.0,
                    }
                )
                for v in [t.args, *t.inputs.values()]:
                    if v is not None and v.data is None:
                        refs.append((i, v.sha))
            c.execute(tasks.insert(), rows)
            if refs:
                ids = dict(
                    c.execute(select(tasks.c.idx, tasks.c.id).where(tasks.c.job_id == job_id)).all()
                )
                blob_rows = {(ids[i], sha) for i, sha in refs}
                c.execute(task_blobs.insert(), [{"task_id": t, "sha": s} for t, s in blob_rows])
        return job_id

    def _job_row(self, c: Connection, job_id: int) -> dict[str, Any]:
        """The immutable part of a job (function, limits), cached."""
        row = self._jobs_cache.get(job_id)
        if row is None:
            r = c.execute(
                select(jobs.c.kind, jobs.c.fn, jobs.c.limits, jobs.c.customer_id).where(
                    jobs.c.id == job_id
                )
            ).one()
            row = {
                "kind": r.kind,
                "fn": json.loads(r.fn) if r.fn else None,
                "limits": json.loads(r.limits),
                "customer_id": r.customer_id,
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
        return None if r is None else _job_out(r)

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
        return [_job_out(r) for r in rows]

    def cancel_job(self, customer_id: str, job_id: int, now: float) -> dict[str, Any] | None:
        with self.tx() as c:
            owner = c.execute(
                select(jobs.c.customer_id).where(jobs.c.id == job_id).with_for_update()
            ).scalar()
            if owner != customer_id:
                return None
            c.execute(update(jobs).where(jobs.c.id == job_id).values(cancelled=True))
            rows = c.execute(
                select(*_TASK_COLS).where(
                    tasks.c.job_id == job_id,
                    tasks.c.state.in_([TaskState.PENDING, TaskState.LEASED]),
                )
            ).all()
            finished = []
            for r in rows:
                t = apply(_task(r), Cancelled())
                finished.append((r.id, r.job_id, t, None))
            error = json.dumps({"kind": "cancelled", "message": "cancelled by the customer"})
            self._finish(c, finished, now, error_json=error)
            c.execute(
                update(attempts)
                .where(attempts.c.task_id.in_([r.id for r in rows]), attempts.c.outcome.is_(None))
                .values(outcome="cancelled", ended_at=now)
            )
            r = c.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
            return _job_out(r)

    def results_since(
        self, customer_id: str, job_id: int, after: int, limit: int = 10_000
    ) -> dict[str, Any] | None:
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
                .where(tasks.c.job_id == job_id, tasks.c.finish_seq > after)
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
        return {
            "job_id": job_id,
            "cursor": cursor,
            "total": job.total,
            "finished": job.finished,
            "results": results,
        }

    def list_tasks(
        self, customer_id: str, job_id: int, state: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]] | None:
        with self.read() as c:
            if (
                c.execute(
                    select(jobs.c.id).where(jobs.c.id == job_id, jobs.c.customer_id == customer_id)
                ).first()
                is None
            ):
                return None
            q = select(tasks.c.id).where(tasks.c.job_id == job_id)
            if state:
                q = q.where(tasks.c.state == state)
            ids = c.execute(q.order_by(tasks.c.idx).limit(limit).offset(offset)).scalars().all()
            return [self._task_detail(c, i) for i in ids]

    def get_task(self, customer_id: str, task_id: int) -> dict[str, Any] | None:
        with self.read() as c:
            owner = c.execute(select(tasks.c.customer_id).where(tasks.c.id == task_id)).scalar()
            if owner != customer_id:
                return None
            return self._task_detail(c, task_id)

    def _task_detail(self, c: Connection, task_id: int) -> dict[str, Any]:
        t = c.execute(select(tasks).where(tasks.c.id == task_id)).mappings().one()
        hist = (
            c.execute(select(attempts).where(attempts.c.task_id == task_id).order_by(attempts.c.id))
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

    def own_blob(self, customer_id: str, sha: str, size: int) -> None:
        with self.tx() as c:
            self._own_blobs(c, customer_id, [(sha, size)])

    def _own_blobs(self, c: Connection, customer_id: str, blobs: Sequence[tuple[str, int]]) -> None:
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
                [{"sha": s, "customer_id": customer_id, "size": n} for s, n in new.items()],
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
            return (
                c.execute(
                    select(jobs.c.id)
                    .where(
                        jobs.c.fn_sha == sha,
                        jobs.c.id.in_(held.with_only_columns(tasks.c.job_id)),
                    )
                    .limit(1)
                ).first()
                is not None
            )

    # -- the node's round trip --------------------------------------------------------------

    def sync(self, node_id: str, req: SyncIn, now: float, *, leaving: bool = False) -> SyncResult:
        """Apply a node's reports, renewals and hand-backs, then lease it more work."""
        out = SyncResult([], [], [], [])
        with self.tx() as c:
            if req.results:
                self._report(c, node_id, req.results, now, out)
            if req.renew:
                self._renew(c, node_id, req.renew, now, out)
            if req.release:
                self._release(c, node_id, req.release, now)
            c.execute(
                update(nodes)
                .where(nodes.c.id == node_id)
                .values(last_seen=now, slots_free=req.slots_free, state="gone" if leaving else "up")
            )
            if req.want and not leaving:
                out.tasks = self._lease(c, node_id, req.want, now)
        return out

    def _report(
        self,
        c: Connection,
        node_id: str,
        reports: Sequence[TaskReport],
        now: float,
        out: SyncResult,
    ) -> None:
        by_id = {r.task_id: r for r in reports}
        rows = {r.id: r for r in c.execute(select(*_TASK_COLS).where(tasks.c.id.in_(by_id))).all()}
        mine = set(
            c.execute(
                select(attempts.c.task_id).where(
                    attempts.c.node_id == node_id, attempts.c.task_id.in_(by_id)
                )
            ).scalars()
        )
        finished: list[tuple[int, int, Task, TaskReport]] = []
        requeued: list[tuple[int, Task, str]] = []
        ended: dict[str, list[int]] = defaultdict(list)  # outcome -> task ids
        done = lost = 0
        for tid, rep in by_id.items():
            row = rows.get(tid)
            if row is None or tid not in mine:
                out.rejected.append({"task_id": tid, "reason": "this node never held that task"})
                continue
            task = _task(row)
            if rep.ok:
                event: Completed | Errored = Completed(node_id)
            else:
                kind = rep.error.kind if rep.error else "crash"
                reason = f"{kind} on {node_id}: {rep.error.message if rep.error else 'no detail'}"
                event = Errored(node_id, reason[:500], retryable=kind in RETRYABLE)
            try:
                new = apply(task, event)
            except IllegalTransition:
                # Already finished (a backup copy won) or re-leased elsewhere: nothing to keep.
                out.acked.append(tid)
                ended["superseded"].append(tid)
                continue
            out.acked.append(tid)
            retryable_failure = isinstance(event, Errored) and event.retryable
            lost += retryable_failure
            done += not retryable_failure
            outcome = "done" if rep.ok else ("lost" if retryable_failure else "failed")
            ended[outcome].append(tid)
            if new.state in TERMINAL:
                finished.append((tid, row.job_id, new, rep))
            elif new != task:
                requeued.append((tid, new, json.dumps({"kind": "lost", "message": new.error})))
        for outcome, tids in ended.items():
            _end_attempt(c, tids, node_id, outcome, now)
        if finished:
            self._finish(c, finished, now)
        for tid, t, err in requeued:
            c.execute(update(tasks).where(tasks.c.id == tid).values(**_task_cols(t), error=err))
        if done or lost:
            c.execute(
                update(nodes)
                .where(nodes.c.id == node_id)
                .values(done=nodes.c.done + done, lost=nodes.c.lost + lost)
            )
        outputs = [
            (v.sha, v.size)
            for _, _, _, rep in finished
            if rep is not None
            for v in [rep.value, *rep.outputs.values()]
            if v is not None and v.data is None
        ]
        if outputs:
            # Blobs a task produced belong to the job's customer.
            for job_id in {j for _, j, _, _ in finished}:
                self._own_blobs(c, self._job_row(c, job_id)["customer_id"], outputs)

    def _finish(
        self,
        c: Connection,
        finished: Sequence[tuple[int, int, Task, TaskReport | None]],
        now: float,
        *,
        error_json: str | None = None,
    ) -> None:
        """Write terminal tasks and number them per job; the job row lock orders the numbers."""
        per_job: dict[int, list[tuple[int, Task, TaskReport | None]]] = defaultdict(list)
        for tid, job_id, t, rep in finished:
            per_job[job_id].append((tid, t, rep))
        for job_id, items in per_job.items():
            failed = sum(t.state is not TaskState.DONE for _, t, _ in items)
            last = c.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(finished=jobs.c.finished + len(items), failed=jobs.c.failed + failed)
                .returning(jobs.c.finished)
            ).scalar_one()
            first = last - len(items) + 1
            params = []
            for k, (tid, t, rep) in enumerate(items):
                result = error = None
                cpu = 0.0
                if rep is not None:
                    cpu = rep.cpu_s
                    if rep.value is not None or rep.outputs:
                        # A failed command keeps its exit status and output tails too.
                        result = json.dumps(
                            {
                                "value": rep.value.model_dump() if rep.value else None,
                                "outputs": {k2: v.model_dump() for k2, v in rep.outputs.items()},
                            }
                        )
                    if not rep.ok:
                        info = rep.error.model_dump() if rep.error else {"kind": "crash"}
                        if t.error and info.get("kind") in RETRYABLE:
                            info["message"] = t.error
                        error = json.dumps(info)
                elif t.error:
                    error = error_json or json.dumps({"kind": "lost", "message": t.error})
                params.append(
                    {
                        "b_id": tid,
                        "state": t.state.value,
                        "attempts": t.attempts,
                        "node_id": None,
                        "lease_expires": None,
                        "result": result,
                        "error": error,
                        "finish_seq": first + k,
                        "finished_at": now,
                        "cpu_s": cpu,
                    }
                )
            c.execute(
                update(tasks)
                .where(tasks.c.id == bindparam("b_id"))
                .values(
                    state=bindparam("state"),
                    attempts=bindparam("attempts"),
                    node_id=bindparam("node_id"),
                    lease_expires=bindparam("lease_expires"),
                    result=bindparam("result"),
                    error=bindparam("error"),
                    finish_seq=bindparam("finish_seq"),
                    finished_at=bindparam("finished_at"),
                    cpu_s=bindparam("cpu_s"),
                ),
                params,
            )

    def _renew(
        self, c: Connection, node_id: str, ids: Sequence[int], now: float, out: SyncResult
    ) -> None:
        res = c.execute(
            update(tasks)
            .where(
                tasks.c.id.in_(ids), tasks.c.node_id == node_id, tasks.c.state == TaskState.LEASED
            )
            .values(lease_expires=now + self.lease_seconds)
            .returning(tasks.c.id)
        )
        renewed = set(res.scalars())
        out.lost.extend(i for i in ids if i not in renewed)

    def _release(self, c: Connection, node_id: str, ids: Sequence[int], now: float) -> None:
        rows = c.execute(select(*_TASK_COLS).where(tasks.c.id.in_(ids))).all()
        for r in rows:
            try:
                t = apply(_task(r), Released(node_id))
            except IllegalTransition:
                continue
            c.execute(update(tasks).where(tasks.c.id == r.id).values(**_task_cols(t)))
            _end_attempt(c, r.id, node_id, "released", now)

    def _lease(self, c: Connection, node_id: str, want: int, now: float) -> list[dict[str, Any]]:
        node = c.execute(select(nodes).where(nodes.c.id == node_id)).mappings().one()
        held = c.execute(
            select(func.count())
            .select_from(tasks)
            .where(tasks.c.node_id == node_id, tasks.c.state == TaskState.LEASED)
        ).scalar_one()
        view = scheduler.NodeView(
            node_id,
            node["cores"],
            node["memory_mb"],
            held,
            node["done"],
            node["lost"],
            frozenset(json.loads(node["capabilities"])),
        )
        pending = c.execute(
            select(func.count()).select_from(tasks).where(tasks.c.state == TaskState.PENDING)
        ).scalar_one()
        if pending == 0:
            return []
        fleet = [v for v in self._fleet_views(c, now) if v.id != node_id] + [view]
        rel = scheduler.reliability(view)
        cluster = scheduler.ClusterView(
            pending=pending,
            total_slots=sum(v.slots for v in fleet),
            better_free_slots=sum(
                max(0, v.slots - v.held) for v in fleet if scheduler.reliability(v) > rel
            ),
            live=frozenset(v.id for v in fleet),
        )
        q = (
            select(*_TASK_COLS, tasks.c.customer_id, tasks.c.memory_mb, tasks.c.needs)
            .where(tasks.c.state == TaskState.PENDING)
            .order_by(tasks.c.id)
            .limit(max(want * 4, 64))
        )
        if not self.is_sqlite:
            q = q.with_for_update(skip_locked=True, of=tasks)
        rows = {r.id: r for r in c.execute(q).all()}
        retried = [r.id for r in rows.values() if r.attempts > 0]
        lost_on: dict[int, set[str]] = defaultdict(set)
        if retried:
            for tid, nid in c.execute(
                select(attempts.c.task_id, attempts.c.node_id).where(
                    attempts.c.task_id.in_(retried), attempts.c.outcome.in_(["lost", "failed"])
                )
            ).all():
                lost_on[tid].add(nid)
        candidates = [
            scheduler.Candidate(
                r.id,
                r.customer_id,
                r.memory_mb,
                _NO_NEEDS if r.needs == "[]" else frozenset(json.loads(r.needs)),
                frozenset(lost_on[r.id]),
            )
            for r in rows.values()
        ]
        plan = scheduler.plan_lease(view, want, candidates, cluster)
        specs = (
            dict(
                c.execute(
                    select(tasks.c.id, tasks.c.spec).where(
                        tasks.c.id.in_([a.task_id for a in plan])
                    )
                ).all()
            )
            if plan
            else {}
        )
        leases = []
        updates = []
        attempt_rows = []
        for a in plan:
            r = rows[a.task_id]
            t = apply(_task(r), Leased(node_id, now, self.lease_seconds))
            updates.append(
                {
                    "b_id": r.id,
                    "state": t.state.value,
                    "attempts": t.attempts,
                    "node_id": t.node,
                    "lease_expires": t.lease_expires,
                }
            )
            attempt_rows.append(
                {
                    "task_id": r.id,
                    "n": t.attempts,
                    "node_id": node_id,
                    "leased_at": now,
                    "reason": a.reason,
                }
            )
            job = self._job_row(c, r.job_id)
            spec = json.loads(specs[r.id])
            leases.append(
                {
                    "task_id": r.id,
                    "job_id": r.job_id,
                    "attempt": t.attempts,
                    "kind": job["kind"],
                    "fn": job["fn"],
                    "args": spec.get("args"),
                    "command": spec.get("command"),
                    "inputs": spec.get("inputs", {}),
                    "outputs": spec.get("outputs", []),
                    "limits": job["limits"],
                    "lease_expires": t.lease_expires,
                }
            )
        if updates:
            c.execute(
                update(tasks)
                .where(tasks.c.id == bindparam("b_id"))
                .values(
                    state=bindparam("state"),
                    attempts=bindparam("attempts"),
                    node_id=bindparam("node_id"),
                    lease_expires=bindparam("lease_expires"),
                ),
                updates,
            )
            c.execute(attempts.insert(), attempt_rows)
        return leases

    # -- housekeeping -----------------------------------------------------------------------

    def expire_leases(self, now: float) -> list[int]:
        """Put tasks whose lease ran out back in the queue (or fail them after max attempts)."""
        with self.tx() as c:
            rows = c.execute(
                select(*_TASK_COLS).where(
                    tasks.c.state == TaskState.LEASED, tasks.c.lease_expires <= now
                )
            ).all()
            finished = []
            lost_by_node: dict[str, int] = defaultdict(int)
            for r in rows:
                t = apply(_task(r), Expired(now))
                lost_by_node[r.node_id] += 1
                _end_attempt(c, r.id, r.node_id, "lost", now)
                if t.state in TERMINAL:
                    finished.append((r.id, r.job_id, t, None))
                else:
                    err = json.dumps({"kind": "lost", "message": t.error})
                    c.execute(
                        update(tasks).where(tasks.c.id == r.id).values(**_task_cols(t), error=err)
                    )
            if finished:
                self._finish(c, finished, now)
            for nid, n in lost_by_node.items():
                c.execute(update(nodes).where(nodes.c.id == nid).values(lost=nodes.c.lost + n))
        return [r.id for r in rows]

    def extend_leases(self, now: float) -> int:
        """After a coordinator restart, give every holder a full lease to come back and report."""
        with self.tx() as c:
            res = c.execute(
                update(tasks)
                .where(
                    tasks.c.state == TaskState.LEASED,
                    tasks.c.lease_expires < now + self.lease_seconds,
                )
                .values(lease_expires=now + self.lease_seconds)
            )
            return res.rowcount or 0

    def counts(self) -> dict[str, int]:
        with self.read() as c:
            return {
                s: n
                for s, n in c.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state))
            }


# -- row helpers ------------------------------------------------------------------------------

_TASK_COLS = (
    tasks.c.id,
    tasks.c.job_id,
    tasks.c.state,
    tasks.c.attempts,
    tasks.c.max_attempts,
    tasks.c.node_id,
    tasks.c.lease_expires,
    tasks.c.error,
)


def _task(r: Any) -> Task:
    err = json.loads(r.error).get("message") if r.error else None
    return Task(TaskState(r.state), r.attempts, r.max_attempts, r.node_id, r.lease_expires, err)


def _task_cols(t: Task) -> dict[str, Any]:
    return {
        "state": t.state.value,
        "attempts": t.attempts,
        "node_id": t.node,
        "lease_expires": t.lease_expires,
    }


def _end_attempt(
    c: Connection, task_ids: int | Sequence[int], node_id: str, outcome: str, now: float
) -> None:
    """Close the node's open attempts of these tasks with `outcome`, in one statement."""
    ids = [task_ids] if isinstance(task_ids, int) else list(task_ids)
    # A late result still ends an attempt that expiry had written off as lost.
    open_ = attempts.c.outcome.is_(None)
    if outcome == "done":
        open_ = open_ | (attempts.c.outcome == "lost")
    c.execute(
        update(attempts)
        .where(attempts.c.task_id.in_(ids), attempts.c.node_id == node_id, open_)
        .values(outcome=outcome, ended_at=now)
    )


def _job_out(r: Any) -> dict[str, Any]:
    if r["cancelled"]:
        state = "cancelled"
    elif r["finished"] >= r["total"]:
        state = "done"
    else:
        state = "running"
    return {
        "id": r["id"],
        "name": r["name"],
        "kind": r["kind"],
        "state": state,
        "total": r["total"],
        "finished": r["finished"],
        "failed": r["failed"],
        "created_at": r["created_at"],
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
