"""`fogwheel cdn publish|get|url|stats`: the peer-assisted CDN from the command line.

`publish` encrypts and erasure-codes a file and uploads it (its media type guessed from the name
or given with --content-type); `get` fetches it back from the nodes; `url` prints a signed,
expiring URL that needs no header (for browsers, players, curl and wget); `stats` shows the
offload and how the shares are spread. docs/cdn.md tells the whole story.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fogwheel.cli import ApiKeyOpt, CoordinatorOpt, _client, _fail, err, out

cdn_app = typer.Typer(
    help="A peer-assisted CDN: encrypted, erasure-coded objects served by the nodes.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds of `90`, `90s`, `15m`, `1h` or `7d`; ValueError with the accepted forms."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValueError(
            f"--expires {text[:40]!r} is not a duration: write e.g. 90s, 15m, 1h or 7d"
        )
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def _bytes_bar(label: str) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    return Progress(
        f"{label:<12}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
    )


@cdn_app.command("publish")
def cdn_publish(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The file to publish.")],
    k: Annotated[int, typer.Option("--k", min=1, max=256, help="Shares needed to rebuild.")] = 4,
    n: Annotated[int, typer.Option("--n", min=1, max=256, help="Shares made a segment.")] = 8,
    content_type: Annotated[
        str | None,
        typer.Option(
            "--content-type",
            metavar="TYPE",
            help="The media type it is served as (e.g. video/mp4); default: guessed from the "
            "file name, application/octet-stream when no guess.",
        ),
    ] = None,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Encrypt FILE (a fresh AES-256 key), erasure-code it k-of-n, upload it; prints its id.

    Example: fogwheel cdn publish film.mp4 --k 4 --n 8 --content-type video/mp4
    """
    from fogwheel.cdn.client import publish
    from fogwheel.errors import FogwheelError

    if k > n:
        raise _fail(f"--k {k} is more than --n {n}: a segment is rebuilt from k of its n shares")
    warned: list[str] = []
    with _client(coordinator, api_key, 0) as client, _bytes_bar("publishing") as bar:
        task = bar.add_task("publish", total=file.stat().st_size)
        try:
            cid = publish(
                client,
                file,
                k=k,
                n=n,
                content_type=content_type,
                progress=lambda d, t: bar.update(task, completed=d),
                on_warning=warned.append,
            )
        except (FogwheelError, ValueError) as e:
            raise _fail(str(e)) from None
    for note in warned:  # fewer live devices than n: the spread is degraded
        err.print(f"warning: {note}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    out.print(f"published {file} as {cid} ({k} of {n} shares a segment)", highlight=False)
    print(cid)


@cdn_app.command("get")
def cdn_get(
    content_id: Annotated[str, typer.Argument(metavar="ID", help="The content id.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write it.")],
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Transfers at once.")] = 8,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Fetch an object from the nodes that hold its shares (the origin for what they cannot
    give), verified and decrypted.

    Example: fogwheel cdn get c0123… --out film.mp4
    """
    from fogwheel.cdn.client import fetch
    from fogwheel.errors import FogwheelError

    with _client(coordinator, api_key, 0) as client, _bytes_bar("fetching") as bar:
        task = bar.add_task("fetch", total=None)
        try:
            stats = fetch(
                client,
                content_id,
                out_file,
                parallel=parallel,
                progress=lambda d, t: bar.update(task, completed=d, total=t),
            )
        except (FogwheelError, ValueError, OSError) as e:
            raise _fail(str(e)) from None
    share = stats.from_peers / max(1, stats.from_peers + stats.from_origin)
    out.print(
        f"wrote {out_file}: {stats.size:,} bytes in {stats.seconds:.2f} s, "
        f"{share:.0%} from peers" + (f", {len(stats.bad)} bad shares refused" if stats.bad else ""),
        highlight=False,
    )


@cdn_app.command("url")
def cdn_url(
    content_id: Annotated[str, typer.Argument(metavar="ID", help="The content id.")],
    expires: Annotated[
        str,
        typer.Option(
            "--expires",
            metavar="DURATION",
            help="How long the URL works: 90s, 15m, 1h, 7d (at most 7 days).",
        ),
    ] = "1h",
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a signed URL of your object that needs no header, until it expires: for
    `<video src=…>`, players, curl and wget. Anyone with the URL can read the object until
    then, and it cannot be revoked alone (revoking your keys ends all of yours), so keep it short.

    Example: fogwheel cdn url c0123… --expires 1h
    """
    from fogwheel.cdn.client import signed_url
    from fogwheel.errors import FogwheelError

    try:
        seconds = parse_duration(expires)
    except ValueError as e:
        raise _fail(str(e), 2) from None
    with _client(coordinator, api_key, 0) as client:
        try:
            url, until = signed_url(client, content_id, expires_in=seconds)
        except (FogwheelError, ValueError) as e:
            raise _fail(str(e)) from None
    if as_json:
        print(json.dumps({"url": url, "expires": until}))
        return
    print(url)


@cdn_app.command("stats")
def cdn_stats_cmd(
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Offload ratio, bytes served a node, repair traffic, fetch throughput and p95 time."""
    from fogwheel.cdn.client import cdn_stats
    from fogwheel.errors import FogwheelError

    with _client(coordinator, api_key, 0) as client:
        try:
            s = cdn_stats(client)
        except FogwheelError as e:
            raise _fail(str(e)) from None
    if as_json:
        print(json.dumps(s))
        return
    table = Table(title="CDN")
    table.add_column("figure")
    table.add_column("value", justify="right")

    def mb(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:,.1f} MB"

    offload = "-" if s["offload"] is None else f"{s['offload']:.1%}"
    seg = s["segments"]
    rows = [
        ("objects", str(s["objects"])),
        ("fetches", str(s["fetches"])),
        ("delivered", mb(s["bytes_delivered"])),
        ("offload (from peers)", offload),
        ("from the origin", mb(s["bytes_from_origin"])),
        ("repair traffic", mb(s["repair_bytes"])),
        ("fetch throughput", "-" if s["fetch_mb_s"] is None else f"{s['fetch_mb_s']:.1f} MB/s"),
        ("fetch p95", "-" if s["fetch_p95_s"] is None else f"{s['fetch_p95_s']:.2f} s"),
        (
            "segments full / degraded / at risk / below k",
            f"{seg['full']}/{seg['degraded']}/{seg.get('at_risk', 0)}/{seg['below_k']}",
        ),
        ("fewest devices a segment", str(seg.get("min_devices") or "-")),
    ]
    for node_id, n in sorted(s["served_by_node"].items()):
        rows.append((f"served by {node_id}", mb(n)))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    _print_cdn_spread(s.get("by_object", []))


def _print_cdn_spread(objects: list[dict[str, Any]]) -> None:
    """Per object: its worst segment, the fewest distinct devices of a segment (of n)."""
    if not objects:
        return
    table = Table(title="objects: how their shares are spread")
    for col in ("object", "name", "k/n", "state", "fewest devices", "after 1 loss"):
        table.add_column(col)
    for o in objects:
        state = o["state"].replace("_", " ")
        table.add_row(
            o["content_id"],
            Text(o["name"]),
            f"{o['k']}/{o['n']}",
            state,
            f"{o['min_devices']} of {o['n']}",
            f"{o['min_shares_after_one_loss']} shares",
        )
    out.print(table)
    for o in objects:
        if o["state"] != "full":
            out.print(
                f"{o['content_id']}: {o['state'].replace('_', ' ')} — a segment sits on "
                f"{o['min_devices']} of n={o['n']} devices, and losing the worst one leaves "
                f"{o['min_shares_after_one_loss']} shares (k={o['k']} rebuild it): add "
                "devices and repair spreads the shares over them",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
