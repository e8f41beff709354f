"""`fogwheel owners`, `fogwheel tokens`, `keys revoke`, `nodes revoke`, `earnings --owner`.

The operator (admin key) creates owners and their join tokens and revokes tokens, customer
keys and device credentials; an owner (owner key) lists its own tokens, devices and earnings
and may revoke its own tokens and devices. docs/owners.md tells the whole story.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from fogwheel.cli import CoordinatorOpt, _api_call, _fail, err, out
from fogwheel.core import owners as owning
from fogwheel.core.ledger import format_credits

AdminKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="FOGWHEEL_ADMIN_KEY",
        help="The operator key that `fogwheel coordinator` printed.",
    ),
]
OwnerKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--owner-key",
        envvar="FOGWHEEL_OWNER_KEY",
        help="An owner key (`fogwheel owners create` printed it): act as that owner.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead.")]

owners_app = typer.Typer(
    help="Operator: owners, the accounts that hold devices, join tokens and earnings.",
    no_args_is_help=True,
)
tokens_app = typer.Typer(
    help="Join tokens: each admits devices for one owner, up to a cap and a rate.",
    no_args_is_help=True,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in '90s', '30m', '12h', '7d', '2w' or a plain number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(
            f"{text!r} is not a duration: write e.g. 3600, 90m, 12h, 30d or 2w (more than 0)"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _need(coordinator: str | None, secret: str | None, what: str) -> tuple[str, str]:
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    if not secret:
        raise _fail(what)
    return coordinator, secret


def _admin(coordinator: str | None, admin_key: str | None) -> tuple[str, str]:
    return _need(coordinator, admin_key, "no admin key: pass --admin-key or set FOGWHEEL_ADMIN_KEY")


def _admin_or_owner(
    coordinator: str | None, admin_key: str | None, owner_key: str | None
) -> tuple[str, str]:
    return _need(
        coordinator,
        owner_key or admin_key,
        "no key: pass --admin-key (operator) or --owner-key (an owner), or set "
        "FOGWHEEL_ADMIN_KEY / FOGWHEEL_OWNER_KEY",
    )


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


# -- owners -----------------------------------------------------------------------------------


@owners_app.command("create")
def owners_create(
    name: Annotated[str, typer.Argument(help="Who the owner is, e.g. 'alice-home'.")],
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an owner and print its owner key, once: only the key's hash is kept.

    The key alone goes to stdout, so KEY=$(fogwheel owners create alice) works. Then give
    the owner a join token: `fogwheel tokens create --owner ID`.
    """
    url, key = _admin(coordinator, admin_key)
    made = _api_call("POST", url, key, "/v1/owners", {}, {"name": name})
    if as_json:
        print(json.dumps(made), flush=True)
        return
    err.print(
        f"owner {made['owner_id']} ({name}) created; its owner key, shown once:",
        markup=False,
        highlight=False,
    )
    print(made["owner_key"], flush=True)


@owners_app.command("list")
def owners_list(
    coordinator: CoordinatorOpt = None, admin_key: AdminKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Every owner: its devices and what they earned."""
    url, key = _admin(coordinator, admin_key)
    data = _api_call("GET", url, key, "/v1/owners", {})
    if as_json:
        print(json.dumps(data), flush=True)
        return
    table = Table(title="owners")
    for col in ("id", "name", "devices", "earned", "since (UTC)"):
        table.add_column(col, justify="right" if col in ("devices", "earned") else "left")
    for o in data["owners"]:
        table.add_row(
            o["id"],
            o["name"],
            str(o["devices"]),
            format_credits(o["earned"]),
            _when(o["created_at"]),
        )
    out.print(table)


@owners_app.command("earnings")
def owners_earnings(
    owner_id: Annotated[str, typer.Argument(help="The owner's id (see `fogwheel owners list`).")],
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Operator: what one owner's devices earned, each and in total."""
    url, key = _admin(coordinator, admin_key)
    _print_earnings(_api_call("GET", url, key, f"/v1/owners/{owner_id}/earnings", {}), as_json)


def owner_earnings(coordinator: str | None, owner_key: str | None, as_json: bool) -> None:
    """`fogwheel earnings --owner`: what the owner key's devices earned."""
    url, key = _need(
        coordinator, owner_key, "no owner key: pass --owner-key or set FOGWHEEL_OWNER_KEY"
    )
    _print_earnings(_api_call("GET", url, key, "/v1/owners/me/earnings", {}), as_json)


def _print_earnings(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data), flush=True)
        return
    out.print(
        f"owner {data['owner_id']}: {format_credits(data['total'])} earned by "
        f"{len(data['devices'])} devices",
        markup=False,
        highlight=False,
    )
    if not data["devices"]:
        return
    table = Table(title="per device")
    for col in ("device", "name", "credits", "state"):
        table.add_column(col, justify="right" if col == "credits" else "left")
    for d in data["devices"]:
        table.add_row(
            d["node_id"],
            d["name"],
            format_credits(d["balance"]).removesuffix(" credits"),
            "revoked" if d["revoked"] else "",
        )
    out.print(table)


# -- join tokens ------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    owner: Annotated[
        str,
        typer.Option("--owner", help="The owner whose devices join with it (default: yours)."),
    ] = owning.OPERATOR,
    max_devices: Annotated[
        int, typer.Option("--max-devices", min=1, max=1_000_000, help="Devices it admits.")
    ] = owning.TOKEN_MAX_DEVICES,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", min=0.001, max=1_000_000, help="Joins an hour it admits (bursts: a tenth)."
        ),
    ] = owning.TOKEN_RATE_PER_HOUR,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="When it stops working: e.g. 12h, 30d (default never)."),
    ] = None,
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Operator: make a join token and print its join string, once.

    The join string (token#sha256:<pin of this coordinator's key>) alone goes to stdout; the
    device owner runs `fogwheel node -c URL --token 'JOIN STRING'`.
    """
    url, key = _admin(coordinator, admin_key)
    body: dict[str, Any] = {"owner_id": owner, "max_devices": max_devices, "rate_per_hour": rate}
    if expires:
        try:
            body["expires_in_s"] = parse_duration(expires)
        except ValueError as e:
            raise _fail(f"--expires: {e}", 2) from None
    made = _api_call("POST", url, key, "/v1/tokens", {}, body)
    if as_json:
        print(json.dumps(made), flush=True)
        return
    err.print(
        f"join token {made['id']} for owner {made['owner_id']}: up to {made['max_devices']} "
        f"devices, {made['rate_per_hour']:g} joins an hour, expires {_when(made['expires_at'])}; "
        "its join string, shown once:",
        markup=False,
        highlight=False,
    )
    print(made["join_string"], flush=True)


@tokens_app.command("list")
def tokens_list(
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    owner_key: OwnerKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join tokens (the operator sees all, an owner its own), never their secrets."""
    url, key = _admin_or_owner(coordinator, admin_key, owner_key)
    data = _api_call("GET", url, key, "/v1/tokens", {})
    if as_json:
        print(json.dumps(data), flush=True)
        return
    table = Table(title="join tokens")
    for col in ("id", "owner", "origin", "joined", "rate/h", "expires (UTC)", "state"):
        table.add_column(col)
    for t in data["tokens"]:
        table.add_row(
            t["id"],
            t["owner_id"],
            t["origin"],
            f"{t['joined']}/{t['max_devices']}",
            f"{t['rate_per_hour']:g}",
            _when(t["expires_at"]),
            "revoked" if t["revoked"] else "active",
        )
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see `fogwheel tokens list`).")],
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    owner_key: OwnerKeyOpt = None,
) -> None:
    """Revoke a join token: no device joins with it any more (joined ones stay: revoke them
    with `fogwheel nodes revoke`)."""
    url, key = _admin_or_owner(coordinator, admin_key, owner_key)
    _api_call("POST", url, key, f"/v1/tokens/{token_id}/revoke", {})
    out.print(f"join token {token_id} revoked", markup=False, highlight=False)


# -- revoking keys and devices ----------------------------------------------------------------


def keys_revoke(
    customer_id: Annotated[
        str, typer.Argument(help="The customer's id (c-…), or a metrics key's (m-…).")
    ],
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
) -> None:
    """Operator: revoke every API key of a customer, or one metrics key; they get 401 from
    now on."""
    url, key = _admin(coordinator, admin_key)
    if customer_id.startswith("m-"):
        _api_call("POST", url, key, f"/v1/metrics-keys/{customer_id}/revoke", {})
        out.print(f"metrics key {customer_id} revoked", markup=False, highlight=False)
        return
    _api_call("POST", url, key, f"/v1/customers/{customer_id}/revoke", {})
    out.print(f"API keys of customer {customer_id} revoked", markup=False, highlight=False)


def nodes_revoke(
    node_id: Annotated[str, typer.Argument(help="The device's id (see `fogwheel nodes`).")],
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    owner_key: OwnerKeyOpt = None,
) -> None:
    """Revoke a device's credential: it gets 401, its leases end and their tasks go to other
    devices; what it earned stays its owner's. The operator may revoke any device, an owner
    its own."""
    url, key = _admin_or_owner(coordinator, admin_key, owner_key)
    _api_call("POST", url, key, f"/v1/nodes/{node_id}/revoke", {})
    out.print(f"device {node_id} revoked", markup=False, highlight=False)


def register(app: typer.Typer, keys_app: typer.Typer, nodes_app: typer.Typer) -> None:
    """Add these commands to the `fogwheel` app."""
    app.add_typer(owners_app, name="owners")
    app.add_typer(tokens_app, name="tokens")
    keys_app.command("revoke")(keys_revoke)
    nodes_app.command("revoke")(nodes_revoke)
