"""Routes that register and list a customer's program images (docs/images.md).

    POST /v1/images   register an image whose manifest and layers are uploaded blobs of yours
    GET  /v1/images   your images, newest first

The manifest is read from the blob store (at most 64 KiB) and must be in the one canonical
form core/images.py writes, so an image has exactly one id; every layer must be a whole blob
of the customer's, of the size the manifest says. Anything else is a 422 that says what to do.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query
from pydantic import Field

from fogwheel.blobs import BlobStore
from fogwheel.blobs.store import CorruptBlob
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.core import images as core
from fogwheel.protocol import JobIn, Model, Problem, Sha256
from fogwheel.store import Principal, Store
from fogwheel.store import images as image_rows

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "The manifest or a layer is missing or not valid"},
}


class ImageIn(Model):
    """An image to register: the SHA-256 of its manifest blob (uploaded first, as its layers)."""

    manifest: Sha256


class ImageOut(Model):
    """A registered image: `id` (its manifest's SHA-256) is what `--image` and tasks name."""

    id: str
    arch: str = Field(description="x86_64, aarch64, ...: it runs only on nodes of this one")
    size: int = Field(description="bytes of its layer blobs (what a node downloads)")
    unpacked: int = Field(description="bytes once unpacked (what a node's quota counts)")
    layers: list[str] = Field(description="the SHA-256 of each layer, lowest first")
    created: float


class ImageList(Model):
    images: list[ImageOut]


def build_image_routes(
    app: FastAPI | APIRouter, store: Store, auth: Authenticator, blobs: BlobStore
) -> None:
    """Add the image routes to `app`."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["images"])
    customer = caller(auth, "customer")

    @v1.post("/images", status_code=201)
    def register_image(body: ImageIn, who: Principal = customer) -> ImageOut:
        """Register an image pushed as blobs: its manifest (core/images.py's canonical JSON)
        and every layer it names must be uploaded blobs of yours. Idempotent."""
        m = _manifest(store, blobs, who.id, body.manifest)
        with store.tx() as c:
            return ImageOut(**image_rows.add_image(c, who.id, m, time.time()))

    @v1.get("/images")
    def list_images(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, who: Principal = customer
    ) -> ImageList:
        """Your images, newest first."""
        with store.read() as c:
            rows = image_rows.list_images(c, who.id, limit)
        return ImageList(images=[ImageOut(**r) for r in rows])

    app.include_router(v1)


def check_task_images(store: Store, customer_id: str, job: JobIn) -> None:
    """A 422 unless every image the job's tasks name is a registered image of the customer's,
    and the job runs commands (a Python job's worker needs its node's own Python)."""
    named = {t.image for t in job.tasks if t.image}
    if not named:
        return
    if job.kind != "command":
        raise HTTPException(422, "tasks: only command jobs run in an image (kind 'command')")
    with store.read() as c:
        for image_id in sorted(named):
            if image_rows.get_image(c, customer_id, image_id) is None:
                raise HTTPException(
                    422,
                    f"image {image_id[:12]}… is not yours or not pushed: "
                    "push it with `fogwheel images push DIR|TAR|OCI-DIR`",
                )


def _manifest(store: Store, blobs: BlobStore, customer_id: str, sha: str) -> core.Manifest:
    """The checked manifest `sha` of the customer's, or a 422 that says what is wrong."""
    if not store.owned_blobs(customer_id, {sha}):
        raise HTTPException(
            422, f"manifest {sha[:12]}… is not uploaded: PUT it to /v1/blobs/{sha} first"
        )
    try:
        with blobs.open_verified(sha) as f:
            raw = f.read(core.MAX_MANIFEST_BYTES + 1)
    except (KeyError, CorruptBlob):
        raise HTTPException(422, f"manifest {sha[:12]}… cannot be read: upload it again") from None
    try:
        m = core.parse_manifest(raw)
    except core.ImageError as e:
        raise HTTPException(422, f"manifest {sha[:12]}…: {e}") from None
    layers = {x.sha for x in m.layers}
    missing = layers - store.owned_blobs(customer_id, layers)
    if missing:
        first = sorted(missing)[0]
        raise HTTPException(422, f"layer {first[:12]}… is not uploaded: PUT it to /v1/blobs first")
    for x in m.layers:
        try:
            with blobs.open_verified(x.sha) as f:
                size = blobs.size_of(f)
        except (KeyError, CorruptBlob):
            raise HTTPException(
                422, f"layer {x.sha[:12]}… cannot be read: upload it again"
            ) from None
        if size != x.size:
            raise HTTPException(
                422, f"layer {x.sha[:12]}… is {size} bytes, the manifest says {x.size}"
            )
    return m
