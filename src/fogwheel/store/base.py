"""The store's foundation: the engine, transactions, and the row helpers its parts share."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    bindparam,
    create_engine,
    event,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from fogwheel.core import scheduler
from fogwheel.core.tasks import Task, TaskState
from fogwheel.store import events
from fogwheel.store.schema import attempts, jobs, metadata, tasks

if TYPE_CHECKING:
    from fogwheel.protocol import TaskReport

log = logging.getLogger("fogwheel.store")
P = ParamSpec("P")
R = TypeVar("R")

NODE_GONE_AFTER_LEASES = 3  # a node silent for this many lease periods is marked gone ...
GONE_AFTER_MIN_S = 120.0  # ... but not sooner than this, by default (`default_gone_after_s`)


def default_gone_after_s(lease_seconds: float) -> float:
    """How long a node may stay silent before it is gone, unless the operator says otherwise.

    Decoupled from the lease: a busy node renews within its lease anyway, so the horizon only
    bounds how often an idle node must sync (core/pacing.py waits up to two thirds of it);
    at 10,000 nodes a 45 s horizon alone forced 333 syncs a second (docs/scale.md)."""
    return max(NODE_GONE_AFTER_LEASES * lease_seconds, GONE_AFTER_MIN_S)


RETRYABLE = {"crash", "lost", "input"}  # error kinds that are the device's fault, not the task's
_NO_NEEDS: frozenset[str] = frozenset()
CONFLICT_TRIES = 6  # a whole transaction is tried this often before a lost race is an error
# PostgreSQL's serialization failure and deadlock detected, and a race the store noticed itself
CONFLICT_STATES = {"40001", "40P01", "lost"}
_FINISHED = "fogwheel.finished"  # Connection.info: tasks this transaction finished, per job


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # customer | node | admin | join
    id: str
    name: str


def keep_name(customer_id: str, key: str) -> str:
    """The node-side name of a customer's kept state (TaskIn.keep_in / keep_out): a hash, so
    that one customer's key can never name another's state on a node."""
    return hashlib.sha256(f"fogwheel-keep\0{customer_id}\0{key}".encode()).hexdigest()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


class SyncRequest(Protocol):
    """What the store reads of a node's sync (`Store.sync`): its own type, not the wire's.

    The coordinator passes the `SyncIn` it validated, which has these fields; the simulator,
    a bench or a test may pass any object that has them. The reports stay wire `TaskReport`s:
    each is kept on its attempt as the wire's JSON and read back as one when a verdict settles
    it and when the customer polls (store/verify.py, store/jobs.py: results_since), so the
    wire form is what the store stores."""

    @property
    def results(self) -> Sequence[TaskReport]: ...
    @property
    def renew(self) -> Sequence[int]: ...
    @property
    def release(self) -> Sequence[int]: ...
    @property
    def want(self) -> int: ...
    @property
    def slots_free(self) -> int: ...
    @property
    def serve_url(self) -> str | None: ...  # the node's chunk server (CDN)
    @property
    def stored(self) -> Sequence[str]: ...  # CDN shares it now holds ...
    @property
    def bad(self) -> Sequence[str]: ...  # ... that failed its checks ...
    @property
    def refused(self) -> Sequence[str]: ...  # ... over its quota
    @property
    def served(self) -> dict[str, int]: ...  # bytes served, per content


@dataclass
class SyncResult:
    acked: list[int]
    rejected: list[dict[str, Any]]
    lost: list[int]
    tasks: list[dict[str, Any]]
    store: list[dict[str, Any]] = field(default_factory=list)  # CDN shares to fetch
    drop: list[str] = field(default_factory=list)  # CDN shares to delete


class StoreBase:
    """Engine, transactions and caches; the parts of Store add the queries."""

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 15.0,
        schema: str | None = None,
        gone_after_s: float | None = None,
    ):
        self.url = url
        self.lease_seconds = lease_seconds
        # A node silent this long is gone: placement, verification, the CDN and waits stop
        # counting it (leases still expire after lease_seconds).
        self.gone_after_s = (
            default_gone_after_s(lease_seconds) if gone_after_s is None else gone_after_s
        )
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
        self.tally = events.Tally()  # events committed by this process (/metrics)
        # Told (seconds waiting for this process's write lock, seconds from the lock to the
        # commit) after every write transaction; /metrics keeps them as histograms.
        self.tx_timed: Callable[[float, float], None] | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def drop_schema(self) -> None:
        metadata.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Connection]:
        """One write transaction; on SQLite, writers in this process take turns.

        The job rows of the tasks it finished are locked and counted last, just before the
        commit, in ascending job id (`_number_finished`): every transaction takes its task
        rows first and its job rows after, so the two kinds never wait on each other in a
        circle (docs/architecture.md, Concurrency)."""
        asked = time.perf_counter()
        with self._write_lock:
            got = time.perf_counter()
            with self.engine.begin() as conn:
                conn.info[_FINISHED] = {}
                try:
                    yield conn
                    _number_finished(conn)
                finally:
                    conn.info.pop(_FINISHED, None)
                    noted = conn.info.pop(events.NOTES, None)
            done = time.perf_counter()
        timed = self.tx_timed
        if timed is not None:  # where a write's latency goes: waiting its turn, or in it
            timed(got - asked, done - got)
        self.tally.add(noted)  # reached only once the transaction committed (store/events.py)

    @contextlib.contextmanager
    def duty(self, name: str) -> Iterator[Connection | None]:
        """A transaction for a background duty that one coordinator at a time performs.

        On PostgreSQL the transaction takes `pg_try_advisory_xact_lock` on the duty's name:
        the process that gets it does the work, the others get None and skip this round. The
        lock ends with the transaction, so a leader that is killed frees it at once. The lock
        is keyed by the schema too: advisory locks are the whole database's, and two fogs in
        two schemas of one database must not take each other's turns. SQLite has one
        coordinator process: the duty is always its own."""
        with self.tx() as conn:
            if not self.is_sqlite:
                key = zlib.crc32(f"fogwheel duty {name}".encode())
                key -= (key >= 2**31) << 32  # the lock's second key is a signed int4
                if not conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(hashtext(current_schema()), :k)"),
                    {"k": key},
                ).scalar():
                    yield None
                    return
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn


class LostRace(Exception):
    """A row this transaction meant to change was changed by another one first: the whole
    transaction is given up and tried again (`retry_conflicts`)."""


def retry_conflicts(method: Callable[P, R]) -> Callable[P, R]:
    """Run a store method that opens one transaction again when PostgreSQL aborted it for a
    lost race (a deadlock or a serialization failure), a few times, after a short random
    pause. Safe because such a transaction changed nothing: it commits whole or not at all,
    and the method builds its answer afresh each time. The last line of defence behind the
    lock order: a node or a customer never gets a 500 because two transactions collided."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for n in range(1, CONFLICT_TRIES + 1):
            try:
                return method(*args, **kwargs)
            except (DBAPIError, LostRace) as e:
                state = "lost" if isinstance(e, LostRace) else getattr(e.orig, "sqlstate", None)
                if state not in CONFLICT_STATES or n == CONFLICT_TRIES:
                    raise
                CONFLICTS[state] = CONFLICTS.get(state, 0) + 1
                log.info(
                    "%s lost a race (%s), try %d of %d: %s",
                    method.__name__,
                    state,
                    n,
                    CONFLICT_TRIES,
                    str(getattr(e, "orig", e)).replace("\n", " | ")[:600],
                    extra={"statement": getattr(e, "statement", None)},
                )
                time.sleep(random.uniform(0, 0.02 * 2**n))
        raise AssertionError("unreachable")

    return run


CONFLICTS: dict[str, int] = {}  # transactions tried again, by SQLSTATE (for tests and benches)


def _note_finished(c: Connection, job_id: int, finished: Sequence[tuple[int, bool]]) -> None:
    """Tasks that this transaction moved to a terminal state (id, failed): numbered and counted
    on their job just before the commit, or at once outside `StoreBase.tx`."""
    pending: dict[int, list[tuple[int, bool]]] | None = c.info.get(_FINISHED)
    if pending is None:
        _count_finished(c, job_id, finished)
    else:
        pending.setdefault(job_id, []).extend(finished)


def _number_finished(c: Connection) -> None:
    """Count and number the tasks this transaction finished, jobs in ascending id."""
    pending: dict[int, list[tuple[int, bool]]] = c.info.get(_FINISHED) or {}
    for job_id in sorted(pending):
        _count_finished(c, job_id, pending[job_id])
    pending.clear()


# The statements a busy sync runs, built once: building and caching a statement costs SQLAlchemy
# about four times what executing a built one does (~200 against ~50 microseconds on SQLite),
# and a sync that reports and leases runs about twenty (docs/scale.md, "What a sync costs").
# An IN list is an expanding parameter, so one built statement serves every length.
_COUNT_FINISHED = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"))
    .values(
        finished=jobs.c.finished + bindparam("b_n", type_=Integer),
        failed=jobs.c.failed + bindparam("b_failed", type_=Integer),
    )
    .returning(jobs.c.finished)
)
_FINISH_SEQ = (
    update(tasks).where(tasks.c.id == bindparam("b_id")).values(finish_seq=bindparam("seq"))
)
LOCK_TASKS = {
    skip: select(tasks.c.id)
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(tasks.c.id)
    .with_for_update(skip_locked=skip)
    for skip in (False, True)
}


def _count_finished(c: Connection, job_id: int, finished: Sequence[tuple[int, bool]]) -> None:
    """Add tasks to their job's counters and give each its `finish_seq`, under the job row's
    lock: the numbers of one job are handed out in commit order, so a customer polling
    `finish_seq > cursor` never misses one that commits later with a smaller number."""
    if not finished:
        return
    items = sorted(finished)
    failed = sum(f for _, f in items)
    last = c.execute(
        _COUNT_FINISHED, {"b_job": job_id, "b_n": len(items), "b_failed": failed}
    ).scalar_one()
    first = last - len(items) + 1
    c.execute(_FINISH_SEQ, [{"b_id": tid, "seq": first + k} for k, (tid, _) in enumerate(items)])


def lock_tasks(c: Connection, ids: Sequence[int], *, skip_locked: bool = False) -> list[int]:
    """Lock these task rows in ascending id (PostgreSQL; SQLite has one writer): the one
    order every transaction takes task rows in. Returns the ids locked (with `skip_locked`,
    those another transaction holds are left out)."""
    if not ids:
        return []
    if c.dialect.name == "sqlite":
        return sorted(set(ids))
    return list(c.execute(LOCK_TASKS[skip_locked], {"ids": sorted(set(ids))}).scalars())


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
    open_: ColumnElement[bool] = attempts.c.outcome.is_(None)
    if outcome == "done":
        open_ = open_ | (attempts.c.outcome == "lost")
    if outcome == "superseded":  # it ran to the end after all, though nobody needed it
        open_ = open_ | (attempts.c.outcome == "cancelled")
    c.execute(
        update(attempts)
        .where(attempts.c.task_id.in_(ids), attempts.c.node_id == node_id, open_)
        .values(outcome=outcome, ended_at=now)
    )


def _job_out(r: Any) -> dict[str, Any]:
    if r["cancelled"]:
        state = "cancelled"
    elif r["finished"] >= r["total"]:
        state = "failed" if r["failed"] else "done"  # a job whose tasks failed is not done
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
        "deadline": r.get("deadline"),  # every answer about a job says it (cancel's too)
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
