"""Apps in the store: a customer's names, their immutable versions, and which version a lease binds.

An app row is a customer's name (unique per customer, never seen by another) with a kind that
every version shares and a `current` version. A version row holds the canonical manifest
(core/apps.py), the coordinator's signature of it, what a node needs to run it (an image's
architecture) and, in `app_version_blobs`, every blob a node running it may fetch.

The version is bound when a task is LEASED, not when it is submitted: `bind_versions` asks
`version_for(c, app_id, node_id)` for each app task a node is about to get (today: the app's
current version; issue #15's roll-outs hook it to give a share of the devices a new version),
and records the answer on the task and on its attempt (`tasks.app_version`,
`attempts.app_version`), so outcomes can be counted per version (`outcomes`). Copies of one
task that are compared with each other (replicas, backups) run the version their siblings run.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import apps as core
from fogwheel.core.tasks import TaskState
from fogwheel.store import rollouts
from fogwheel.store.schema import app_version_blobs, app_versions, apps, attempts, tasks

VERSIONS_CACHED = 1000
_versions: dict[tuple[str, str], Version] = {}


class AppConflict(ValueError):
    """A publish that contradicts what the app already is (its kind, a label taken)."""


@dataclass(frozen=True)
class Version:
    """One published version, as a lease needs it."""

    app_id: str
    name: str
    id: str
    manifest: core.Manifest
    text: str  # the canonical manifest, as signed
    signature: str
    needs: frozenset[str]

    def lease_part(self) -> dict[str, Any]:
        """What a lease carries of it (signed with the lease; the node checks it)."""
        return {
            "app": self.app_id,
            "name": self.name,
            "version": self.id,
            "manifest": self.text,
            "signature": self.signature,
        }


# -- the hook for roll-outs ------------------------------------------------------------------


def version_for(c: Connection, app_id: str, node_id: str) -> str | None:
    """The version of app `app_id` that a task leased to `node_id` runs: the app's current one.

    The one place a lease's version is chosen (issue #15's canary roll-outs give a share of
    the nodes another here); None when the app has no current version."""
    canary = rollouts.app_version_for(c, app_id, node_id)  # a roll-out runs (docs/rollouts.md)
    if canary is not None:
        return canary
    current: str | None = c.execute(select(apps.c.current).where(apps.c.id == app_id)).scalar()
    return current


# -- writing ---------------------------------------------------------------------------------


def ensure_app(c: Connection, customer_id: str, name: str, kind: str, now: float) -> str:
    """The id of the customer's app `name`, made now if it is new; AppConflict when it is of
    another kind than `kind`."""
    core.check_name(name)
    row = c.execute(
        select(apps.c.id, apps.c.kind).where(apps.c.customer_id == customer_id, apps.c.name == name)
    ).first()
    if row is None:
        dialect = sqlite if c.dialect.name == "sqlite" else postgresql
        new_id = "app_" + secrets.token_hex(8)
        c.execute(
            dialect.insert(apps)
            .values(id=new_id, customer_id=customer_id, name=name, kind=kind, created_at=now)
            .on_conflict_do_nothing(index_elements=["customer_id", "name"])
        )
        row = c.execute(
            select(apps.c.id, apps.c.kind).where(
                apps.c.customer_id == customer_id, apps.c.name == name
            )
        ).one()
    if row.kind != kind:
        raise AppConflict(
            f"app {name} runs {row.kind} versions: a {kind} version is another app "
            "(publish it under another name)"
        )
    return str(row.id)


def add_version(
    c: Connection,
    app_id: str,
    m: core.Manifest,
    signature: str,
    label: str | None,
    blobs: Mapping[str, int],
    needs: set[str],
    now: float,
) -> tuple[dict[str, Any], bool]:
    """Record version `m` of the app (the same bundle again is the same version: no-op) and
    make it current when the app has none; (the version as shown, whether it is new)."""
    vid = m.version_id()
    have = c.execute(
        select(app_versions.c.label).where(
            app_versions.c.app_id == app_id, app_versions.c.id == vid
        )
    ).first()
    if have is not None:
        if label is not None and label != have.label:
            raise AppConflict(
                f"this bundle is published already, as version {have.label} ({vid[:12]}): "
                "a version's label does not change"
            )
        return _version_out(c, app_id, vid), False
    seq = int(
        c.execute(
            select(func.coalesce(func.max(app_versions.c.seq), 0)).where(
                app_versions.c.app_id == app_id
            )
        ).scalar_one()
    )
    label = core.check_label(label) if label is not None else f"v{seq + 1}"
    taken = c.execute(
        select(app_versions.c.id).where(
            app_versions.c.app_id == app_id, app_versions.c.label == label
        )
    ).first()
    if taken is not None:
        raise AppConflict(
            f"version label {label} is taken by {taken.id[:12]}: choose another --version"
        )
    c.execute(
        app_versions.insert().values(
            app_id=app_id,
            id=vid,
            label=label,
            seq=seq + 1,
            manifest=m.canonical().decode(),
            signature=signature,
            needs=json.dumps(sorted(needs)),
            created_at=now,
        )
    )
    dialect = sqlite if c.dialect.name == "sqlite" else postgresql
    rows = [{"version": vid, "sha": s, "size": int(n)} for s, n in sorted(blobs.items())]
    if rows:
        c.execute(
            dialect.insert(app_version_blobs).on_conflict_do_nothing(
                index_elements=["version", "sha"]
            ),
            rows,
        )
    c.execute(update(apps).where(apps.c.id == app_id, apps.c.current.is_(None)).values(current=vid))
    return _version_out(c, app_id, vid), True


def set_current(c: Connection, app_id: str, ref: str) -> dict[str, Any] | None:
    """Make the version named `ref` (its label, its id, or 8+ leading hex digits of the id)
    current; the version, or None when the app has no such version."""
    vid = resolve_version(c, app_id, ref)
    if vid is None:
        return None
    c.execute(update(apps).where(apps.c.id == app_id).values(current=vid))
    return _version_out(c, app_id, vid)


# -- reading ---------------------------------------------------------------------------------


def app_id_of(c: Connection, customer_id: str, name: str) -> str | None:
    """The id of the customer's app `name`; None when the customer has none of that name."""
    found: str | None = c.execute(
        select(apps.c.id).where(apps.c.customer_id == customer_id, apps.c.name == name)
    ).scalar()
    return found


def resolve_version(c: Connection, app_id: str, ref: str) -> str | None:
    """The id of the app's version named `ref` (a label, an id, or a unique id prefix)."""
    rows = c.execute(
        select(app_versions.c.id, app_versions.c.label).where(app_versions.c.app_id == app_id)
    ).all()
    for r in rows:
        if ref in (r.label, r.id):
            return str(r.id)
    if len(ref) >= 8:
        starts = [r.id for r in rows if r.id.startswith(ref.lower())]
        if len(starts) == 1:
            return str(starts[0])
    return None


def get_app(c: Connection, customer_id: str, name: str) -> dict[str, Any] | None:
    """The customer's app `name` with its versions, oldest first; None when there is none."""
    r = (
        c.execute(select(apps).where(apps.c.customer_id == customer_id, apps.c.name == name))
        .mappings()
        .first()
    )
    if r is None:
        return None
    vids = c.execute(
        select(app_versions.c.id)
        .where(app_versions.c.app_id == r["id"])
        .order_by(app_versions.c.seq)
    ).scalars()
    counts = outcomes(c, r["id"])
    versions = []
    for vid in vids:
        v = _version_out(c, r["id"], vid)
        v["outcomes"] = counts.get(vid, {})
        versions.append(v)
    return {**_app_out(r), "versions": versions}


def list_apps(c: Connection, customer_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The customer's apps, by name."""
    q = select(apps).where(apps.c.customer_id == customer_id).order_by(apps.c.name).limit(limit)
    out = []
    for r in c.execute(q).mappings().all():
        n = c.execute(
            select(func.count()).select_from(app_versions).where(app_versions.c.app_id == r["id"])
        ).scalar_one()
        out.append({**_app_out(r), "version_count": int(n)})
    return out


def version(c: Connection, app_id: str, vid: str) -> Version | None:
    """Version `vid` of app `app_id` (immutable: read once per process)."""
    key = (app_id, vid)
    v = _versions.get(key)
    if v is None:
        r = c.execute(
            select(app_versions, apps.c.name)
            .join(apps, apps.c.id == app_versions.c.app_id)
            .where(app_versions.c.app_id == app_id, app_versions.c.id == vid)
        ).first()
        if r is None:
            return None
        m = core.parse_manifest(r.manifest.encode())
        v = Version(app_id, r.name, vid, m, r.manifest, r.signature, frozenset(json.loads(r.needs)))
        if len(_versions) >= VERSIONS_CACHED:
            _versions.clear()
        _versions[key] = v
    return v


def outcomes(c: Connection, app_id: str) -> dict[str, dict[str, int]]:
    """Attempts of the app's tasks by the version they ran and how they ended (`running` for
    those still out): what a roll-out compares."""
    q = (
        select(attempts.c.app_version, attempts.c.outcome, func.count())
        .join(tasks, tasks.c.id == attempts.c.task_id)
        .where(attempts.c.app_version.in_(_version_ids(c, app_id)))
        .group_by(attempts.c.app_version, attempts.c.outcome)
    )
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for vid, outcome, n in c.execute(q).all():
        out[vid][outcome or "running"] = int(n)
    return dict(out)


# -- leasing ---------------------------------------------------------------------------------


def bind_versions(c: Connection, node_id: str, app_of: Mapping[int, str]) -> dict[int, Version]:
    """For each task (id -> its job's app id) that `node_id` may be leased, the version it runs
    there: its siblings' (replicas and backups of one task are compared: they run one version),
    else `version_for`. A task whose app has no version is left out (it cannot run)."""
    if not app_of:
        return {}
    groups = dict(
        c.execute(
            select(tasks.c.id, func.coalesce(tasks.c.replica_of, tasks.c.id)).where(
                tasks.c.id.in_(list(app_of))
            )
        ).all()
    )
    pinned: dict[int, list[tuple[int, str]]] = defaultdict(list)
    gids = set(groups.values())
    for gid, tid, vid in c.execute(
        select(func.coalesce(tasks.c.replica_of, tasks.c.id), tasks.c.id, attempts.c.app_version)
        .join(attempts, attempts.c.task_id == tasks.c.id)
        .where(
            tasks.c.id.in_(gids) | tasks.c.replica_of.in_(gids),
            attempts.c.app_version.is_not(None),
            attempts.c.outcome.is_(None) | attempts.c.digest.is_not(None),
        )
        .order_by(attempts.c.id)
    ).all():
        pinned[gid].append((tid, vid))
    chosen: dict[str, str | None] = {}
    out: dict[int, Version] = {}
    for tid, app_id in app_of.items():
        sibling = next((v for t, v in pinned.get(groups.get(tid, tid), ()) if t != tid), None)
        if sibling is None:
            if app_id not in chosen:
                chosen[app_id] = version_for(c, app_id, node_id)
            sibling = chosen[app_id]
        v = version(c, app_id, sibling) if sibling else None
        if v is not None:
            out[tid] = v
    return out


def node_may_read(c: Connection, node_id: str, sha: str) -> bool:
    """A node may fetch a blob of the app version a task it holds was bound to."""
    held = select(tasks.c.app_version).where(
        tasks.c.node_id == node_id,
        tasks.c.state == TaskState.LEASED,
        tasks.c.app_version.is_not(None),
    )
    found = c.execute(
        select(app_version_blobs.c.version)
        .where(app_version_blobs.c.sha == sha, app_version_blobs.c.version.in_(held))
        .limit(1)
    ).first()
    return found is not None


def _version_ids(c: Connection, app_id: str) -> list[str]:
    return list(
        c.execute(select(app_versions.c.id).where(app_versions.c.app_id == app_id)).scalars()
    )


def _version_out(c: Connection, app_id: str, vid: str) -> dict[str, Any]:
    r = (
        c.execute(
            select(app_versions, apps.c.current)
            .join(apps, apps.c.id == app_versions.c.app_id)
            .where(app_versions.c.app_id == app_id, app_versions.c.id == vid)
        )
        .mappings()
        .one()
    )
    m = json.loads(r["manifest"])
    return {
        "id": vid,
        "label": r["label"],
        "seq": int(r["seq"]),
        "current": r["current"] == vid,
        "entry": m["entry"],
        "command": m["command"],
        "code": m["code"],
        "env": m["env"],
        "image": m["image"],
        "signature": r["signature"],
        "created": float(r["created_at"]),
    }


def _app_out(r: Any) -> dict[str, Any]:
    return {
        "id": r["id"],
        "name": r["name"],
        "kind": r["kind"],
        "current": r["current"],
        "created": float(r["created_at"]),
    }


def lease_fields(v: Version, spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a lease of a task of this version says (over the job's own fields): the code
    zip as an input file, the version's command line before the task's own arguments, its
    environment or image, and the version itself for the node to check (node/apps.py)."""
    m = v.manifest
    inputs = dict(spec.get("inputs") or {})
    if m.code is not None:
        inputs[core.CODE_FILE] = {"sha": m.code.sha, "size": m.code.size}
    return {
        "fn": None,
        "command": core.command_for(m, spec.get("command")),
        "inputs": inputs,
        "env": m.env,
        "image": m.image,
        "app": v.lease_part(),
    }
