"""`fogwheel agent publish|versions` and `fogwheel rollouts list|show|cancel` (docs/rollouts.md).

An operator publishes a node agent wheel with a canary share; the coordinator signs it and
offers it to that share of the devices, then promotes it (10 → 50 → 100 %) or rolls it back by
the outcomes of the tasks they run. `fogwheel rollouts` shows every roll-out (of the agent and
of apps) with each step's counts and reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fogwheel.cli import CoordinatorOpt, _api_call, _fail, err, out
from fogwheel.cli_owners import AdminKeyOpt, JsonOpt, _admin, _need
from fogwheel.core import rollout

agent_app = typer.Typer(
    help="Operator: node agent versions, rolled out to devices in small steps.",
    no_args_is_help=True,
)
rollouts_app = typer.Typer(
    help="Roll-outs of app and agent versions: where each stands, and why.", no_args_is_help=True
)
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=["FOGWHEEL_ADMIN_KEY", "FOGWHEEL_API_KEY"],
        help="The operator key (every roll-out) or a customer key (those of your apps).",
    ),
]
DEFAULT = rollout.RolloutPolicy()


def _share(text: str) -> float:
    try:
        return rollout.parse_share(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@agent_app.command("publish")
def agent_publish(
    wheel: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="A fogwheel wheel (`pip wheel --no-deps .` in a checkout); its METADATA "
            "version is the version published.",
        ),
    ],
    canary: Annotated[
        str, typer.Option(help="The share of devices that get it first (then 50 %, 100 %).")
    ] = "10%",
    margin: Annotated[
        float,
        typer.Option(help="Roll back when its failure rate exceeds the old one's by more."),
    ] = DEFAULT.margin,
    alpha: Annotated[
        float, typer.Option(help="The test's one-sided error: confidence is 1 - alpha.")
    ] = DEFAULT.alpha,
    min_outcomes: Annotated[
        int, typer.Option(help="Task outcomes on the new version at a step before promoting.")
    ] = DEFAULT.min_outcomes,
    coordinator: CoordinatorOpt = None,
    admin_key: AdminKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a node agent wheel and roll it out from --canary of the devices.

    Example: fogwheel agent publish dist/fogwheel-0.2.0-py3-none-any.whl --canary 10%
    """
    import httpx

    from fogwheel.cli_blobs import human_bytes

    _share(canary)
    url, key = _admin(coordinator, admin_key)
    version = _wheel_version(wheel)
    data = wheel.read_bytes()
    try:
        r = httpx.post(
            url.split(",")[0].rstrip("/") + "/v1/agent/releases",
            params={
                "version": version,
                "canary": canary,
                "margin": margin,
                "alpha": alpha,
                "min_outcomes": min_outcomes,
            },
            content=data,
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/octet-stream",
            },
            timeout=120.0,
        )
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}; check --coordinator") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise _fail(f"the coordinator refused the wheel ({r.status_code}): {detail}")
    ro = r.json()
    if as_json:
        print(json.dumps(ro), flush=True)
        return
    err.print(
        f"agent {version} published ({human_bytes(len(data))}); roll-out {ro['id']}: "
        f"{ro['reason']}",
        markup=False,
        highlight=False,
    )
    print(ro["id"], flush=True)


def _wheel_version(wheel: Path) -> str:
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            meta = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
            if len(meta) != 1:
                raise _fail(f"{wheel} has no single *.dist-info/METADATA: is it a wheel?")
            for line in zf.read(meta[0]).decode("utf-8", "replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except (zipfile.BadZipFile, OSError) as e:
        raise _fail(f"{wheel} is not a wheel: {e}") from None
    raise _fail(f"{wheel}'s METADATA names no Version")


@agent_app.command("versions")
def agent_versions(
    coordinator: CoordinatorOpt = None, admin_key: AdminKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Published agent versions, how many live devices run each, and the newest roll-out."""
    url, key = _admin(coordinator, admin_key)
    data = _api_call("GET", url, key, "/v1/agent/releases", {})
    if as_json:
        print(json.dumps(data), flush=True)
        return
    table = Table(title="agent versions on live devices")
    table.add_column("version")
    table.add_column("devices", justify="right")
    table.add_column("published")
    published = {r["version"]: r for r in data["releases"]}
    for version, n in sorted(data["spread"].items(), key=lambda kv: -kv[1]):
        table.add_row(version, str(n), _when(published.get(version, {}).get("created_at")))
    out.print(table)
    if data.get("rollout"):
        _print_rollout(data["rollout"])


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_rollout(ro: dict[str, Any]) -> None:
    out.print(
        f"roll-out {ro['id']} ({ro['kind']} {ro['subject']}): {ro['old_version'] or '-'} → "
        f"{ro['new_version']}, {ro['state']} at {ro['share']:.0%}",
        markup=False,
        highlight=False,
    )
    table = Table()
    for col in ("at (UTC)", "action", "share", "new ok/failed", "old ok/failed", "reason"):
        table.add_column(col)
    for h in ro["history"]:
        table.add_row(
            _when(h["at"]),
            h["action"],
            f"{h['share']:.0%}",
            f"{h['new']['ok']}/{h['new']['failed']}",
            f"{h['old']['ok']}/{h['old']['failed']}",
            h["reason"],
        )
    out.print(table)
    out.print(f"now: {ro['reason']}", markup=False, highlight=False)


def _key(coordinator: str | None, key: str | None) -> tuple[str, str]:
    return _need(
        coordinator, key, "no key: pass --key or set FOGWHEEL_ADMIN_KEY / FOGWHEEL_API_KEY"
    )


@rollouts_app.command("list")
def rollouts_list(
    coordinator: CoordinatorOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Roll-outs newest first: what, from which version to which, where it stands, why."""
    url, secret = _key(coordinator, key)
    data = _api_call("GET", url, secret, "/v1/rollouts", {})
    if as_json:
        print(json.dumps(data), flush=True)
        return
    table = Table(title="roll-outs")
    for col in ("id", "of", "old → new", "state", "share", "reason"):
        table.add_column(col)
    for ro in data["rollouts"]:
        table.add_row(
            ro["id"],
            f"{ro['kind']} {ro['subject']}" if ro["kind"] == "app" else "agent",
            f"{ro['old_version'] or '-'} → {ro['new_version']}",
            ro["state"],
            f"{ro['share']:.0%}",
            ro["reason"],
        )
    out.print(table)


@rollouts_app.command("show")
def rollouts_show(
    rollout_id: Annotated[str, typer.Argument(help="The roll-out's id (ro_…).")],
    coordinator: CoordinatorOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One roll-out with every step: the counts of each version and the reason."""
    url, secret = _key(coordinator, key)
    data = _api_call("GET", url, secret, f"/v1/rollouts/{rollout_id}", {})
    if as_json:
        print(json.dumps(data), flush=True)
        return
    _print_rollout(data)


@rollouts_app.command("cancel")
def rollouts_cancel(
    rollout_id: Annotated[str, typer.Argument(help="The roll-out's id (ro_…).")],
    coordinator: CoordinatorOpt = None,
    key: KeyOpt = None,
) -> None:
    """Stop an active roll-out: every device goes back to the old version."""
    url, secret = _key(coordinator, key)
    data = _api_call("POST", url, secret, f"/v1/rollouts/{rollout_id}/cancel", {})
    err.print(data["reason"], markup=False, highlight=False)


def roll_app(client: Any, name: str, version: str, canary: str) -> dict[str, Any]:
    """Start the roll-out of app `name`'s `version` from `canary` (`fogwheel apps publish
    --canary`); prints where it stands; the roll-out."""
    from fogwheel.cli_errors import explain
    from fogwheel.errors import FogwheelError

    _share(canary)
    try:
        ro: dict[str, Any] = client._request(
            "POST", f"/v1/apps/{name}/rollouts", json={"version": version, "canary": canary}
        ).json()
    except FogwheelError as e:
        raise _fail(f"{name}: the roll-out did not start: {explain(e)}") from None
    err.print(f"roll-out {ro['id']}: {ro['reason']}", markup=False, highlight=False)
    return ro


def register(app: typer.Typer) -> None:
    """Add `fogwheel agent` and `fogwheel rollouts` to the app."""
    app.add_typer(agent_app, name="agent")
    app.add_typer(rollouts_app, name="rollouts")
