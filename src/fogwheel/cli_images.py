"""`fogwheel images push|list`: program images that command tasks run in as `/`.

`push` builds the image's layers from a directory, a tarball or an OCI image layout
(image_build.py), uploads them with a progress bar (resumable, as `fogwheel blobs put`) and
prints the image id; `fogwheel run --image ID -- prog args` runs a command in it. docs/images.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from fogwheel.cli import ApiKeyOpt, CoordinatorOpt, _client, _fail, err
from fogwheel.cli_blobs import human_bytes, interruptible, transfer_bar
from fogwheel.cli_errors import explain
from fogwheel.core.images import ARCHITECTURES, ImageError
from fogwheel.errors import FogwheelError

images_app = typer.Typer(
    help="Program images: root filesystems that command tasks run in as / "
    "(push one, list yours; run in one with `fogwheel run --image ID -- prog args`).",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead.")]


@images_app.command("push")
def images_push(
    source: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="The root filesystem: a directory, a tarball (`docker export`, a debootstrap "
            "root tarred; plain, gzip, bzip2 or xz) or an OCI image layout directory "
            "(index.json, blobs/sha256/…).",
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            help="Its architecture (" + ", ".join(sorted(ARCHITECTURES)) + "; amd64 and arm64 "
            "are understood). Default: the OCI config's, else the root's programs', else "
            "this machine's. Tasks in it run only on nodes of this architecture."
        ),
    ] = None,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push a root filesystem as a program image; prints its id.

    Example: fogwheel images push ./rootfs && fogwheel run --image ID -- /bin/sh -c 'uname -a'
    """
    with _client(coordinator, api_key, 0) as client, transfer_bar(client):
        t0 = time.monotonic()
        try:
            with interruptible(f"push of {source}", "run the same command again to go on"):
                image = client.push_image(source, arch)
        except ImageError as e:
            raise _fail(f"{source}: {e}") from None
        except FogwheelError as e:
            raise _fail(f"{source}: {explain(e)}") from None
        except OSError as e:
            raise _fail(f"cannot read {source}: {e.strerror or e}") from None
    for note in image.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    err.print(
        f"image {image.id}: {image.arch}, {len(image.layers)} layer(s), "
        f"{human_bytes(image.size)} to download, {human_bytes(image.unpacked)} unpacked "
        f"({time.monotonic() - t0:.1f} s)",
        markup=False,
        highlight=False,
    )
    if as_json:
        typer.echo(json.dumps({"id": image.id, "arch": image.arch, "size": image.size}))
    else:
        typer.echo(image.id)


@images_app.command("list")
def images_list(
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your program images, newest first: ID, ARCH, SIZE (to download), UNPACKED."""
    with _client(coordinator, api_key, 0) as client:
        try:
            found = client.images()
        except FogwheelError as e:
            raise _fail(explain(e)) from None
    if as_json:
        rows = [{"id": i.id, "arch": i.arch, "size": i.size, "unpacked": i.unpacked} for i in found]
        typer.echo(json.dumps(rows))
        return
    if not found:
        err.print("no images yet: push one with `fogwheel images push DIR|TAR|OCI-DIR`")
        return
    for i in found:
        typer.echo(f"{i.id}  {i.arch:8}  {human_bytes(i.size):>9}  {human_bytes(i.unpacked):>9}")


def register(app: typer.Typer) -> None:
    """Add `fogwheel images` to the app."""
    app.add_typer(images_app, name="images")
