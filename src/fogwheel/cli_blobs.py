"""`fogwheel blobs put|get|ls`, and the large inputs of `fogwheel run -i`.

Large data lives on the coordinator as blobs named by their SHA-256. `put` streams files up
(hashed in one pass, then sent 1 MiB at a time, resumed where an interrupted upload stopped),
`get` streams one down into `FILE.part` (resumed likewise, checked, then renamed), `ls` lists
yours. A task input may name a blob: `fogwheel run -i data.bin=blob:SHA …`. The protocol is
in docs/blobs.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fogwheel.cli import ApiKeyOpt, CoordinatorOpt, _client, _fail, err
from fogwheel.cli_errors import explain
from fogwheel.errors import FogwheelError

if TYPE_CHECKING:
    from fogwheel.client import Blob, Client

blobs_app = typer.Typer(
    help="Your blobs: large files kept on the coordinator, named by their SHA-256 "
    "(upload, download, list; pass one to a task with -i NAME=blob:SHA).",
    no_args_is_help=True,
)
_AGAIN_UP = "the coordinator keeps what arrived; run the same command again to send the rest"
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@contextlib.contextmanager
def transfer_bar(client: Client) -> Iterator[None]:
    """A Rich progress bar on stderr (bytes, rate, ETA, as `rsync --progress`) for every file
    the client hashes, uploads or downloads inside this block."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[tuple[str, str], Any] = {}
    verbs = {"hash": "hashing", "upload": "uploading", "download": "downloading"}

    def progress(phase: str, name: str, done: int, total: int) -> None:
        key = (phase, name)
        if key not in tasks:
            tasks[key] = bar.add_task(f"{verbs.get(phase, phase)} {name}", total=total)
        bar.update(tasks[key], completed=done, total=total)

    if not err.is_terminal:  # a log or a pipe gets the one-line summaries only
        yield
        return
    before = client.transfer_progress
    client.transfer_progress = progress
    try:
        with bar:
            yield
    finally:
        client.transfer_progress = before


@contextlib.contextmanager
def interruptible(what: str, again: str) -> Iterator[None]:
    """Ctrl-C during a transfer: say what is kept and how to go on, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        err.print(f"{what} interrupted: {again}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _say_sent(name: str, sent: int, size: int, resumed_from: int, seconds: float) -> None:
    rate = f", {human_bytes(sent / seconds)}/s" if seconds > 0 and sent else ""
    if resumed_from >= size and not sent:
        how = "already on the coordinator: nothing sent"
    elif resumed_from:
        how = f"resumed at {human_bytes(resumed_from)}: sent {human_bytes(sent)}{rate}"
    else:
        how = f"sent {human_bytes(sent)}{rate}"
    err.print(f"{name}: {how}", markup=False, highlight=False)


@blobs_app.command("put")
def blobs_put(
    files: Annotated[
        list[Path],
        typer.Argument(exists=True, dir_okay=False, readable=True, help="The files to upload."),
    ],
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload files as blobs: prints `SHA  SIZE  FILE` for each.

    Streamed from disk with a progress bar; run it again after an interruption and it sends
    only what the coordinator lacks. Use a blob as a task input with -i NAME=blob:SHA.
    """
    with _client(coordinator, api_key, 0) as client, transfer_bar(client):
        for path in files:
            try:
                t0 = time.monotonic()
                with interruptible(f"upload of {path}", _AGAIN_UP):
                    sent = client.upload(path)
            except FogwheelError as e:
                raise _fail(f"{path}: {explain(e)}") from None
            except OSError as e:
                raise _fail(f"cannot read {path}: {e.strerror or e}") from None
            sha, size = sent.sha, sent.size
            _say_sent(path.name, sent.sent, size, sent.resumed_from, time.monotonic() - t0)
            if as_json:
                line = {"sha": sha, "size": size, "file": str(path), "sent": sent.sent}
                typer.echo(json.dumps({**line, "resumed_from": sent.resumed_from}))
            else:
                typer.echo(f"{sha}  {size}  {path}")


@blobs_app.command("get")
def blobs_get(
    sha: Annotated[str, typer.Argument(help="The blob's SHA-256 (64 hex digits).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", dir_okay=False, help="The file to write.")
    ],
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download one of your blobs into a file, checked against its SHA-256.

    The bytes go to FILE.part first; an interrupted download is continued by running the same
    command again, and FILE appears only once the whole blob has arrived and matches.
    """
    sha = sha.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _fail(f"{sha[:80]!r} is not a SHA-256: give the 64 hex digits `blobs ls` shows", 2)
    with _client(coordinator, api_key, 0) as client, transfer_bar(client):
        t0 = time.monotonic()
        try:
            keep = f"what arrived is in {output}.part; run the same command again to fetch the rest"
            with interruptible(f"download of {sha[:12]}…", keep):
                got = client.download(sha, output)
        except FogwheelError as e:
            raise _fail(explain(e)) from None
        except OSError as e:
            raise _fail(f"cannot write {output}: {e.strerror or e}") from None
    rate = time.monotonic() - t0
    done = f"saved {output} ({human_bytes(got.size)}"
    if got.resumed_from:
        done += f", resumed at {human_bytes(got.resumed_from)}"
    speed = f", {human_bytes(got.sent / rate)}/s" if rate > 0 and got.sent else ""
    err.print(done + speed + ")", markup=False, highlight=False)


@blobs_app.command("ls")
def blobs_ls(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 100,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your blobs (uploaded, or your tasks' output files): SHA, size, created."""
    with _client(coordinator, api_key, 0) as client:
        try:
            rows = client.blobs(limit=limit)
        except FogwheelError as e:
            raise _fail(explain(e)) from None
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        err.print("no blobs yet: upload one with `fogwheel blobs put FILE`", markup=False)
        return
    # plain lines, never cut to the terminal's width: a SHA is copied whole into `get`
    width = max(len(str(row["size"])) for row in rows)
    typer.echo(f"{'sha':<64}  {'size':>{width}}  created (UTC)")
    for row in rows:
        created = (
            datetime.fromtimestamp(row["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            if row.get("created")
            else "-"
        )
        typer.echo(f"{row['sha']}  {row['size']:>{width}}  {created}")


# -- task inputs --------------------------------------------------------------------------------


def parse_input(value: str) -> tuple[str, str | Path]:
    """`-i` as (name in the task's directory, "blob:SHA" or a path): `PATH`, `NAME=PATH` or
    `NAME=blob:SHA`. ValueError with the sentence to show when it is neither."""
    name, eq, rest = value.partition("=")
    if not eq or (os.path.exists(value) and not rest.startswith("blob:")):
        if value.startswith("blob:"):
            raise ValueError(f"-i {value}: name the file the task will see: -i NAME={value}")
        return Path(value).name, Path(value)
    if not name or "/" in name:
        raise ValueError(f"-i {value}: NAME (before '=') must be a plain file name")
    if rest.startswith("blob:"):
        sha = rest[5:].strip().lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"-i {value}: {sha[:80]!r} is not a SHA-256 (64 hex digits)")
        return name, "blob:" + sha
    return name, Path(rest)


def inputs_for(client: Client, values: list[str]) -> dict[str, Blob | Path]:
    """The `-i` values of `fogwheel run` as task inputs: blobs named by SHA are looked up (they
    must be yours), and files larger than what travels inline are uploaded now, streamed with
    a progress bar; small files travel with the task."""
    from fogwheel.client import INLINE_MAX, Blob

    parsed: dict[str, str | Path] = {}
    for value in values:
        try:
            name, src = parse_input(value)
        except ValueError as e:
            raise _fail(str(e), 2) from None
        if isinstance(src, Path) and not src.is_file():
            raise _fail(f"-i {value}: no such file {src}", 2)
        parsed[name] = src
    inputs: dict[str, Blob | Path] = {}
    try:
        with transfer_bar(client):
            for name, src in parsed.items():
                if isinstance(src, str):
                    inputs[name] = client.blob(src[5:])
                elif src.stat().st_size > INLINE_MAX:
                    t0 = time.monotonic()
                    with interruptible(f"upload of {src}", _AGAIN_UP):
                        sent = client.upload(src)
                    inputs[name] = Blob(sent.sha, sent.size)
                    _say_sent(
                        src.name, sent.sent, sent.size, sent.resumed_from, time.monotonic() - t0
                    )
                else:
                    inputs[name] = src
    except FogwheelError as e:
        raise _fail(explain(e)) from None
    return inputs


def register(app: typer.Typer) -> None:
    """Add `fogwheel blobs` to the app."""
    app.add_typer(blobs_app, name="blobs")
