"""The store's foundation: the engine, transactions, and the row helpers its parts share."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, update

from fogwheel.core import scheduler
from fogwheel.core.tasks import Task, TaskState
from fogwheel.store.schema import attempts, metadata, tasks

NODE_GONE_AFTER_LEASES = 3  # a node silent for this many lease periods is marked gone
RETRYABLE = {"crash", "lost", "input"}  # error kinds that are the device's fault, not the task's
_NO_NEEDS: frozenset[str] = frozenset()


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
