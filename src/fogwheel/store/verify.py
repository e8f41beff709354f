"""Verification in the store: replicas, verdicts, reputation and quarantine (core/trust.py).

A task row the customer sees is a *group*: itself plus the replica rows (`replica_of`) made to
check it. Every result a node reports is kept on its attempt with a digest; after each report
the group's verdict is taken again, and only an agreed result settles the task.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import random
import re
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from fogwheel.core import compare, owners, trust
from fogwheel.core.credit import Claim, granted_cpu
from fogwheel.core.tasks import TERMINAL, Cancelled, Settled, Task, TaskState, apply
from fogwheel.protocol import TaskReport
from fogwheel.store import events, parts
from fogwheel.store.base import _TASK_COLS, StoreBase, _task, _task_cols
from fogwheel.store.fleet import devices, quota_grown
from fogwheel.store.schema import attempts, jobs, nodes, task_blobs, tasks

TYPICAL_SAMPLE = 201  # recent checked runs of a function whose median bounds a lone claim
TYPICAL_JOBS = 20  # ... taken from the customer's latest jobs of that function
TYPICAL_TTL_S = 30.0  # how long a job's typical run is reused before it is taken again
RECHECK_RECENT = 50  # unchecked results of a quarantined node that are checked again

_rng = random.SystemRandom()


def result_digest(rep: TaskReport) -> str:
    """What two replicas must agree on: every field of a report that the customer receives
    (`results_since`): the value, the output files' names and shas, and the error's kind,
    type, message, args, traceback and legacy `exc`. So the report that settles a task is,
    in all the customer sees, the one its agreeing replicas sent (no lone node's words ride
    along). Only the numbers in a `limit` message are left out: they are measurements (how
    much scratch a task held) that differ between honest nodes."""
    return _digest(rep, with_value=True)


def rest_digest(rep: TaskReport) -> str:
    """`result_digest` without the value: what must be equal between two results whose values
    are compared within a tolerance (their files and errors are not numbers)."""
    return _digest(rep, with_value=False)


def _digest(rep: TaskReport, *, with_value: bool) -> str:
    body: dict[str, Any] = {
        "ok": rep.ok,
        "outputs": sorted((k, v.sha) for k, v in rep.outputs.items()),
    }
    if with_value:
        body["value"] = rep.value.sha if rep.value else None
    if not rep.ok:
        err = rep.error
        body["error"] = None if err is None else _error_digest_fields(err)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _error_digest_fields(err: Any) -> dict[str, Any]:
    message = err.message
    if err.kind == "limit":
        message = re.sub(r"\d+(\.\d+)?", "#", message)
    return {
        "kind": err.kind,
        "type": err.type,
        "message": message,
        "traceback": err.traceback,
        "args": err.args,
        "exc": err.exc.sha if err.exc else None,
    }


# Statements a busy sync runs, built once (store/base.py, `_COUNT_FINISHED`).
_JOB_OF = select(tasks.c.id, tasks.c.job_id).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
_SETTLE_UNCHECKED = (
    update(tasks)
    .where(tasks.c.id == bindparam("b_id"))
    .values(digest=bindparam("digest"), quorum=1, cpu_s=bindparam("granted"))
)


@functools.lru_cache(maxsize=64)
def _agreed(n: int) -> Any:
    """A node's record after n results that agreed (or went unchecked), built once per n."""
    return (
        update(nodes)
        .where(nodes.c.id == bindparam("b_node"))
        .values(agreed=nodes.c.agreed + n, streak=nodes.c.streak + n, quota=quota_grown(n))
    )


class VerifyStore(StoreBase):
    job_rows: parts.JobRows  # a job's tolerance, limits and customer (store/jobs.py)
    finisher: parts.Finisher  # a settled task's end (store/leasing.py)
    credits: parts.Credits  # paying for verified work (store/ledger.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._typicals: dict[int, tuple[float | None, float]] = {}  # job -> (typical, when)

    def _trust_record(self, c: Connection, node_id: str) -> trust.Record:
        r = c.execute(
            select(nodes.c.agreed, nodes.c.disputed, nodes.c.streak, nodes.c.quarantined).where(
                nodes.c.id == node_id
            )
        ).one()
        return trust.Record(r.agreed, r.disputed, r.streak, bool(r.quarantined))

    def _verify_groups(self, c: Connection, groups: Iterable[int | None], now: float) -> None:
        """Take each group's verdict again, in ascending id: the one order of task locks."""
        for group in sorted({g for g in groups if g is not None}):
            self._verify_group(c, group, now)

    def _verify_group(self, c: Connection, group: int, now: float) -> None:
        """The verdict on one group. Its head row is locked first and read under the lock:
        two nodes that report copies of one task at once take turns, and the second sees the
        verdict of the first (a late vote) instead of settling the task again."""
        q = select(*_TASK_COLS, tasks.c.quorum, tasks.c.replicas, tasks.c.digest).where(
            tasks.c.id == group
        )
        if not self.is_sqlite:
            q = q.with_for_update()
        head = c.execute(q).one()
        members = c.execute(
            select(tasks.c.id, tasks.c.state).where(tasks.c.replica_of == group)
        ).all()
        ids = [group, *(m.id for m in members)]
        rows = c.execute(
            select(
                attempts.c.id,
                attempts.c.node_id,
                attempts.c.digest,
                attempts.c.report,
                attempts.c.cpu_s,
                attempts.c.outcome,
                attempts.c.leased_at,
                attempts.c.ended_at,
            )
            .where(attempts.c.task_id.in_(ids))
            .order_by(attempts.c.id)
        ).all()
        involved = frozenset(r.node_id for r in rows)
        # One vote per node, and one per owner: devices of one owner that agree are one
        # voice, so colluders never out-vote another owner's device (core/owners.py).
        devs = devices(c, involved)
        reported = {}
        voted: set[str] = set()
        extra = []  # results of further devices of an owner that has voted
        for r in rows:
            if r.digest is not None and r.outcome == "reported" and r.node_id not in reported:
                who = devs[r.node_id].voter if r.node_id in devs else owners.voter(r.node_id, None)
                if who in voted:
                    extra.append(r)
                    continue
                voted.add(who)
                reported[r.node_id] = r
        if head.state in TERMINAL:
            self._late_votes(c, head, [*reported.values(), *extra], now)
            return
        if reported:  # a quarantined node's word counts for nothing
            barred = set(
                c.execute(
                    select(nodes.c.id).where(nodes.c.id.in_(reported), nodes.c.quarantined)
                ).scalars()
            )
            for n in barred:
                c.execute(
                    update(attempts)
                    .where(attempts.c.id == reported.pop(n).id)
                    .values(outcome="disputed")
                )
        open_states = (TaskState.PENDING.value, TaskState.LEASED.value)
        outstanding = sum(m.state in open_states for m in members) + (head.state in open_states)
        quorum = head.quorum
        if quorum == 0 and reported:
            first = next(iter(reported.values()))
            quorum = trust.quorum_for(self._trust_record(c, first.node_id), _rng.random())
            c.execute(update(tasks).where(tasks.c.id == group).values(quorum=quorum))
        votes = [(n, r.digest) for n, r in reported.items()]
        tol = self.job_rows._job_row(c, head.job_id)["tolerance"]
        if tol is not None:
            votes = compare.agreement_classes(
                [(n, r.digest, _decoded_value(r.report)) for n, r in reported.items()],
                compare.Tolerance(tol["rel"], tol["abs"]),
                [_rest_of(r.report) for r in reported.values()],
            )
        verdict = trust.verdict(votes, max(quorum, 1), outstanding, involved)
        if isinstance(verdict, trust.Accept):
            winner = next(r for n, r in reported.items() if n in verdict.agreeing)
            rep = TaskReport.model_validate_json(winner.report)
            if not self._settle(
                c, head, Settled(rep.ok, None if rep.ok else _error_text(rep)), rep, now
            ):
                return  # settled by another transaction: nobody is paid twice
            c.execute(update(tasks).where(tasks.c.id == group).values(digest=verdict.digest))
            self._cancel_members(c, members, now)
            # An unchecked result counts towards its node's streak too: trust grows with volume,
            # and the spot-check rate never falls below MIN_CHECK_RATE (core/trust.py).
            for n in verdict.agreeing:
                self._vote(c, n, [reported[n].id], agreed=True, checked=quorum > 1)
            for n in verdict.disputing:
                why = f"its result for task {group} disagreed with the agreed one"
                self._vote(c, n, [reported[n].id], agreed=False, reason=why)
            self._unvoted(c, extra)
            self._pay_agreed(c, group, head.job_id, [reported[n] for n in verdict.agreeing], now)
        elif isinstance(verdict, trust.NeedMore):
            split = len({d for _, d in votes}) > 1
            if split and not self._tiebreakers(c, set(reported), now):
                # Nobody is left who could break the tie: say so rather than wait forever.
                reason = (
                    "results disagree and no other node is live to break the tie "
                    f"({verdict.reason})"
                )
                self._settle(c, head, Settled(False, reason), None, now)
                self._cancel_members(c, members, now)
                self._unvoted(c, extra)
                for r in reported.values():
                    c.execute(
                        update(attempts).where(attempts.c.id == r.id).values(outcome="unsettled")
                    )
            elif verdict.replicas:
                self._make_replicas(c, group, verdict.replicas, now)
        else:
            reason = f"no agreement: {verdict.reason}"
            self._settle(c, head, Settled(False, reason), None, now)
            self._cancel_members(c, members, now)
            self._unvoted(c, extra)
            for r in reported.values():
                c.execute(update(attempts).where(attempts.c.id == r.id).values(outcome="unsettled"))

    def _accept_unchecked(
        self,
        c: Connection,
        node_id: str,
        items: Sequence[tuple[int, int, Task, TaskReport, str, Claim]],
        now: float,
    ) -> None:
        """Settle a batch of first results that their node's record lets go unchecked:
        one statement per kind of write, however many tasks. Each is paid as one unchecked
        claim (core/credit.py): never above the typical checked run of its function."""
        finish = self.finisher._finish
        moved = finish(c, [(tid, job, t, rep) for tid, job, t, rep, _, _ in items], now)
        # A task that a concurrent transaction finished first is its: not settled, paid or
        # counted on this node again.
        items = [it for it in items if it[0] in moved]
        if not items:
            return
        job_row = self.job_rows._job_row
        typical = {job: self._typical_cpu(c, job) for job in {it[1] for it in items}}
        granted = {
            tid: granted_cpu(
                [claim], cpu_limit=job_row(c, job)["limits"].get("cpu_s"), typical=typical[job]
            )
            for tid, job, _, _, _, claim in items
        }
        c.execute(
            _SETTLE_UNCHECKED,
            [{"b_id": tid, "digest": d, "granted": granted[tid]} for tid, _, _, _, d, _ in items],
        )
        c.execute(_agreed(len(items)), {"b_node": node_id})
        self.credits.credit_verified_batch(
            c,
            [
                (tid, job_row(c, job)["customer_id"], [(node_id, granted[tid])])
                for tid, job, _, _, _, _ in items
            ],
            now,
        )

    def _pay_agreed(
        self, c: Connection, group: int, job_id: int, agreeing: Sequence[Any], now: float
    ) -> None:
        """Pay the agreeing replicas of a settled task one granted figure each, from the
        quorum (core/credit.py: the least of their claims, each held to its lease's wall
        time x its node's cores and to the job's CPU limit), and charge the customer for it."""
        cores = dict(
            c.execute(
                select(nodes.c.id, nodes.c.cores).where(
                    nodes.c.id.in_([r.node_id for r in agreeing])
                )
            ).all()
        )
        claims = [
            Claim(
                r.node_id,
                math.nan if r.cpu_s is None else r.cpu_s,  # NULL: a claim that was no number
                (r.ended_at if r.ended_at is not None else now) - r.leased_at,
                cores.get(r.node_id) or 1,
            )
            for r in agreeing
        ]
        job = self.job_rows._job_row(c, job_id)
        granted = granted_cpu(
            claims,
            cpu_limit=job["limits"].get("cpu_s"),
            typical=self._typical_cpu(c, job_id) if len(claims) == 1 else None,
        )
        c.execute(update(tasks).where(tasks.c.id == group).values(cpu_s=granted))
        runs = [(cl.node, granted) for cl in claims]
        self.credits.credit_verified_work(
            c, task_id=group, customer_id=job["customer_id"], runs=runs, now=now
        )

    def _typical_cpu(self, c: Connection, job_id: int) -> float | None:
        """The median CPU-seconds granted to recent *checked* runs (settled by two or more
        agreeing replicas) of this job's function, for the same customer (its latest
        `TYPICAL_JOBS` jobs of that function); of this job's tasks for a command job. None
        before the first: what a lone, unchecked claim is held to.

        Kept a while per job (`TYPICAL_TTL_S`; an unknown one only briefly), so that the
        fast path of unchecked results does not scan a job's tasks for every batch."""
        cache = self._typicals
        clock = time.monotonic()
        hit = cache.get(job_id)
        if hit is not None and clock - hit[1] < (TYPICAL_TTL_S if hit[0] is not None else 2.0):
            return hit[0]
        job = self.job_rows._job_row(c, job_id)
        fn_sha = (job.get("fn") or {}).get("sha")
        scope = [job_id]
        if fn_sha:
            scope = list(
                c.execute(
                    select(jobs.c.id)
                    .where(jobs.c.fn_sha == fn_sha, jobs.c.customer_id == job["customer_id"])
                    .order_by(jobs.c.id.desc())
                    .limit(TYPICAL_JOBS)
                ).scalars()
            )
        sample: list[float] = []
        for j in scope:  # newest first, each along its (job_id, finish_seq) index
            sample += c.execute(
                select(tasks.c.cpu_s)
                .where(
                    tasks.c.job_id == j,
                    tasks.c.finish_seq.is_not(None),
                    tasks.c.replica_of.is_(None),
                    tasks.c.state == TaskState.DONE,
                    tasks.c.quorum >= 2,
                    tasks.c.digest.is_not(None),
                )
                .order_by(tasks.c.finish_seq.desc())
                .limit(TYPICAL_SAMPLE - len(sample))
            ).scalars()
            if len(sample) >= TYPICAL_SAMPLE:
                break
        typical = statistics.median(float(x) for x in sample) if sample else None
        if len(cache) > 10_000:
            cache.clear()
        cache[job_id] = (typical, clock)
        return typical

    def _decode_ahead(self, reports: Sequence[TaskReport]) -> None:
        """Decode, outside any write transaction, the inline values that a tolerance job's
        verdict will compare (core/compare.py: bounded), so that the verdict finds them in
        `_DECODED`; a value not found there (another coordinator process took the report,
        or this one restarted) is decoded where it is needed, within the same bounds."""
        inline = {r.task_id: r.value for r in reports if r.value is not None and r.value.data}
        if not inline:
            return
        with self.read() as c:
            job_of = dict(c.execute(_JOB_OF, {"ids": list(inline)}).all())
            tolerant = {
                j for j in set(job_of.values()) if self.job_rows._job_row(c, j)["tolerance"]
            }
        for tid, v in inline.items():
            if job_of.get(tid) in tolerant and v.sha not in _DECODED:
                _DECODED.put(v.sha, compare.decode(v.raw()))

    def _tiebreakers(self, c: Connection, voted: set[str], now: float) -> bool:
        """Whether any live, trusted node has not yet given a result for this task, and is
        of another owner and network than those that have (core/owners.py)."""
        horizon = now - self.gone_after_s
        live = c.execute(
            select(nodes.c.id, nodes.c.owner_id, nodes.c.network).where(
                nodes.c.state == "up", nodes.c.last_seen >= horizon, ~nodes.c.quarantined
            )
        ).all()
        gave = list(devices(c, voted).values())
        return any(
            not owners.barred(owners.Device(r.id, r.owner_id, r.network), gave) for r in live
        )

    def _unvoted(self, c: Connection, extra: Sequence[Any]) -> None:
        """Results of an owner's further devices, once a verdict is in: ran, not counted."""
        if extra:
            ids = [r.id for r in extra]
            c.execute(update(attempts).where(attempts.c.id.in_(ids)).values(outcome="superseded"))

    def _settle(
        self, c: Connection, head: Any, event: Settled, rep: TaskReport | None, now: float
    ) -> bool:
        """Finish the group's head with its verdict; False when another transaction moved it
        first (then nothing is written)."""
        task = apply(_task(head), event)
        if head.state == TaskState.LEASED:
            # Settled by another copy (a backup) while its holder still runs it: that attempt
            # is over; the holder finds its lease gone at its next renewal.
            c.execute(
                update(attempts)
                .where(attempts.c.task_id == head.id, attempts.c.outcome.is_(None))
                .values(outcome="cancelled", ended_at=now)
            )
        error = (
            None if rep is not None else json.dumps({"kind": "disputed", "message": event.reason})
        )
        moved = self.finisher._finish(
            c,
            [(head.id, head.job_id, task, rep)],
            now,
            error_json=error,
            expected={head.id: head.state},
        )
        return bool(moved)

    def _cancel_members(self, c: Connection, members: Sequence[Any], now: float) -> None:
        """Replicas still queued or running are no longer needed once the group is settled.

        Locked `SKIP LOCKED` and read under the lock: a copy that another transaction holds
        (its node reporting it, expiry taking it) is left to that one, which finds the group
        settled; waiting for it here, while holding the head, could close a circle of locks."""
        open_states = (TaskState.PENDING, TaskState.LEASED)
        open_ = [m.id for m in members if m.state in open_states]
        if not open_:
            return
        q = select(*_TASK_COLS).where(tasks.c.id.in_(open_), tasks.c.state.in_(open_states))
        if not self.is_sqlite:
            q = q.order_by(tasks.c.id).with_for_update(skip_locked=True)
        rows = c.execute(q).all()
        open_ = [r.id for r in rows]
        if not open_:
            return
        for r in rows:
            t = apply(_task(r), Cancelled("no longer needed: the task is settled"))
            c.execute(update(tasks).where(tasks.c.id == r.id).values(**_task_cols(t)))
        c.execute(
            update(attempts)
            .where(attempts.c.task_id.in_(open_), attempts.c.outcome.is_(None))
            .values(outcome="cancelled", ended_at=now)
        )

    def _make_replicas(
        self, c: Connection, group: int, n: int, now: float, *, backup: bool = False
    ) -> list[int]:
        """Add `n` copies of task `group` to the queue; their ids, newest first (when it has
        blob inputs or is a `backup`: otherwise nobody asks and the list is empty).

        A `backup` copy runs because the task is slow, not to check it (store/leasing.py)."""
        src = c.execute(select(tasks).where(tasks.c.id == group)).mappings().one()
        rows = [
            {
                "job_id": src["job_id"],
                "customer_id": src["customer_id"],
                "idx": src["idx"],
                "state": TaskState.PENDING.value,
                "attempts": 0,
                "max_attempts": src["max_attempts"],
                "memory_mb": src["memory_mb"],
                "needs": src["needs"],
                "spec": src["spec"],
                "cpu_s": 0.0,
                "replica_of": group,
                "quorum": 0,
                "replicas": 0,
                "priority": 0,  # a result is waiting on this check: run it before new work
                "backup": backup,
                "input_bytes": src["input_bytes"],
            }
            for _ in range(n)
        ]
        c.execute(tasks.insert(), rows)
        c.execute(update(tasks).where(tasks.c.id == group).values(replicas=tasks.c.replicas + n))
        # The replicas read the same blobs, so their holders may fetch them.
        shas = list(
            c.execute(select(task_blobs.c.sha).where(task_blobs.c.task_id == group)).scalars()
        )
        if not shas and not backup:
            return []  # nobody needs the new ids: spare the query
        new_ids = list(
            c.execute(
                select(tasks.c.id)
                .where(tasks.c.replica_of == group)
                .order_by(tasks.c.id.desc())
                .limit(n)
            ).scalars()
        )
        if shas:
            c.execute(
                task_blobs.insert(), [{"task_id": t, "sha": s} for t in new_ids for s in shas]
            )
        return new_ids

    def _vote(
        self,
        c: Connection,
        node_id: str,
        attempt_ids: list[int],
        *,
        agreed: bool,
        counts: bool = True,
        checked: bool = True,
        reason: str | None = None,
    ) -> None:
        """Record a verdict on a node's result: its attempt's outcome and its trust record.

        An unchecked result is `accepted`, a checked one `agreed` or `disputed`."""
        outcome = ("agreed" if checked else "accepted") if agreed else "disputed"
        c.execute(update(attempts).where(attempts.c.id.in_(attempt_ids)).values(outcome=outcome))
        if not agreed:
            events.note(c, events.DISAGREEMENTS, len(attempt_ids))
        if counts:
            self._record_verdict(c, node_id, agreed, reason=reason)

    def _record_verdict(
        self, c: Connection, node_id: str, agreed: bool, *, reason: str | None = None
    ) -> trust.Record:
        """Apply one verdict to the node's trust record; a node caught out is quarantined
        (for `reason`, kept on the node). Returns the record after."""
        before = self._trust_record(c, node_id)
        after = trust.record_after(before, agreed)
        c.execute(
            update(nodes)
            .where(nodes.c.id == node_id)
            .values(
                agreed=after.agreed,
                disputed=after.disputed,
                streak=after.streak,
                quarantined=after.quarantined,
                # a validated result doubles the in-flight quota (core/quota.py)
                **({"quota": quota_grown(1)} if agreed else {}),
            )
        )
        if after.quarantined and not before.quarantined:
            self._quarantine(c, node_id, reason or "caught returning a wrong result")
        return after

    def _late_votes(self, c: Connection, head: Any, reported: Iterable[Any], now: float) -> None:
        """Results that arrive after a verdict are compared with it (a re-check, a slow replica).

        When every node behind the verdict has since been quarantined, a disagreeing re-check
        condemns the verdict, not the re-checker: the task is flagged as disputed."""
        if head.digest is None:
            return
        backers = set(
            c.execute(
                select(attempts.c.node_id)
                .join(tasks, tasks.c.id == attempts.c.task_id)
                .where(
                    (tasks.c.id == head.id) | (tasks.c.replica_of == head.id),
                    attempts.c.outcome.in_(["agreed", "accepted"]),
                )
            ).scalars()
        )
        bad = set(c.execute(select(nodes.c.id).where(nodes.c.quarantined)).scalars())
        rechecking = bool(backers) and backers <= bad
        if head.quorum <= 1 and not rechecking:
            # The verdict was not a check: a second opinion now proves nobody wrong.
            ids = [r.id for r in reported]
            if ids:
                c.execute(
                    update(attempts).where(attempts.c.id.in_(ids)).values(outcome="superseded")
                )
            return
        for r in reported:
            if r.digest == head.digest:
                self._vote(c, r.node_id, [r.id], agreed=True)
            elif rechecking:
                self._vote(c, r.node_id, [r.id], agreed=True, counts=False)
                note = {
                    "kind": "disputed",
                    "message": (
                        f"a re-check on {r.node_id} disagrees with the result of quarantined "
                        f"{', '.join(sorted(backers))}"
                    ),
                }
                c.execute(update(tasks).where(tasks.c.id == head.id).values(error=json.dumps(note)))
            else:
                why = f"its late result for task {head.id} disagreed with the verdict"
                self._vote(c, r.node_id, [r.id], agreed=False, reason=why)

    def _quarantine(
        self, c: Connection, node_id: str, reason: str = "caught returning a wrong result"
    ) -> None:
        """No more work for a node caught lying; its leases end now; its recent unchecked
        results are checked again on other nodes. `reason` is kept on the node (a sentence)."""
        c.execute(update(nodes).where(nodes.c.id == node_id).values(quarantine_reason=reason[:500]))
        events.note(c, events.QUARANTINES)
        # Reputation follows owners: the liar's sibling devices (not the operator's, which
        # vote alone) are back on probation, every result checked (core/owners.py).
        owner = c.execute(select(nodes.c.owner_id).where(nodes.c.id == node_id)).scalar()
        if owner is not None and owner != owners.OPERATOR:
            c.execute(
                update(nodes)
                .where(nodes.c.owner_id == owner, nodes.c.id != node_id)
                .values(streak=0)
            )
        c.execute(
            update(tasks)
            .where(tasks.c.node_id == node_id, tasks.c.state == TaskState.LEASED)
            .values(lease_expires=0.0)
        )
        recent = (
            c.execute(
                select(tasks.c.id)
                .join(attempts, attempts.c.task_id == tasks.c.id)
                .where(
                    attempts.c.node_id == node_id,
                    attempts.c.outcome == "accepted",
                    tasks.c.replica_of.is_(None),
                    tasks.c.state == TaskState.DONE,
                )
                .order_by(tasks.c.id.desc())
                .limit(RECHECK_RECENT)
            )
            .scalars()
            .all()
        )
        for group in recent:
            self._make_replicas(c, group, 1, 0.0)

    def quarantined_nodes(self) -> list[str]:
        with self.read() as c:
            return list(c.execute(select(nodes.c.id).where(nodes.c.quarantined)).scalars())

    def pardon_node(self, node_id: str) -> bool:
        """Lift a node's quarantine (the operator's call): state up, reason cleared, its trust
        record back to probation (every result checked again). False when there is no such
        node."""
        with self.tx() as c:
            hit = c.execute(
                update(nodes)
                .where(nodes.c.id == node_id)
                .values(
                    quarantined=False,
                    quarantine_reason=None,
                    state="up",
                    agreed=0,
                    disputed=0,
                    streak=0,
                )
            ).rowcount
        return bool(hit)

    def count_replica_runs(self) -> dict[str, int]:
        """Runs that produced a result (replicas and wasted copies included) against tasks:
        the figure behind the replication overhead."""
        with self.read() as c:
            ran = ["reported", "agreed", "accepted", "disputed", "superseded", "unsettled"]
            q = select(func.count()).select_from(attempts).where(attempts.c.outcome.in_(ran))
            runs = c.execute(q).scalar_one()
            groups = c.execute(
                select(func.count()).select_from(tasks).where(tasks.c.replica_of.is_(None))
            ).scalar_one()
        return {"runs": runs, "tasks": groups}

    def count_backups(self, job_id: int | None = None) -> dict[str, int]:
        """Backup copies of stragglers (store/leasing.py), of one job or of all: `started`;
        `won`, whose result is behind the verdict; `running`, not decided yet; `wasted`, ended
        without counting (the original finished first, or the copy was lost)."""
        q = (
            select(tasks.c.state, attempts.c.outcome, func.count())
            .select_from(tasks)
            .outerjoin(attempts, attempts.c.task_id == tasks.c.id)
            .where(tasks.c.backup)
            .group_by(tasks.c.state, attempts.c.outcome)
        )
        if job_id is not None:
            q = q.where(tasks.c.job_id == job_id)
        out = {"started": 0, "won": 0, "running": 0, "wasted": 0}
        with self.read() as c:
            for state, outcome, n in c.execute(q).all():
                out["started"] += n
                if outcome in ("accepted", "agreed"):
                    out["won"] += n
                elif state in (TaskState.PENDING, TaskState.LEASED) or outcome == "reported":
                    out["running"] += n
                else:
                    out["wasted"] += n
        return out


class _DecodedCache:
    """Decoded values by SHA-256 (content-addressed, so any process may share them), the
    least recently used dropped first once they hold more than `max_nodes` objects."""

    def __init__(self, max_nodes: int = 4 * compare.MAX_NODES) -> None:
        self.max_nodes = max_nodes
        self._items: OrderedDict[str, tuple[compare.Decoded, int]] = OrderedDict()
        self._nodes = 0
        self._lock = threading.Lock()

    def __contains__(self, sha: str) -> bool:
        return sha in self._items

    def get(self, sha: str) -> compare.Decoded | None:
        with self._lock:
            hit = self._items.get(sha)
            if hit is None:
                return None
            self._items.move_to_end(sha)
            return hit[0]

    def put(self, sha: str, dec: compare.Decoded, size: int | None = None) -> None:
        cost = size if size is not None else max(1, _count(dec.value))
        with self._lock:
            if sha in self._items:
                return
            self._items[sha] = (dec, cost)
            self._nodes += cost
            while self._nodes > self.max_nodes and len(self._items) > 1:
                _, (_, gone) = self._items.popitem(last=False)
                self._nodes -= gone


def _count(value: Any) -> int:
    """How many objects a decoded value holds (a tree: shared references were refused)."""
    n, stack = 0, [value]
    while stack:
        x = stack.pop()
        n += 1
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list | tuple | set | frozenset):
            stack.extend(x)
    return n


_DECODED = _DecodedCache()


def _rest_of(report_json: str | None) -> str:
    """The rest digest of a kept report ("" when none was kept: compared by value alone)."""
    return rest_digest(TaskReport.model_validate_json(report_json)) if report_json else ""


def _decoded_value(report_json: str | None) -> compare.Decoded | None:
    """A kept report's value decoded for comparison (from `_DECODED` when it was decoded
    ahead), or None when it did not travel inline (large results are compared by hash)."""
    if not report_json:
        return None
    value = json.loads(report_json).get("value") or {}
    data, sha = value.get("data"), value.get("sha")
    if not data or not sha:
        return None
    hit = _DECODED.get(sha)
    if hit is None:
        hit = compare.decode(base64.b64decode(data))
        _DECODED.put(sha, hit)
    return hit


def _error_text(rep: TaskReport) -> str:
    if rep.error is None:
        return "failed"
    return f"{rep.error.kind}: {rep.error.type} {rep.error.message}".strip()


__all__ = ["VerifyStore", "result_digest"]
