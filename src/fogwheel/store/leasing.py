"""The node's round trip: reports, renewals, hand-backs, leases, and lease expiry.

Leasing places pending work (core/scheduler.py), preferring nodes that hold a task's input;
a node with slots left over near the end of a job gets backup copies of its stragglers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Text,
    bindparam,
    delete,
    func,
    select,
    union_all,
    update,
)

from fogwheel.core import intake, owners, scheduler, trust, uptime
from fogwheel.core import quota as inflight
from fogwheel.core.tasks import (
    TERMINAL,
    Cancelled,
    Errored,
    Expired,
    Leased,
    Released,
    Task,
    TaskState,
    apply,
)
from fogwheel.errors import IllegalTransition
from fogwheel.protocol import MAX_KEPT_BYTES, MAX_WALL_S, TaskReport
from fogwheel.store import apps, events, parts
from fogwheel.store.base import (
    _NO_NEEDS,
    _TASK_COLS,
    LOCK_TASKS,
    RETRYABLE,
    LostRace,
    SyncRequest,
    SyncResult,
    _end_attempt,
    _note_finished,
    _task,
    _task_cols,
    keep_name,
    lock_tasks,
    retry_conflicts,
)
from fogwheel.store.envs import env_size, node_envs, note_node_envs, unfit_reason
from fogwheel.store.fleet import UP_INTERVAL, barred_groups, quota_shrunk, up_params
from fogwheel.store.images import images_here
from fogwheel.store.rollouts import canary_tasks
from fogwheel.store.schema import (
    attempts,
    blob_holders,
    jobs,
    nodes,
    tasks,
)
from fogwheel.store.verify import VerifyStore, _rng, result_digest

BACKUP_SCAN = 64  # running tasks looked at, longest-running first, when looking for stragglers
BACKUP_QUIET_MAX_S = 1.0  # the longest a search that found no straggler due is trusted
MEDIAN_SAMPLE = 201  # a job's most recent finished attempts that its median is taken over
EXPIRE_BATCH = 2000  # expired leases taken per round: a long outage is worked off in steps
FINISHED = ("accepted", "agreed", "reported")  # attempt outcomes that mean: it ran to the end


# The statements every leasing sync runs, built once: SQLAlchemy then skips building the
# expression and its cache key on each call (about a fifth of a statement's Python cost).
_NODE_ROW = select(nodes).where(nodes.c.id == bindparam("node_id"))
_HELD = (
    select(func.count())
    .select_from(tasks)
    .where(tasks.c.node_id == bindparam("node_id"), tasks.c.state == TaskState.LEASED)
)
_PENDING_UP_TO = select(func.count()).select_from(  # pending tasks, counted up to `bound`
    select(tasks.c.id)
    .where(tasks.c.state == TaskState.PENDING)
    .limit(bindparam("bound", type_=Integer))
    .subquery()
)
_JOB_ATTEMPTS_TOOK = (  # a job's most recent finished attempts' wall times (`_job_median`)
    select(attempts.c.ended_at - attempts.c.leased_at)
    .where(
        attempts.c.job_id == bindparam("job_id"),
        attempts.c.outcome.in_(FINISHED),
        attempts.c.ended_at.is_not(None),
    )
    .order_by(attempts.c.id.desc())
    .limit(MEDIAN_SAMPLE)
)
_LEASE_ROWS = (  # `_grant`'s compare-and-set, one parameter set per task
    update(tasks)
    .where(
        tasks.c.id == bindparam("b_id"),
        tasks.c.state == bindparam("b_state"),
        tasks.c.attempts == bindparam("b_attempts"),
    )
    .values(
        state=bindparam("state"),
        attempts=bindparam("attempts"),
        node_id=bindparam("node_id"),
        lease_expires=bindparam("lease_expires"),
        app_version=bindparam("app_version"),
    )
)

# The rest of a busy sync's statements, built once (store/base.py, `_COUNT_FINISHED`).

_NO_NODES: frozenset[str] = frozenset()
_NO_HOLDERS: dict[str, int] = {}  # read only: a candidate whose input no node holds


def _ids() -> Any:
    """An IN list's parameter, `ids`: one built statement serves every length."""
    return bindparam("ids", expanding=True)


_SEEN = {  # a sync's node row: seen now, its free slots, its up intervals, and its network
    (leaving, networked): update(nodes)
    .where(nodes.c.id == bindparam("b_node"))
    .values(
        last_seen=bindparam("last_seen"),
        slots_free=bindparam("slots_free"),
        state="gone" if leaving else "up",
        **UP_INTERVAL[leaving],
        **({"network": bindparam("network")} if networked else {}),
    )
    for leaving in (False, True)
    for networked in (False, True)
}
_INTAKE_ROWS = select(
    *_TASK_COLS, tasks.c.replica_of, tasks.c.quorum, tasks.c.replicas, tasks.c.backup
).where(tasks.c.id.in_(_ids()))
_INTAKE_LEASED = select(attempts.c.task_id, attempts.c.n, attempts.c.leased_at).where(
    attempts.c.node_id == bindparam("b_node"), attempts.c.task_id.in_(_ids())
)
_INTAKE_NODE = select(
    nodes.c.cores, nodes.c.agreed, nodes.c.disputed, nodes.c.streak, nodes.c.quarantined
).where(nodes.c.id == bindparam("b_node"))
_NOW_ROWS = select(tasks.c.id, tasks.c.state, tasks.c.attempts).where(tasks.c.id.in_(_ids()))
_FINISH_ROWS = (
    update(tasks)
    .where(tasks.c.id == bindparam("b_id"))
    .values(
        state=bindparam("state"),
        attempts=bindparam("attempts"),
        node_id=bindparam("node_id"),
        lease_expires=bindparam("lease_expires"),
        result=bindparam("result"),
        error=bindparam("error"),
        finished_at=bindparam("finished_at"),
        cpu_s=bindparam("cpu_s"),
    )
)
_KEEP_RESULT = (
    update(attempts)
    .where(
        attempts.c.task_id == bindparam("b_task"),
        attempts.c.node_id == bindparam("b_node"),
        attempts.c.n == bindparam("b_n"),  # the attempt this result answers
        attempts.c.outcome.is_(None)
        | (attempts.c.outcome == "lost")
        | (attempts.c.outcome == bindparam("b_reopen")),
    )
    .values(
        outcome=bindparam("b_outcome"),
        digest=bindparam("digest"),
        report=bindparam("report"),
        cpu_s=bindparam("cpu_s"),
        ended_at=bindparam("ended_at"),
    )
)
_FAMILY = select(tasks.c.id, tasks.c.replica_of).where(tasks.c.id.in_(_ids()))
_GROUPS: Any = bindparam("groups", expanding=True)
# A group's rows: its head and its copies, each half through its own index (as one OR over
# both lists the planner scanned the table once it held a few hundred values: 14 ms).
_GROUP_ROWS = union_all(
    select(tasks.c.id, tasks.c.replica_of).where(tasks.c.id.in_(_GROUPS)),
    select(tasks.c.id, tasks.c.replica_of).where(tasks.c.replica_of.in_(_GROUPS)),
)
_RAN = select(attempts.c.task_id, attempts.c.node_id).where(
    attempts.c.task_id.in_(_ids()),
    # a node that holds a copy or produced a result is barred; one that only lost a copy (or
    # refused it) may still check the others
    attempts.c.digest.is_not(None) | attempts.c.outcome.is_(None),
)
_VOTERS = select(attempts.c.node_id).where(  # every node with a result in these tasks
    attempts.c.task_id.in_(_ids()), attempts.c.digest.is_not(None)
)
_LOCK_NODES = (
    select(nodes.c.id)
    .where(nodes.c.id.in_(bindparam("nodes", expanding=True)))
    .order_by(nodes.c.id)
    .with_for_update()
)
_SPECS = select(tasks.c.id, tasks.c.spec).where(tasks.c.id.in_(_ids()))
_ATTEMPT_ROWS = attempts.insert()


@functools.lru_cache(maxsize=64)
def _counted(lost: int) -> Any:
    """A node's done and lost counts after a batch of reports (`lost` of them lost), and its
    quota halved once a loss; built once per number lost."""
    return (
        update(nodes)
        .where(nodes.c.id == bindparam("b_node"))
        .values(
            done=nodes.c.done + bindparam("b_done", type_=Integer),
            lost=nodes.c.lost + lost,
            **({"quota": quota_shrunk(lost)} if lost else {}),
        )
    )


@functools.lru_cache(maxsize=16)
def _pending_window(limit: int, locked: bool) -> Any:
    """The first `limit` pending tasks in the queue's order, with what placement weighs;
    on PostgreSQL locked, skipping rows another transaction holds."""
    q = (
        select(
            *_TASK_COLS,
            tasks.c.customer_id,
            tasks.c.memory_mb,
            tasks.c.needs,
            tasks.c.replica_of,
            tasks.c.replicas,
            tasks.c.input_bytes,
            tasks.c.sticky,
        )
        .where(tasks.c.state == TaskState.PENDING)
        .order_by(tasks.c.priority, tasks.c.id)
        .limit(limit)
    )
    return q.with_for_update(skip_locked=True, of=tasks) if locked else q


class LeasingStore(VerifyStore):
    placement: scheduler.Placement = scheduler.FAIR  # core/scheduler.py: --placement
    fleet: parts.Fleet  # heartbeats, the live view, failure fates, blob holders (store/fleet.py)
    job_blobs: parts.JobBlobs  # who owns and uploaded which blob (store/jobs.py)
    costs: parts.Costs  # jobs over their max cost, stopped before leasing (store/ledger.py)
    share_sync: parts.ShareSync  # the CDN's half of the sync (store/cdn.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._medians: dict[int, tuple[float, float | None]] = {}  # job -> (when, median)
        # No straggler is due before this time while the last wave is this set (see
        # `_lease_backups`): (the last wave's jobs, until when the search is skipped).
        self._backups_quiet: tuple[frozenset[int], float] | None = None

    # -- the node's round trip --------------------------------------------------------------

    def sync(
        self,
        node_id: str,
        req: SyncRequest,
        now: float,
        *,
        leaving: bool = False,
        client_host: str | None = None,
    ) -> SyncResult:
        """Apply a node's reports, renewals and hand-backs, then lease it more work.

        `client_host`, the address the node connects from, refreshes its network
        (core/owners.py: copies of a task go to distinct networks)."""
        out = SyncResult([], [], [], [])
        seen = {} if client_host is None else {"network": owners.network_of(client_host)}
        quiet = not (
            leaving
            or req.results
            or req.renew
            or req.release
            or req.serve_url
            or req.stored
            or req.bad
            or req.refused
            or req.served
            or getattr(req, "envs", None) is not None  # environments (store/envs.py): news
            or getattr(req, "env_platform", None) is not None
            or getattr(req, "dropped", None)  # evicted blobs: no longer their holder
        )
        network = seen.get("network", False)
        if quiet and self.fleet._idle_sync(node_id, req.want, req.slots_free, now, network):
            return out  # nothing to write but a heartbeat, nothing to lease (store/fleet.py)
        if req.results:  # outside the write transaction: decoding is bounded, but not free
            self._decode_ahead(req.results)
        with self.tx() as c:
            if req.results:
                self._report(c, node_id, req.results, now, out)
            if req.renew:
                self._renew(c, node_id, req.renew, now, out)
            if req.release:
                self._release(c, node_id, req.release, now)
            self.costs._stop_over_max_cost(c, now)  # before leasing
            c.execute(
                _SEEN[leaving, bool(seen)],  # and its up intervals (core/uptime.py)
                {
                    "b_node": node_id,
                    "last_seen": now,
                    "slots_free": req.slots_free,
                    **seen,
                    **up_params(now, now - self.gone_after_s),
                },
            )
            dropped = getattr(req, "dropped", None)
            if dropped:  # placement stops preferring it for these (locality, images, kept)
                c.execute(
                    delete(blob_holders).where(
                        blob_holders.c.node_id == node_id, blob_holders.c.sha.in_(list(dropped))
                    )
                )
            held_envs, env_platform = getattr(req, "envs", None), getattr(req, "env_platform", None)
            if held_envs is not None or env_platform is not None:
                note_node_envs(c, node_id, held_envs, env_platform, is_sqlite=self.is_sqlite)
            if req.want and not leaving:
                out.tasks = self._lease(c, node_id, req.want, now)
                if out.tasks:
                    self.fleet._forget_last_wave()  # a job's last pending task may be gone now
            if not leaving:
                out.store, out.drop = self.share_sync._cdn_sync(
                    c,
                    node_id,
                    serve_url=req.serve_url,
                    stored=req.stored,
                    bad=req.bad,
                    refused=req.refused,
                    served=req.served,
                    now=now,
                )
        return out

    def _report(
        self,
        c: Connection,
        node_id: str,
        reports: Sequence[TaskReport],
        now: float,
        out: SyncResult,
    ) -> None:
        """Carry out a node's reports: load the rows they concern (`_intake`), let the pure
        intake decide (core/intake.py), and apply each kind of instruction in one statement.

        A retryable failure (the device's fault: a crash, a lost input) puts the task back in
        the queue; anything else is a result, the task's own exception included."""
        by_id = {r.task_id: r for r in reports}
        self._lock_groups(c, list(by_id), reporter=node_id)  # decided on locked rows
        batch = self._intake(c, node_id, by_id, now)
        self._apply_intake(c, node_id, intake.intake(batch), by_id, now, out)

    def _apply_intake(
        self,
        c: Connection,
        node_id: str,
        todo: Sequence[intake.Instruction],
        by_id: dict[int, TaskReport],
        now: float,
        out: SyncResult,
    ) -> None:
        """Apply the intake's instructions: one batched statement per kind, kinds in the
        order below (attempts, then tasks, then the node, its blobs, and the verdicts)."""
        kinds: dict[type, list[Any]] = defaultdict(list)
        for ins in todo:
            kinds[type(ins)].append(ins)
        out.rejected.extend({"task_id": r.task, "reason": r.reason} for r in kinds[intake.Reject])
        clean: dict[int, TaskReport] = {}  # the acknowledged reports, their claims bounded
        for a in kinds[intake.Ack]:
            rep = by_id[a.task]
            if a.cpu_s != rep.cpu_s or a.wall_s != rep.wall_s:
                rep = rep.model_copy(update={"cpu_s": a.cpu_s, "wall_s": a.wall_s})
            clean[a.task] = rep
            out.acked.append(a.task)
        for outcome in (intake.SUPERSEDED, intake.LOST):
            ended = [e.task for e in kinds[intake.EndAttempt] if e.outcome == outcome]
            if ended:
                _end_attempt(c, ended, node_id, outcome, now)
        _keep_results(c, node_id, kinds[intake.KeepResult], clean, now)
        _move_tasks(c, [*kinds[intake.Requeue], *kinds[intake.Advance]])
        for own in (False, True):
            done = [f for f in kinds[intake.Finish] if f.own_outputs is own]
            if done:  # a device's failure: its outputs were never accepted, nobody owns them
                self._finish(
                    c, [(f.task, f.job, f.new, clean[f.task]) for f in done], now, own_outputs=own
                )
        if kinds[intake.AcceptUnchecked]:
            self._accept_unchecked(
                c,
                node_id,
                [
                    (a.task, a.job, a.settled, clean[a.task], a.digest, a.claim)
                    for a in kinds[intake.AcceptUnchecked]
                ],
                now,
            )
        _mark_for_check(c, kinds[intake.MarkForCheck])
        for n in kinds[intake.CountNode]:
            c.execute(_counted(n.lost), {"b_node": node_id, "b_done": n.done})
        for h in kinds[intake.HoldBlobs]:
            # A task's output blobs become its customer's only with an accepted result
            # (`_finish`). The node keeps what it uploaded in its cache: tasks that read it
            # may go there.
            self.fleet._hold_blobs(c, node_id, list(h.blobs))
        if kinds[intake.HoldKept]:
            self._hold_kept(c, node_id, kinds[intake.HoldKept])
        self._verify_groups(c, [v.group for v in kinds[intake.Verify]], now)

    def _hold_kept(self, c: Connection, node_id: str, held: Sequence[intake.HoldKept]) -> None:
        """State the node keeps for a later task of the same customer (TaskIn.keep_out)."""
        specs = dict(
            c.execute(
                select(tasks.c.id, tasks.c.spec).where(tasks.c.id.in_([h.task for h in held]))
            ).all()
        )
        names = []
        for h in held:
            key = json.loads(specs[h.task]).get("keep_out")
            if key:
                customer = self.job_rows._job_row(c, h.job)["customer_id"]
                names.append((keep_name(customer, key), min(h.size, MAX_KEPT_BYTES)))
        self.fleet._hold_blobs(c, node_id, names)

    def _lock_groups(
        self,
        c: Connection,
        ids: Sequence[int],
        *,
        skip_locked: bool = False,
        reporter: str | None = None,
    ) -> set[int]:
        """Lock these task rows and the heads of their groups, in ascending id, before any of
        them is read or written (PostgreSQL; SQLite has one writer). The head comes first
        (its id is lower than its copies'), as in `_verify_group`, so two transactions that
        touch one group never hold each other's rows. Returns the ids locked (with
        `skip_locked`, those another transaction holds are left out).

        With `reporter`, the node rows a verdict on these groups may write (the reporter's
        own, and those of every node with a result in them: their trust records) are locked
        first, in ascending id: node rows before task rows, so two syncs that settle groups
        the other voted in never wait for each other's node row in a circle."""
        if not ids:
            return set()
        # The rows and their heads, read first by primary key (a row's head never changes):
        # the locks below then name their rows as lists, which PostgreSQL finds through the
        # indexes. Written as IN-subqueries joined by OR they were a sequential scan of the
        # whole tasks table, inside every reporting sync (3-5 ms at 20,000 tasks, growing).
        family = c.execute(_FAMILY, {"ids": sorted(set(ids))}).all()
        found = {r.id for r in family} | {r.replica_of for r in family if r.replica_of}
        if self.is_sqlite:  # one writer: nothing to lock, but the same answer (heads too)
            return found if skip_locked else set(ids)
        if reporter is not None:
            groups = sorted({r.replica_of or r.id for r in family})
            # In two statements, each through an index: joined in one, the planner hashed
            # the whole attempts table.
            members = [tid for tid, _ in c.execute(_GROUP_ROWS, {"groups": groups}).all()]
            voters = set(c.execute(_VOTERS, {"ids": members}).scalars())
            c.execute(_LOCK_NODES, {"nodes": sorted(voters | {reporter})}).all()
        return set(c.execute(LOCK_TASKS[skip_locked], {"ids": sorted(found)}).scalars())

    def _finish(
        self,
        c: Connection,
        finished: Sequence[tuple[int, int, Task, TaskReport | None]],
        now: float,
        *,
        error_json: str | None = None,
        own_outputs: bool = True,
        expected: dict[int, TaskState] | None = None,
    ) -> set[int]:
        """Write terminal tasks; returns the ids this call moved, the only ones counted.

        A task moves only from a non-terminal state at the attempt the caller read (and from
        `expected[id]`, where the caller knows it): one that a concurrent transaction settled,
        cancelled or leased again meanwhile is left as that one wrote it, so a task is
        finished, counted and numbered once (the rows are locked first, in ascending id, and
        read again under the lock). The job counters and `finish_seq` are written just before
        the commit (store/base.py: `_note_finished`). The output blobs of each result moved
        (`own_outputs`: an accepted one, verified or let go unchecked) become the task's
        customer's to read, and nobody else's."""
        if not finished:
            return set()
        wanted = {tid: t for tid, _, t, _ in finished}
        lock_tasks(c, list(wanted))
        now_rows = c.execute(_NOW_ROWS, {"ids": list(wanted)}).all()
        moved = {
            r.id
            for r in now_rows
            if TaskState(r.state) not in TERMINAL
            and r.attempts == wanted[r.id].attempts
            and (expected is None or expected.get(r.id, r.state) == r.state)
        }
        per_job: dict[int, list[tuple[int, Task, TaskReport | None]]] = defaultdict(list)
        for tid, job_id, t, rep in sorted(finished, key=lambda f: f[0]):
            if tid in moved:
                per_job[job_id].append((tid, t, rep))
                moved.discard(tid)  # a task listed twice moves once
        moved = {tid for items in per_job.values() for tid, _, _ in items}
        for job_id, items in sorted(per_job.items()):
            params = []
            for tid, t, rep in items:
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
                        "finished_at": now,
                        "cpu_s": cpu,
                    }
                )
            c.execute(_FINISH_ROWS, params)
            _note_finished(c, job_id, [(tid, t.state is not TaskState.DONE) for tid, t, _ in items])
            if own_outputs:
                blobs = [
                    (v.sha, v.size)
                    for _, _, rep in items
                    if rep is not None
                    for v in [rep.value, *rep.outputs.values()]
                    if v is not None and v.data is None
                ]
                self.job_blobs._own_blobs(
                    c, self.job_rows._job_row(c, job_id)["customer_id"], blobs, now
                )
        return moved

    def _intake(
        self,
        c: Connection,
        node_id: str,
        by_id: dict[int, TaskReport],
        now: float,
    ) -> intake.Batch:
        """Load what the intake decides a node's reports from (core/intake.py: `Batch`).

        The task rows and this node's attempts of them; when it held any, its cores and trust
        record, which of the reported output blobs it uploaded itself, the failure fate of
        each device failure (core/owners.py) and a random draw for each result that may go
        unchecked: the store's randomness, passed to the core as data. The task rows are
        locked already (`_lock_groups`), so the state the intake decides from is the state
        its guarded writes expect."""
        ids = list(by_id)
        rows = {
            r.id: intake.Row(
                r.id, _task(r), r.job_id, r.replica_of, r.quorum, r.replicas, bool(r.backup)
            )
            for r in c.execute(_INTAKE_ROWS, {"ids": ids}).all()
        }
        leased: dict[tuple[int, int], float] = {
            (t, n): at
            for t, n, at in c.execute(_INTAKE_LEASED, {"b_node": node_id, "ids": ids}).all()
        }
        views = [_report_view(r) for r in by_id.values()]
        batch = intake.Batch(node_id, views, rows, leased, now, MAX_WALL_S)
        if not leased:
            return batch  # it never held any of them: every report is refused
        node = c.execute(_INTAKE_NODE, {"b_node": node_id}).one_or_none()
        named = {sha for v in views for sha, _ in v.blobs}
        batch = dataclasses.replace(
            batch,
            uploaded=frozenset(self.job_blobs._uploaded_by(c, node_id, named)),
            cores=(node.cores if node else None) or 1,
            record=(
                trust.Record(node.agreed, node.disputed, node.streak, bool(node.quarantined))
                if node
                else trust.Record()
            ),
        )
        return dataclasses.replace(
            batch,
            fates={t: self.fleet._failure_fate(c, t, node_id) for t in intake.fates_needed(batch)},
            draws={t: _rng.random() for t in intake.draws_needed(batch)},
            canary=canary_tasks(c, node_id, [v.task for v in views if not v.ok], now),
        )

    def _renew(
        self, c: Connection, node_id: str, ids: Sequence[int], now: float, out: SyncResult
    ) -> None:
        """Extend the leases this node still holds; the rest are `lost` to it. Guarded by the
        state it expects (leased to this node): a task that expiry, a verdict or a cancel
        moved is not held any more, and its renewal changes nothing."""
        res = c.execute(
            update(tasks)
            .where(
                tasks.c.id.in_(sorted(set(ids))),
                tasks.c.node_id == node_id,
                tasks.c.state == TaskState.LEASED,
            )
            .values(lease_expires=now + self.lease_seconds)
            .returning(tasks.c.id)
        )
        renewed = set(res.scalars())
        out.lost.extend(i for i in ids if i not in renewed)

    def _release(self, c: Connection, node_id: str, ids: Sequence[int], now: float) -> None:
        """Hand tasks back: each one this node still holds goes back to the queue (a backup
        copy is cancelled). The rows are locked in ascending id and read under the lock, so a
        task that a concurrent transaction finished or gave to another node stays as it is."""
        self._lock_groups(c, ids)  # a backup copy's head too: its verdict is taken below
        rows = c.execute(
            select(*_TASK_COLS, tasks.c.replica_of, tasks.c.backup)
            .where(tasks.c.id.in_(list(ids)), tasks.c.node_id == node_id)
            .order_by(tasks.c.id)
        ).all()
        regroup = []
        released = []
        for r in rows:
            try:
                t = apply(_task(r), Released(node_id))
            except IllegalTransition:
                continue
            if r.backup:  # a backup copy is for an idle node now, not for the queue
                t = apply(t, Cancelled(f"backup copy handed back by {node_id}"))
                regroup.append(r.replica_of)
            c.execute(
                update(tasks)
                .where(tasks.c.id == r.id, tasks.c.state == r.state, tasks.c.attempts == r.attempts)
                .values(**_task_cols(t))
            )
            released.append(r.id)
        if released:
            _end_attempt(c, released, node_id, "released", now)
        self._verify_groups(c, regroup, now)

    def _lease(self, c: Connection, node_id: str, want: int, now: float) -> list[dict[str, Any]]:
        node = c.execute(_NODE_ROW, {"node_id": node_id}).mappings().one()
        if node["quarantined"] or node["revoked"]:
            return []  # caught returning a wrong result, or revoked: no more work
        held = c.execute(_HELD, {"node_id": node_id}).scalar_one()
        # The in-flight quota (core/quota.py): a new device holds little until results back it.
        want = min(want, inflight.room(node["quota"], node["cores"], held))
        if want <= 0:
            return []
        view = scheduler.NodeView(
            node_id,
            inflight.scheduling_slots(node["quota"], node["cores"]),
            node["memory_mb"],
            held,
            node["done"],
            node["lost"],
            capabilities=frozenset(json.loads(node["capabilities"])),
            expected_up_s=uptime.expected_up_s(node["up_total_s"], node["up_count"]),
        )
        # The queue, counted only as far as placement can tell lengths apart (a lease's cost
        # would grow with the queue: 10 ms at 40,000 pending on PostgreSQL).
        bound = scheduler.pending_bound(
            want, self.fleet._fleet_summary(c, now).total_slots + view.slots
        )
        pending = c.execute(_PENDING_UP_TO, {"bound": bound}).scalar_one()
        leases = self._lease_pending(c, view, want, pending, now) if pending else []
        view = dataclasses.replace(view, held=held + len(leases))
        free = min(want - len(leases), view.slots - view.held)
        if free > 0:
            leases += self._lease_backups(c, view, free, now)
        return leases

    def _lease_pending(
        self, c: Connection, view: scheduler.NodeView, want: int, pending: int, now: float
    ) -> list[dict[str, Any]]:
        """Place pending tasks on the asking node (core/scheduler.py decides which)."""
        node_id = view.id
        # The live fleet with the asking node's fresh view in place of its cached one, from
        # aggregates kept with the cached fleet: no pass over 10,000 nodes per lease.
        cluster = self.fleet._fleet_summary(c, now).cluster_for(view, pending)
        q = _pending_window(max(want * 4, 64), locked=not self.is_sqlite)
        rows = {r.id: r for r in c.execute(q).all()}
        # The window's few jobs, looked up once each rather than once per candidate.
        job_of = {j: self.job_rows._job_row(c, j) for j in {r.job_id for r in rows.values()}}
        # An app's task runs the version bound here and now (store/apps.py: version_for).
        bound = self._bind_apps(c, node_id, rows.values(), view.capabilities)
        rows = {
            tid: r for tid, r in rows.items() if tid in bound or not job_of[r.job_id].get("app_id")
        }
        env_of = {
            r.id: bound[r.id].manifest.env if r.id in bound else job_of[r.job_id].get("env")
            for r in rows.values()
        }
        held_envs: frozenset[str] = frozenset()
        if any(env_of.values()):
            # Never a task whose environment this node's Python cannot install (store/envs.py).
            platform, held_envs = node_envs(c, node_id)
            for tid, lock in env_of.items():
                if lock and unfit_reason(c, lock, platform) is not None:
                    del rows[tid]
        retried = [r.id for r in rows.values() if r.attempts > 0]
        lost_on: dict[int, set[str]] = defaultdict(set)
        if retried:
            for tid, nid in c.execute(
                select(attempts.c.task_id, attempts.c.node_id).where(
                    attempts.c.task_id.in_(retried), attempts.c.outcome.in_(["lost", "failed"])
                )
            ).all():
                lost_on[tid].add(nid)
        # Replicas go to nodes that have not run any copy of their task.
        grouped = {r.replica_of or r.id for r in rows.values() if r.replica_of or r.replicas}
        ran: dict[int, set[str]] = defaultdict(set)
        if grouped:
            # The groups' rows by index, then their attempts by index (joined in one
            # statement, the planner hashed the whole attempts table: 8 ms at 20,000 tasks).
            group_of = {
                tid: head or tid
                for tid, head in c.execute(_GROUP_ROWS, {"groups": sorted(grouped)}).all()
            }
            for tid, nid in c.execute(_RAN, {"ids": sorted(group_of)}).all():
                ran[group_of[tid]].add(nid)
        # ... nor to a device of an owner, or on a network, that has (core/owners.py).
        barred = barred_groups(c, node_id, ran)
        # Locality: who holds the candidates' input blobs (only tasks that read blobs ask).
        holders = self.fleet._input_holders(c, [r.id for r in rows.values() if r.input_bytes])
        keepers = self._keepers(c, [r for r in rows.values() if r.sticky], cluster.live)
        # ... and which of those whose input is here run in an image unpacked here.
        here = [r.id for r in rows.values() if node_id in holders.get(r.id, {})]
        imaged = images_here(c, node_id, here)
        # A task's expected run is its job's typical attempt, for the policies that weigh it
        # (reliability: long tasks to steady nodes; deadline: slack), None before the first.
        typical = self._job_medians(c, {r.job_id for r in rows.values()}, now)
        candidates = []
        for r in rows.values():
            held_by = holders.get(r.id, _NO_HOLDERS)
            group = r.replica_of or r.id
            ran_group = ran.get(group)
            exclude = frozenset(ran_group) if ran_group else _NO_NODES
            if group in barred:
                exclude = exclude | {node_id}
            local = held_by.get(node_id, 0)
            job_row = job_of[r.job_id]
            candidates.append(
                scheduler.Candidate(
                    r.id,
                    r.customer_id,
                    r.memory_mb,
                    _NO_NEEDS if r.needs == "[]" else frozenset(json.loads(r.needs)),
                    frozenset(lost_on[r.id]) if r.id in lost_on else _NO_NODES,
                    group=r.replica_of,
                    exclude=exclude,
                    local_bytes=local,
                    sticky=bool(r.sticky),
                    keeper=keepers.get(r.id),
                    image_here=r.id in imaged,
                    waited_s=now - job_row["created_at"] if held_by or r.sticky else 0.0,
                    elsewhere_bytes=max(
                        (b for n, b in held_by.items() if n != node_id and n in cluster.live),
                        default=0,
                    )
                    if held_by
                    else 0,
                    # ... and whether such a node could take it now (delay scheduling)
                    holder_free=any(
                        n in cluster.free and b > local for n, b in held_by.items() if n != node_id
                    )
                    if held_by
                    else False,
                    est_s=typical[r.job_id],  # ... and its deadline, for slack (placement)
                    deadline=job_row.get("deadline"),
                    env_bytes_here=env_size(c, lock) if (lock := env_of[r.id]) in held_envs else 0,
                )
            )
        plan = scheduler.plan_lease(view, want, candidates, cluster, self.placement)
        return self._grant(c, node_id, [(rows[a.task_id], a.reason) for a in plan], now, bound)

    def _app_of(self, c: Connection, r: Any) -> str | None:
        app_id: str | None = self.job_rows._job_row(c, r.job_id).get("app_id")
        return app_id

    def _bind_apps(
        self, c: Connection, node_id: str, rows: Any, capabilities: frozenset[str] | None = None
    ) -> dict[int, apps.Version]:
        """The app version each app task among `rows` runs on this node (store/apps.py);
        one whose version needs what the node lacks (an image's architecture) is left out."""
        app_of = {r.id: a for r in rows if (a := self._app_of(c, r))}
        bound = apps.bind_versions(c, node_id, app_of)
        if capabilities is None:
            return bound
        return {tid: v for tid, v in bound.items() if v.needs <= capabilities}

    def _keepers(self, c: Connection, rows: Sequence[Any], live: frozenset[str]) -> dict[int, str]:
        """For tasks that continue kept state (TaskIn.keep_in), the live node that keeps it."""
        if not rows:
            return {}
        specs = dict(
            c.execute(
                select(tasks.c.id, tasks.c.spec).where(tasks.c.id.in_([r.id for r in rows]))
            ).all()
        )
        names: dict[str, int] = {}
        for r in rows:
            key = json.loads(specs[r.id]).get("keep_in")
            if key:
                names[keep_name(r.customer_id, key)] = r.id
        if not names:
            return {}
        out: dict[int, str] = {}
        for sha, node_id in c.execute(
            select(blob_holders.c.sha, blob_holders.c.node_id).where(
                blob_holders.c.sha.in_(list(names))
            )
        ).all():
            if node_id in live:
                out[names[sha]] = node_id
        return out

    def _lease_backups(
        self, c: Connection, view: scheduler.NodeView, free: int, now: float
    ) -> list[dict[str, Any]]:
        """Backup copies of a job's stragglers for a node with slots left over.

        MapReduce's backup tasks (Dean & Ghemawat 2004, §3.6). A backup is a replica row of the
        running task (`backup` set), leased at once to this node, so that verification decides
        between the copies: the first accepted result settles the task, and the other copy is
        cancelled (a replica) or its attempt ended (the original, whose late result is then
        superseded). Only jobs with nothing pending qualify: they are in their last wave.

        Which jobs those are is cached for a second (`_last_wave`): with none, an idle sync
        skips this search, which cost 41 % of an idle fleet's CPU when run on every sync.
        And a search that finds no task running long enough to be backed up (whatever the
        node) says when the first one will be: until then, or for BACKUP_QUIET_MAX_S at most
        (a task may finish and let a younger one into the BACKUP_SCAN window, the medians
        are kept a second), syncs skip it too. With jobs always in their last wave it was a
        third of a busy sync's CPU at 10,000 devices (bench/fleet.py, py-spy)."""
        last_wave = self.fleet._last_wave(c, now)
        if not last_wave:
            return []
        quiet = self._backups_quiet
        if quiet is not None and now < quiet[1] and quiet[0] == last_wave:
            return []
        node_id = view.id
        waiting = tasks.alias("waiting")
        copies = tasks.alias("copies")
        q = (
            select(
                tasks.c.id,
                tasks.c.job_id,
                tasks.c.node_id,
                tasks.c.memory_mb,
                tasks.c.needs,
                attempts.c.leased_at,
            )
            .join(
                attempts,
                (attempts.c.task_id == tasks.c.id)
                & (attempts.c.n == tasks.c.attempts)
                & attempts.c.outcome.is_(None),
            )
            .join(jobs, jobs.c.id == tasks.c.job_id)
            .where(
                tasks.c.state == TaskState.LEASED,
                tasks.c.replica_of.is_(None),
                tasks.c.node_id != node_id,
                tasks.c.job_id.in_(last_wave),
                jobs.c.backups,
                ~jobs.c.cancelled,
                ~select(waiting.c.id)
                .where(waiting.c.state == TaskState.PENDING, waiting.c.job_id == tasks.c.job_id)
                .exists(),
                ~select(copies.c.id)
                .where(
                    copies.c.replica_of == tasks.c.id,
                    copies.c.state.in_([TaskState.PENDING, TaskState.LEASED]),
                )
                .exists(),
            )
            .order_by(attempts.c.leased_at, tasks.c.id)
            .limit(BACKUP_SCAN)
        )
        # The longest-running first, young ones too: a task that has not yet run
        # BACKUP_MIN_S cannot be backed up (`backup_after`), but it says when it could be.
        rows = c.execute(q).all()
        if not rows:
            self._backups_quiet = (last_wave, now + BACKUP_QUIET_MAX_S)
            return []
        medians = self._job_medians(c, {r.job_id for r in rows}, now)
        due = min(
            (
                r.leased_at + scheduler.backup_after(m)
                for r in rows
                if (m := medians[r.job_id]) is not None
            ),
            default=math.inf,
        )
        if due >= now:  # plan_backups would back up none of them, for any node
            self._backups_quiet = (last_wave, min(due, now + BACKUP_QUIET_MAX_S))
            return []
        # A backup goes to a device that has not run the task, of another owner and network
        # than those that have (core/owners.py).
        ran: dict[int, set[str]] = defaultdict(set)
        for gid, nid in c.execute(
            select(func.coalesce(tasks.c.replica_of, tasks.c.id), attempts.c.node_id)
            .join(attempts, attempts.c.task_id == tasks.c.id)
            .where(
                tasks.c.id.in_([r.id for r in rows]) | tasks.c.replica_of.in_([r.id for r in rows])
            )
        ).all():
            ran[gid].add(nid)
        touched = barred_groups(c, node_id, ran)
        stragglers = [
            scheduler.Straggler(
                r.id,
                r.node_id,
                now - r.leased_at,
                medians[r.job_id],
                r.memory_mb,
                _NO_NEEDS if r.needs == "[]" else frozenset(json.loads(r.needs)),
                frozenset({node_id}) if r.id in touched else frozenset(),
            )
            for r in rows
        ]
        plan = scheduler.plan_backups(view, free, stragglers)
        if plan and not self.is_sqlite:
            # Another coordinator may be backing up (or settling) the same task right now.
            free_ids = set(
                c.execute(
                    select(tasks.c.id)
                    .where(
                        tasks.c.id.in_([a.task_id for a in plan]),
                        tasks.c.state == TaskState.LEASED,
                        ~select(copies.c.id)
                        .where(
                            copies.c.replica_of == tasks.c.id,
                            copies.c.state.in_([TaskState.PENDING, TaskState.LEASED]),
                        )
                        .exists(),
                    )
                    .with_for_update(skip_locked=True, of=tasks)
                ).scalars()
            )
            plan = [a for a in plan if a.task_id in free_ids]
        granted = []
        for a in plan:
            [copy] = self._make_replicas(c, a.task_id, 1, now, backup=True)
            row = c.execute(select(*_TASK_COLS).where(tasks.c.id == copy)).one()
            granted.append((row, a.reason))
        return self._grant(c, node_id, granted, now)

    def _job_medians(self, c: Connection, job_ids: set[int], now: float) -> dict[int, float | None]:
        """Each job's median finished attempt (`_job_median`), kept a second per process: it
        moves slowly, and placement (`Candidate.est_s`) and backups ask on every sync."""
        kept = self._medians
        medians = {}
        for job_id in job_ids:
            at, median = kept.get(job_id, (None, None))
            if at is None or not 0 <= now - at < 1.0:
                median = self._job_median(c, job_id)
                if len(kept) > 1000:
                    kept.clear()
                kept[job_id] = (now, median)
            medians[job_id] = median
        return medians

    def _job_median(self, c: Connection, job_id: int) -> float | None:
        """Median wall time of the job's recently finished attempts; None before the first."""
        took = (
            c.execute(
                # by ix_attempts_job_id, newest first: on a fresh PostgreSQL database (no
                # statistics yet) the join through tasks it replaces was planned as a nested
                # loop over both tables, 84-446 ms for a 2,000-task job (0.7 ms on SQLite)
                _JOB_ATTEMPTS_TOOK,
                {"job_id": job_id},
            )
            .scalars()
            .all()
        )
        return statistics.median(took) if took else None

    def _grant(
        self,
        c: Connection,
        node_id: str,
        granted: Sequence[tuple[Any, str]],
        now: float,
        bound: dict[int, apps.Version] | None = None,
    ) -> list[dict[str, Any]]:
        """Lease these pending task rows to the node: the tasks, their attempts, the leases."""
        if not granted:
            return []
        if bound is None:
            bound = self._bind_apps(c, node_id, [r for r, _ in granted])
        specs = dict(c.execute(_SPECS, {"ids": [r.id for r, _ in granted]}).all())
        leases = []
        updates = []
        attempt_rows = []
        for r, reason in granted:
            t = apply(_task(r), Leased(node_id, now, self.lease_seconds))
            updates.append(
                {
                    "b_id": r.id,
                    "b_state": r.state,
                    "b_attempts": r.attempts,
                    "state": t.state.value,
                    "attempts": t.attempts,
                    "node_id": t.node,
                    "lease_expires": t.lease_expires,
                    "app_version": bound[r.id].id if r.id in bound else None,
                }
            )
            attempt_rows.append(
                {
                    "task_id": r.id,
                    "job_id": r.job_id,
                    "n": t.attempts,
                    "node_id": node_id,
                    "leased_at": now,
                    "reason": reason,
                    "app_version": bound[r.id].id if r.id in bound else None,
                }
            )
            job = self.job_rows._job_row(c, r.job_id)
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
                    "tenant": keep_name(job["customer_id"], "")[:32],
                    "keep_in": _keep(job["customer_id"], spec.get("keep_in")),
                    "keep_out": _keep(job["customer_id"], spec.get("keep_out")),
                    "image": spec.get("image"),
                    "env": job.get("env"),
                }
            )
            if r.id in bound:  # the version bound here names what runs (store/apps.py)
                leases[-1].update(apps.lease_fields(bound[r.id], spec))
        # Compare-and-set: each row is still what was read (on PostgreSQL it is locked, SKIP
        # LOCKED, or a copy this transaction made; SQLite has one writer). Should one have
        # moved all the same, the whole transaction is tried again rather than leasing a
        # task twice.
        res = c.execute(_LEASE_ROWS, updates)
        if c.dialect.supports_sane_multi_rowcount and res.rowcount != len(updates):
            raise LostRace(f"{len(updates) - res.rowcount} of {len(updates)} leased rows moved")
        c.execute(_ATTEMPT_ROWS, attempt_rows)
        return leases

    # -- housekeeping -----------------------------------------------------------------------

    @retry_conflicts
    def expire_leases(self, now: float) -> list[int]:
        """Put tasks whose lease ran out back in the queue (or fail them after max attempts).

        One coordinator at a time does it (`duty`). The expired rows are locked, `FOR UPDATE
        SKIP LOCKED` in ascending id, and their state and lease re-checked under the lock: a
        task that a concurrent sync is reporting (its row locked) is left for the next round,
        and one it has finished no longer matches, so expiry never writes over a result."""
        with self.duty("lease expiry") as c:
            if c is None:
                return []  # another coordinator expires leases this round
            expired = (tasks.c.state == TaskState.LEASED, tasks.c.lease_expires <= now)
            found = c.execute(
                select(tasks.c.id, tasks.c.node_id)
                .where(*expired)
                .order_by(tasks.c.id)
                .limit(EXPIRE_BATCH)
            ).all()
            ids = [i for i, _ in found]
            # Expiry waits for no row, so it is never part of a circle of waits. The holders'
            # node rows first (their loss is counted on them below), SKIP LOCKED: a node in
            # the middle of a sync holds its own row, and its tasks wait for the next round
            # (a node that is really gone holds nothing). Then the expired tasks and the heads
            # of their groups, SKIP LOCKED too: a copy whose head another transaction holds
            # waits for the next round as well.
            holders = {n for _, n in found if n is not None}
            if holders and not self.is_sqlite:
                holders = set(
                    c.execute(
                        select(nodes.c.id)
                        .where(nodes.c.id.in_(sorted(holders)))
                        .order_by(nodes.c.id)
                        .with_for_update(skip_locked=True)
                    ).scalars()
                )
            locked = self._lock_groups(c, ids, skip_locked=True)
            rows = [
                r
                for r in c.execute(
                    select(*_TASK_COLS, tasks.c.replica_of, tasks.c.backup)
                    .where(tasks.c.id.in_([i for i in ids if i in locked]), *expired)
                    .order_by(tasks.c.id)
                ).all()
                if (r.replica_of is None or r.replica_of in locked) and r.node_id in holders
            ]
            finished = []
            lost_by_node: dict[str, int] = defaultdict(int)
            regroup = []
            for r in rows:
                fate = self.fleet._failure_fate(c, r.id, r.node_id)
                if fate == owners.REFUND:  # core/owners.py: a new device's loss costs nothing
                    more = dataclasses.replace(_task(r), max_attempts=r.max_attempts + 1)
                    t = apply(more, Expired(now))
                elif fate == owners.GIVE_UP:
                    why = f"lease lost on {r.node_id}; {owners.gave_up()}"
                    t = apply(_task(r), Errored(r.node_id, why, retryable=False))
                else:
                    t = apply(_task(r), Expired(now))
                if r.backup and t.state is TaskState.PENDING:  # a backup is never queued
                    t = apply(t, Cancelled(f"backup copy lost on {r.node_id}"))
                lost_by_node[r.node_id] += 1
                _end_attempt(c, r.id, r.node_id, "lost", now)
                # The row is locked and was read under the lock: still leased at this attempt.
                unmoved = (
                    tasks.c.id == r.id,
                    tasks.c.state == TaskState.LEASED,
                    tasks.c.attempts == r.attempts,
                )
                if t.state in TERMINAL and r.replica_of is not None:
                    # A replica that could not be run: the verifier decides whether to try more.
                    c.execute(update(tasks).where(*unmoved).values(**_task_cols(t)))
                    regroup.append(r.replica_of)
                elif t.state in TERMINAL:
                    finished.append((r.id, r.job_id, t, None))
                else:
                    err = json.dumps({"kind": "lost", "message": t.error})
                    c.execute(
                        update(tasks)
                        .where(*unmoved)
                        .values(**_task_cols(t), max_attempts=t.max_attempts, error=err)
                    )
            if finished:
                self._finish(
                    c, finished, now, expected={tid: TaskState.LEASED for tid, *_ in finished}
                )
            self._verify_groups(c, regroup, now)
            self.costs._stop_over_max_cost(c, now)
            for nid, n in sorted(lost_by_node.items()):
                c.execute(
                    update(nodes)
                    .where(nodes.c.id == nid)
                    .values(lost=nodes.c.lost + n, quota=quota_shrunk(n))
                )
            events.note(c, events.LEASES_EXPIRED, len(rows))
        return [r.id for r in rows]

    @retry_conflicts
    def extend_leases(self, now: float) -> int:
        """After a coordinator restart, give every holder a full lease to come back and report.

        A single guarded statement (leased, and the lease shorter than that): it cannot write
        over a task that a running coordinator finished meanwhile."""
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


def _keep(customer_id: str, key: str | None) -> str | None:
    return keep_name(customer_id, key) if key else None


def _report_view(rep: TaskReport) -> intake.Report:
    """What the intake reads of a wire report (core/ takes its own types)."""
    err = rep.error
    return intake.Report(
        task=rep.task_id,
        attempt=rep.attempt,
        ok=rep.ok,
        error=None if err is None else intake.ReportedError(err.kind, err.type, err.message),
        cpu_s=rep.cpu_s,
        wall_s=rep.wall_s,
        blobs=tuple(
            (v.sha, v.size)
            for v in [rep.value, *rep.outputs.values()]
            if v is not None and v.data is None
        ),
        kept=rep.kept,
        digest=result_digest(rep),
    )


def _keep_results(
    c: Connection,
    node_id: str,
    keeps: Sequence[intake.KeepResult],
    clean: dict[int, TaskReport],
    now: float,
) -> None:
    """Write each kept result on the attempt it answers, in one statement."""
    if not keeps:
        return
    c.execute(
        _KEEP_RESULT,
        [
            {
                "b_task": k.task,
                "b_node": node_id,
                "b_n": k.attempt,
                "b_outcome": k.outcome,
                "digest": k.digest,
                "report": clean[k.task].model_dump_json() if k.keep_report else None,
                "cpu_s": k.cpu_s,
                "ended_at": now,
                "b_reopen": k.reopen,
            }
            for k in sorted(keeps, key=lambda k: k.task)
        ],
    )


def _move_tasks(c: Connection, moves: Sequence[intake.Requeue | intake.Advance]) -> None:
    """Write the tasks that reports moved, in one statement, in ascending id (the order every
    transaction takes task rows in). Each is guarded by the state the intake decided from: a
    task that a concurrent transaction moved first is left as that one wrote it. A requeue
    writes its error; a result leaves the error column as it was."""
    if not moves:
        return
    c.execute(
        update(tasks)
        .where(
            tasks.c.id == bindparam("b_id"),
            tasks.c.state == bindparam("b_state"),
            tasks.c.attempts == bindparam("b_attempts"),
        )
        .values(
            state=bindparam("n_state"),
            attempts=bindparam("n_attempts"),
            max_attempts=bindparam("n_max"),
            node_id=bindparam("n_node"),
            lease_expires=bindparam("n_expires"),
            error=func.coalesce(bindparam("n_error", type_=Text), tasks.c.error),
        ),
        [
            {
                "b_id": m.task,
                "b_state": m.expected.state.value,
                "b_attempts": m.expected.attempts,
                "n_state": m.new.state.value,
                "n_attempts": m.new.attempts,
                "n_max": m.new.max_attempts,
                "n_node": m.new.node,
                "n_expires": m.new.lease_expires,
                "n_error": m.error if isinstance(m, intake.Requeue) else None,
            }
            for m in sorted(moves, key=lambda m: m.task)
        ],
    )


def _mark_for_check(c: Connection, marks: Sequence[intake.MarkForCheck]) -> None:
    """Write down the draw that asked for a check (the quorum becomes trust.QUORUM), guarded
    by the quorum the draw was made on."""
    for quorum in sorted({m.expected_quorum for m in marks}):
        ids = sorted(m.task for m in marks if m.expected_quorum == quorum)
        c.execute(
            update(tasks)
            .where(tasks.c.id.in_(ids), tasks.c.quorum == quorum)
            .values(quorum=trust.QUORUM)
        )
