"""Python environments in the store: the locks jobs name, which nodes hold them built, and
whether a node's platform can install one (docs/envs.md).

A lock is registered when a job first names it (its bytes checked by core/envlock.py, its
wheels the customer's own blobs), as a row of `env_locks` and one `env_wheels` row per wheel:
a node that holds a task of a job naming the lock may then fetch those wheels. A node tells in
its sync which locks it holds built (`SyncIn.envs`) and which platform its Python installs for
(`env_platform`); held locks become `blob_holders` rows sized by the lock's wheels, so that
placement's locality (core/scheduler.py) prefers their holders as it prefers the holders of a
task's input. Locks are content-addressed and never change, so a process keeps every one it
has read (bounded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import envlock
from fogwheel.store.base import StoreBase
from fogwheel.store.schema import blob_holders, blob_owners, env_locks, env_wheels, nodes

LOCKS_CACHED = 1000
_locks: dict[str, envlock.Lock] = {}


class EnvRefused(ValueError):
    """A job's environment cannot be used: the sentence says what to upload or fix."""


def register_env(store: StoreBase, customer_id: str, lock: envlock.Lock, now: float) -> None:
    """Record `lock` (already parsed) for the customer's jobs; EnvRefused when one of its
    wheels is not a blob the customer uploaded."""
    shas = {w.sha256 for w in lock.wheels}
    with store.tx() as c:
        owned = set(
            c.execute(
                select(blob_owners.c.sha).where(
                    blob_owners.c.customer_id == customer_id, blob_owners.c.sha.in_(shas)
                )
            ).scalars()
        )
        missing = sorted(w.file for w in lock.wheels if w.sha256 not in owned)
        if missing:
            raise EnvRefused(
                f"env: the environment's wheel {missing[0]} is not uploaded: PUT it to "
                "/v1/blobs/<sha> first (fogwheel.Env uploads every wheel it resolves)"
            )
        sha = lock.sha
        if c.execute(select(env_locks.c.sha).where(env_locks.c.sha == sha)).first():
            return
        insert = sqlite.insert if store.is_sqlite else postgresql.insert
        c.execute(
            insert(env_locks)
            .values(sha=sha, body=lock.canonical().decode(), size=lock.size, created_at=now)
            .on_conflict_do_nothing(index_elements=["sha"])
        )
        c.execute(
            insert(env_wheels).on_conflict_do_nothing(index_elements=["lock", "sha"]),
            [{"lock": sha, "sha": s} for s in sorted(shas)],
        )


def lock_of(c: Connection, sha: str) -> envlock.Lock | None:
    """The registered lock `sha`, read once per process."""
    lock = _locks.get(sha)
    if lock is None:
        body = c.execute(select(env_locks.c.body).where(env_locks.c.sha == sha)).scalar()
        if body is None:
            return None
        lock = envlock.parse(body.encode())
        if len(_locks) >= LOCKS_CACHED:
            _locks.clear()
        _locks[sha] = lock
    return lock


def unfit_reason(c: Connection, lock_sha: str, platform: str | None) -> str | None:
    """Why a node that advertised `platform` cannot install environment `lock_sha`; None
    when it can."""
    lock = lock_of(c, lock_sha)
    if lock is None:
        return f"environment {lock_sha[:12]} is not registered with this coordinator"
    return envlock.fit_reason(lock, platform or "")


def env_size(c: Connection, lock_sha: str) -> int:
    lock = lock_of(c, lock_sha)
    return lock.size if lock is not None else 0


def note_node_envs(
    c: Connection,
    node_id: str,
    held: Sequence[str] | None,
    platform: str | None,
    *,
    is_sqlite: bool,
) -> None:
    """What a node said of its environments: its platform, and the locks it holds built
    (replacing what it said before; only registered locks count)."""
    values: dict[str, Any] = {}
    if platform is not None:
        values["env_platform"] = platform
    if held is not None:
        before = c.execute(select(nodes.c.envs).where(nodes.c.id == node_id)).scalar()
        old = set(json.loads(before)) if before else set()
        known = dict(
            c.execute(
                select(env_locks.c.sha, env_locks.c.size).where(env_locks.c.sha.in_(set(held)))
            ).all()
        )
        now_held = sorted(known)
        gone = old - set(now_held)
        if gone:
            c.execute(
                delete(blob_holders).where(
                    blob_holders.c.node_id == node_id, blob_holders.c.sha.in_(gone)
                )
            )
        if now_held:
            insert = (sqlite.insert if is_sqlite else postgresql.insert)(blob_holders)
            rows = [{"sha": s, "node_id": node_id, "size": int(known[s])} for s in now_held]
            c.execute(
                insert.on_conflict_do_update(
                    index_elements=["sha", "node_id"], set_={"size": insert.excluded.size}
                ),
                rows,
            )
        values["envs"] = json.dumps(now_held)
    if values:
        c.execute(update(nodes).where(nodes.c.id == node_id).values(**values))


def node_envs(c: Connection, node_id: str) -> tuple[str | None, frozenset[str]]:
    """A node's advertised platform and the locks it holds built."""
    row = c.execute(select(nodes.c.env_platform, nodes.c.envs).where(nodes.c.id == node_id)).one()
    return row.env_platform, frozenset(json.loads(row.envs) if row.envs else ())


def wheel_locks(c: Connection, sha: str) -> list[str]:
    """The registered locks that name blob `sha` as a wheel (a node may fetch it for them)."""
    return list(c.execute(select(env_wheels.c.lock).where(env_wheels.c.sha == sha)).scalars())


def env_progress(c: Connection, customer_id: str, job_id: int) -> dict[str, Any] | None:
    """Where a job's Python environment stands on the devices running it: how many nodes
    hold its leased tasks (`nodes`) and how many of those have not said they hold the
    environment built (`preparing`: downloading and installing it now). None when the job
    is not the customer's."""
    from fogwheel.core.tasks import TaskState
    from fogwheel.store.schema import jobs, tasks

    env = c.execute(
        select(jobs.c.env).where(jobs.c.id == job_id, jobs.c.customer_id == customer_id)
    ).first()
    if env is None:
        return None
    held_by = c.execute(
        select(nodes.c.id, nodes.c.envs).where(
            nodes.c.id.in_(
                select(tasks.c.node_id).where(
                    tasks.c.job_id == job_id, tasks.c.state == TaskState.LEASED
                )
            )
        )
    ).all()
    sha = env.env
    preparing = 0 if sha is None else sum(sha not in json.loads(r.envs or "[]") for r in held_by)
    return {"env": sha, "nodes": len(held_by), "preparing": preparing}


def fleet_platforms(c: Connection, horizon: float) -> list[tuple[envlock.Platform, int]]:
    """The platforms the live fleet's Pythons install wheels for, each with how many devices
    run it (the nodes said so: `SyncIn.env_platform`), most devices first. What the SDK
    resolves an environment for when the customer names no platform (docs/envs.md)."""
    rows = c.execute(
        select(nodes.c.env_platform, func.count())
        .where(
            nodes.c.state == "up",
            nodes.c.last_seen >= horizon,
            ~nodes.c.quarantined,
            nodes.c.env_platform.is_not(None),
        )
        .group_by(nodes.c.env_platform)
    ).all()
    found = [(p, int(n)) for text, n in rows if (p := envlock.platform_of(text)) is not None]
    return sorted(found, key=lambda pn: (-pn[1], pn[0].describe()))
