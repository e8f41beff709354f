"""A job's Python environment checked at submission: its lock read, parsed and registered.

The lock is the customer's own blob; the coordinator reads it (bounded: core/envlock.py) so
that placement knows which devices can install it before a task is leased, and so that a lock
that is malformed, or names wheels the customer never uploaded, is refused with a 422 that says
what to do instead of failing on every device (docs/envs.md).
"""

from __future__ import annotations

import time

from fastapi import HTTPException

from fogwheel.blobs import BlobStore
from fogwheel.blobs.store import CorruptBlob
from fogwheel.core import envlock
from fogwheel.protocol import JobIn
from fogwheel.store import Store
from fogwheel.store.envs import EnvRefused, register_env


def check_env(job: JobIn, customer_id: str, store: Store, blobs: BlobStore) -> None:
    """Refuse (422) a job whose `env` cannot be used; register its lock otherwise."""
    if job.env is None:
        return
    if job.kind != "python":
        raise HTTPException(422, "env: only a python job runs in a Python environment")
    sha = job.env
    if not store.owned_blobs(customer_id, {sha}):
        raise HTTPException(
            422, f"env: the environment lock {sha} is not uploaded: PUT it to /v1/blobs/{sha} first"
        )
    try:
        with blobs.open_verified(sha) as f:
            data = f.read(envlock.MAX_LOCK_BYTES + 1)
    except (KeyError, CorruptBlob):
        raise HTTPException(
            422, f"env: the environment lock {sha} is not readable here: upload it again"
        ) from None
    try:
        lock = envlock.parse(data)
    except envlock.LockError as e:
        raise HTTPException(422, f"env: {e}") from None
    try:
        register_env(store, customer_id, lock, time.time())
    except EnvRefused as e:
        raise HTTPException(422, str(e)) from None
