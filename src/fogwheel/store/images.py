"""Program images registered by customers, and what a task that runs in one reads and needs.

An image is pushed as blobs (its layers, then its manifest) and registered by its id, the
manifest's SHA-256 (coordinator/image_routes.py checks the manifest with core/images.py and
that every blob is the customer's). A command task naming an image then lists the manifest
and the layers as blobs it reads (task_blobs): its node may fetch them, and locality prefers
a node that fetched them already. It needs the image's architecture (`arch:x86_64`), which
each node advertises, so no image is ever placed on a node of another architecture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import images as core
from fogwheel.store.schema import blob_holders, images, task_blobs

NEED = "images"  # the capability of nodes that run images (node/images.py: IMAGES)


def add_image(c: Connection, customer_id: str, m: core.Manifest, now: float) -> dict[str, Any]:
    """Register image `m` for the customer (a second push of the same image is a no-op)."""
    row = {
        "customer_id": customer_id,
        "id": m.image_id(),
        "arch": m.arch,
        "size": m.size,
        "unpacked": m.unpacked,
        "layers": json.dumps([[x.sha, x.size] for x in m.layers]),
        "created_at": now,
    }
    dialect = sqlite if c.dialect.name == "sqlite" else postgresql
    insert = dialect.insert(images).values(row)
    c.execute(insert.on_conflict_do_nothing(index_elements=["customer_id", "id"]))
    found = get_image(c, customer_id, m.image_id())
    assert found is not None
    return found


def get_image(c: Connection, customer_id: str, image_id: str) -> dict[str, Any] | None:
    """The customer's image `image_id`, or None."""
    where = (images.c.customer_id == customer_id) & (images.c.id == image_id)
    r = c.execute(select(images).where(where)).mappings().first()
    return None if r is None else _image_out(r)


def list_images(c: Connection, customer_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The customer's images, newest first."""
    q = (
        select(images)
        .where(images.c.customer_id == customer_id)
        .order_by(images.c.created_at.desc(), images.c.id)
        .limit(limit)
    )
    return [_image_out(r) for r in c.execute(q).mappings().all()]


def image_refs(
    c: Connection, customer_id: str, image_id: str
) -> tuple[set[str], dict[str, int]] | None:
    """What a task in this image needs (its architecture, `arch:x86_64`, and `images`: a node
    whose sandbox runs images) and reads (the manifest and every layer, with their sizes);
    None when the customer has no such image."""
    r = c.execute(
        select(images.c.arch, images.c.layers).where(
            images.c.customer_id == customer_id, images.c.id == image_id
        )
    ).first()
    if r is None:
        return None
    blobs = {sha: int(size) for sha, size in json.loads(r.layers)}
    blobs[image_id] = 1  # the manifest: small, and held where the image was fetched
    return {core.arch_need(r.arch), NEED}, blobs


def images_here(c: Connection, node_id: str, task_ids: Sequence[int]) -> set[int]:
    """Which of these tasks run in an image whose manifest `node_id` fetched (it has, or had,
    the image unpacked: placement says so in its reason)."""
    if not task_ids:
        return set()
    q = (
        select(task_blobs.c.task_id)
        .join(images, images.c.id == task_blobs.c.sha)
        .join(blob_holders, blob_holders.c.sha == task_blobs.c.sha)
        .where(task_blobs.c.task_id.in_(list(task_ids)), blob_holders.c.node_id == node_id)
        .distinct()
    )
    return set(c.execute(q).scalars())


def _image_out(r: Any) -> dict[str, Any]:
    return {
        "id": r["id"],
        "arch": r["arch"],
        "size": int(r["size"]),
        "unpacked": int(r["unpacked"]),
        "layers": [sha for sha, _ in json.loads(r["layers"])],
        "created": float(r["created_at"]),
    }
