"""Scrape-only keys: a Prometheus server's credential, which reads /metrics and nothing else.

A metrics key is a principal of kind `metrics` (`fwm_…`): like every key only its SHA-256 is
kept (store/accounts.py), and revoking deletes its row, so it gets 401 from then on (the
coordinator's authenticator forgets it at once here, within 10 s on other processes).
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from fogwheel.store.base import StoreBase, hash_secret, new_secret
from fogwheel.store.schema import principals

KIND = "metrics"
PREFIX = "fwm"


def create_metrics_key(store: StoreBase, name: str, now: float) -> tuple[str, str]:
    """A new metrics key: (its id `m-…`, the key itself, shown once)."""
    key_id = "m-" + secrets.token_hex(4)
    key = new_secret(PREFIX)
    with store.tx() as c:
        c.execute(
            principals.insert().values(
                secret_hash=hash_secret(key), kind=KIND, id=key_id, name=name, created_at=now
            )
        )
    return key_id, key


def list_metrics_keys(store: StoreBase) -> list[dict[str, Any]]:
    """Every live metrics key's id, name and creation time (never the key)."""
    with store.read() as c:
        rows = c.execute(
            select(principals.c.id, principals.c.name, principals.c.created_at)
            .where(principals.c.kind == KIND)
            .order_by(principals.c.created_at)
        ).all()
    return [{"id": r.id, "name": r.name, "created_at": r.created_at} for r in rows]


def revoke_metrics_key(store: StoreBase, key_id: str) -> bool:
    """Revoke the metrics key `key_id`; False when there is none."""
    with store.tx() as c:
        res = c.execute(
            principals.delete().where(principals.c.kind == KIND, principals.c.id == key_id)
        )
        return bool(res.rowcount)
