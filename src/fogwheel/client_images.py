"""The SDK's side of program images: push a root filesystem, list what was pushed.

`Client.push_image(path)` builds the layers here (fogwheel/image_build.py), uploads each as a
blob (streamed and resumable, with the client's transfer progress), uploads the manifest and
registers it; the answer's `id` is what `Client.run(..., image=ID)` and `fogwheel run --image`
name. Nothing is registered unless every layer arrived whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fogwheel import image_build

if TYPE_CHECKING:
    from fogwheel.client import Client


@dataclass(frozen=True)
class Image:
    """A pushed image: `id` to run commands in, its architecture and sizes."""

    id: str
    arch: str
    size: int  # bytes of its layers (what a node downloads once)
    unpacked: int  # bytes once unpacked on a node
    layers: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())  # what push guessed (the architecture, say)


def push(client: Client, source: str | os.PathLike[str], arch: str | None = None) -> Image:
    """Build, upload and register the image at `source` (directory, tarball or OCI layout)."""
    built = image_build.build(source, arch)
    try:
        for layer in built.layers:
            client.upload(layer)
        manifest = client.put_blob(built.manifest.canonical(), upload=True)
        body = {"manifest": manifest.sha}
        out = client._request("POST", "/v1/images", json=body).json()
    finally:
        built.cleanup()
    return _image(out, tuple(built.notes))


def listed(client: Client, limit: int = 100) -> list[Image]:
    """The customer's images, newest first."""
    rows = client._request("GET", "/v1/images", params={"limit": limit}).json()["images"]
    return [_image(r) for r in rows]


def _image(r: dict[str, Any], notes: tuple[str, ...] = ()) -> Image:
    return Image(r["id"], r["arch"], r["size"], r["unpacked"], tuple(r["layers"]), notes)
