"""`fogwheel node install|uninstall|status|pause|resume`: a device's node as a systemd service.

`fogwheel node --coordinator URL` still runs the agent in the foreground (cli.py's `node`, the
group's callback); these subcommands put it under systemd and let the owner take the device
back. What the unit says is decided in core/nodeservice.py (pure, printed by --dry-run); this
module writes the files, runs systemd-sysusers and systemctl, and talks to the running agent
through the files in its data dir (node/control.py). docs/node-install.md walks the whole path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fogwheel import __version__
from fogwheel.cli import _fail, _node_coordinators, err, out
from fogwheel.core import nodeservice as svc
from fogwheel.node import control

node_app = typer.Typer(
    help="Run a node agent (with --coordinator), or install it as a service, see what it "
    "does and earns, pause it and resume it.",
    rich_markup_mode="rich",
)

UnitOpt = Annotated[str, typer.Option("--unit", help="The service's name (without .service).")]
RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Write into this directory as if it were / (packagers, tests): no running systemd "
        "is touched; the unit is enabled there with `systemctl --root`.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print what would be written and run; change nothing.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="FOGWHEEL_NODE_DIR",
        help="The node's data dir (default: the installed service's /var/lib/fogwheel when "
        "there is one, else ~/.fogwheel/node).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
WaitOpt = Annotated[
    float, typer.Option("--wait", min=0.0, help="Seconds to wait for the agent to confirm.")
]


def register(app: typer.Typer, run_node: Callable[..., None]) -> None:
    """Make `node` a group: `run_node` (cli.py's `node`) runs when no subcommand is given."""
    node_app.callback(invoke_without_command=True)(run_node)
    app.add_typer(node_app, name="node")


def _under(root: Path | None, path: str) -> Path:
    return Path(path) if root is None else root / path.lstrip("/")


def _join_string(token: str | None, token_file: Path | None) -> str:
    """The join string from --token-file, FOGWHEEL_JOIN_TOKEN / --token, or a hidden prompt."""
    from fogwheel.errors import FogwheelError
    from fogwheel.secretfile import read_token_file

    if token_file is not None:
        try:
            return read_token_file(token_file)
        except FogwheelError as e:
            raise _fail(str(e), 2) from None
    if token:
        if "FOGWHEEL_JOIN_TOKEN" not in os.environ:
            err.print(
                "[yellow]warning:[/] --token puts the join secret on a command line, which every "
                "local user can read while it runs (and your shell keeps in its history); "
                "prefer --token-file FILE (mode 0600) or FOGWHEEL_JOIN_TOKEN"
            )
        return token
    if sys.stdin.isatty():
        return str(typer.prompt("join string (TOKEN#sha256:PIN, input hidden)", hide_input=True))
    raise _fail(
        "no join string: pass --token-file FILE (mode 0600), set FOGWHEEL_JOIN_TOKEN, or run "
        "it in a terminal to be asked (the operator's `fogwheel coordinator` printed it)",
        2,
    )


def _write(path: Path, text: str, mode: int) -> None:
    """Write atomically, never through a symlink someone left in the way."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.fogwheel-tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)
    os.replace(tmp, path)


def _with_root(cmd: tuple[str, ...], root: Path | None) -> list[str]:
    if root is None:
        return list(cmd)
    if cmd[0] == "systemd-sysusers":  # it reads its config files from the host's paths
        return [cmd[0], f"--root={root}", *(str(_under(root, a)) for a in cmd[1:])]
    if cmd[0] == "systemctl":
        return [cmd[0], f"--root={root}", *cmd[1:]]
    if cmd[0] == "userdel":
        return [cmd[0], "--root", str(root), *cmd[1:]]
    return list(cmd)


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise _fail(f"{cmd[0]} is not on PATH: this device needs systemd (≥ 250) for a service")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if check and r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        raise _fail(f"`{' '.join(cmd)}` failed: {why[-1] if why else f'exit {r.returncode}'}")
    return r


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _check_coordinator(url: str) -> None:
    import httpx

    base = url.split(",")[0]
    try:
        r = httpx.get(f"{base}/v1/health", timeout=10)
        if r.status_code == 200:
            return
        problem = f"HTTP {r.status_code}"
    except httpx.HTTPError as e:
        problem = str(e) or type(e).__name__
    raise _fail(
        f"the coordinator at {base} does not answer /v1/health ({problem}): check the URL and "
        "this device's network, or pass --no-check to install anyway"
    )


@node_app.command("install")
def install(
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            "-c",
            envvar="FOGWHEEL_COORDINATOR",
            callback=_node_coordinators,
            help="The fog's coordinator URL (several of one fog separated by commas).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_TOKEN_FILE",
            help="Read the join string from this file (mode 0600); else FOGWHEEL_JOIN_TOKEN; "
            "else you are asked.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_JOIN_TOKEN",
            help="The join string itself (discouraged: visible to local users; a warning says "
            "so). It is copied to a root-only file the service reads, never into the unit.",
        ),
    ] = None,
    python: Annotated[
        str,
        typer.Option(
            help="The interpreter the service runs `-m fogwheel` with (default: this one; "
            "it must be outside /home and /root, which the service cannot see).",
        ),
    ] = sys.executable,
    cores: Annotated[int | None, typer.Option(min=1, help="Slots to offer (default: all).")] = None,
    memory: Annotated[
        int | None, typer.Option(min=16, help="Memory to offer the fog, MB (default: all).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="This device's name on the fog (default: host name).")
    ] = None,
    memory_max: Annotated[
        str,
        typer.Option(
            help="MemoryMax= of the whole service, guests included: a share (50%) or a size "
            "(300M, 2G). Past it the kernel reclaims and then kills inside the service only.",
        ),
    ] = "50%",
    cpu_weight: Annotated[
        int,
        typer.Option(
            min=1,
            max=10000,
            help="CPUWeight= (the owner's processes have 100): guests get idle CPU, and 1/6 "
            "of a busy one at 20.",
        ),
    ] = 20,
    tasks_max: Annotated[
        int, typer.Option(min=16, help="TasksMax=: processes and threads, guests included.")
    ] = 512,
    cache_mb: Annotated[int, typer.Option(min=16, help="Disk kept for blobs, MB.")] = 2048,
    share_quota_mb: Annotated[int, typer.Option(min=1, help="Disk for CDN shares, MB.")] = 1024,
    uplink_mbit: Annotated[
        float | None, typer.Option(min=0.01, help="Cap the chunk server's upload, Mbit/s.")
    ] = None,
    serve_host: Annotated[
        str,
        typer.Option(
            help="Address the chunk server listens on: every interface by default, so that "
            "the router's mapping, hole punching and the relay reach it (docs/cdn.md); "
            "127.0.0.1 serves no CDN share to others."
        ),
    ] = "0.0.0.0",
    ca_cert: Annotated[
        Path | None,
        typer.Option(help="CA file (PEM) for an https coordinator; copied path, not contents."),
    ] = None,
    unit: UnitOpt = svc.UNIT_NAME,
    user: Annotated[str, typer.Option(help="The service's own system user.")] = svc.USER,
    root: RootOpt = None,
    dry_run: DryRunOpt = False,
    check: Annotated[
        bool, typer.Option(help="Check that the coordinator answers before installing.")
    ] = True,
    wait: WaitOpt = 60.0,
) -> None:
    """Install this device's node as a systemd service: its own system user, a data dir in
    /var/lib/fogwheel, restart on failure, start on boot, logs in the journal.

    Run it as root (sudo). The join string goes to a root-only file (/etc/fogwheel/join-token)
    that systemd hands the service as a credential; it never appears in the unit or in `ps`.
    Then: `fogwheel node status`, `sudo fogwheel node pause|resume`, `sudo fogwheel node
    uninstall`. docs/node-install.md explains each line of the unit.
    """
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR", 2)
    options = svc.ServiceOptions(
        coordinator=coordinator,
        python=python,
        unit=unit,
        user=user,
        cores=cores,
        memory_mb=memory,
        name=name,
        memory_max=memory_max,
        cpu_weight=cpu_weight,
        tasks_max=tasks_max,
        cache_mb=cache_mb,
        share_quota_mb=share_quota_mb,
        uplink_mbit=uplink_mbit,
        serve_host=serve_host,
        ca_cert=str(ca_cert.absolute()) if ca_cert else None,
    )
    try:
        svc.validate(options)
    except svc.ServiceError as e:
        raise _fail(str(e), 2) from None
    # the real secret is not needed to show the plan
    secret = "TOKEN#sha256:PIN" if dry_run else _join_string(token, token_file)
    try:
        plan = svc.plan_install(options, secret, root=root is not None, version=__version__)
    except svc.ServiceError as e:
        raise _fail(str(e), 2) from None
    if dry_run:
        _print_plan(plan, root)
        return
    if root is None:
        if os.geteuid() != 0:
            raise _fail("installing a service needs root: run it with sudo", 1)
        if not _systemd_running():
            raise _fail(
                "systemd is not running on this machine: start `fogwheel node --coordinator "
                "URL --token-file FILE` from its own init system, or pass --root DIR to write "
                "the files only"
            )
    if not Path(python).is_file() and root is None:
        raise _fail(f"--python {python}: no such file")
    if shutil.which("bwrap") is None:
        err.print(
            "[yellow]warning:[/] bubblewrap is not installed: the node will refuse guest work "
            "until it is (`sudo apt-get install bubblewrap`)"
        )
    if check:
        _check_coordinator(coordinator)
    for f in plan.files:
        try:
            _write(_under(root, f.path), f.text, f.mode)
        except OSError as e:
            raise _fail(f"cannot write {_under(root, f.path)}: {e.strerror}") from None
        err.print(f"wrote {_under(root, f.path)} ({f.what})", highlight=False, markup=False)
    for cmd in plan.commands:
        _run(_with_root(cmd, root))
        err.print(f"ran {' '.join(_with_root(cmd, root))}", highlight=False, markup=False)
    if root is not None:
        out.print(f"installed {unit}.service under {root} (enabled; not started)", markup=False)
        return
    _await_join(Path(plan.data_dir), unit, wait)


def _await_join(data_dir: Path, unit: str, wait: float) -> None:
    """Wait for the agent's status file to name its node; on failure, show its journal."""
    deadline = time.monotonic() + wait
    status: dict[str, Any] | None = None
    with err.status(f"starting {unit}.service and joining the fog…"):
        while time.monotonic() < deadline:
            status = control.read_status(data_dir)
            if status and status.get("node_id"):
                break
            active = _run(["systemctl", "is-active", f"{unit}.service"], check=False).stdout
            if active.strip() == "failed":
                break
            time.sleep(0.5)
    if status and status.get("node_id"):
        out.print(
            f"installed and running: {unit}.service (starts on boot), node {status['node_id']} "
            f"of {status.get('coordinator')}; see `fogwheel node status`",
            markup=False,
            highlight=False,
        )
        return
    journal = _run(["journalctl", "-u", f"{unit}.service", "-n", "15", "--no-pager"], check=False)
    sys.stderr.write(journal.stdout)  # as journalctl wrote it, not re-wrapped
    raise _fail(
        f"{unit}.service was installed and enabled, but the node did not join within "
        f"{wait:g} s: its journal is above (`journalctl -u {unit}`)"
    )


def _print_plan(plan: svc.InstallPlan, root: Path | None) -> None:
    """The files and commands of a plan, as they are (plain print: no wrapping, no markup)."""
    for f in plan.files:
        print(f"# would write {_under(root, f.path)} (mode {f.mode:04o}): {f.what}")
        text = f.text
        if f.path == svc.TOKEN_PATH:
            text = "FOGWHEEL_JOIN_TOKEN=(the join string)\n"
        print(text, end="")
    for cmd in plan.commands:
        print(f"# would run: {' '.join(_with_root(cmd, root))}")
    sys.stdout.flush()


@node_app.command("uninstall")
def uninstall(
    unit: UnitOpt = svc.UNIT_NAME,
    user: Annotated[str, typer.Option(help="The service's system user.")] = svc.USER,
    purge: Annotated[
        bool,
        typer.Option(
            help="Also delete the node's data (/var/lib/fogwheel: its identity on the fog, "
            "cache, CDN shares) and its user. Without it, a reinstall is the same node."
        ),
    ] = False,
    root: RootOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Stop the service (running tasks finish or go back to the fog), disable it, and remove
    what `fogwheel node install` wrote."""
    try:
        plan = svc.plan_uninstall(unit, user, root=root is not None, purge=purge)
    except svc.ServiceError as e:
        raise _fail(str(e), 2) from None
    if dry_run:
        for cmd in plan.before:
            print(f"# would run: {' '.join(_with_root(cmd, root))}")
        for path in plan.remove:
            print(f"# would remove {_under(root, path)}")
        for cmd in plan.after:
            print(f"# would run: {' '.join(_with_root(cmd, root))}")
        return
    if root is None and os.geteuid() != 0:
        raise _fail("removing a service needs root: run it with sudo")
    unit_file = _under(root, plan.remove[0])
    if not unit_file.exists():
        raise _fail(f"{unit_file} does not exist: no {unit}.service is installed here")
    if root is not None or _systemd_running():
        with err.status(f"stopping {unit}.service (running tasks are handed back)…"):
            for cmd in plan.before:
                _run(_with_root(cmd, root))
    for path in plan.remove:
        target = _under(root, path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        err.print(f"removed {target}", markup=False, highlight=False)
    for cmd in plan.after:
        _run(_with_root(cmd, root), check=cmd[0] != "userdel")
    out.print(
        f"uninstalled {unit}.service"
        + ("" if purge else " (the node's data stays in /var/lib/fogwheel; --purge removes it)"),
        markup=False,
        highlight=False,
    )


def node_dir(data_dir: Path | None, unit: str = svc.UNIT_NAME) -> Path:
    """The data dir meant: the one given, the installed service's, or the foreground default."""
    if data_dir is not None:
        return data_dir
    installed = Path(svc.UNIT_DIR) / f"{unit}.service"
    if installed.exists() or (Path(svc.data_dir()) / control.STATUS_FILE).exists():
        return Path(svc.data_dir())
    return Path.home() / ".fogwheel" / "node"


def _alive(pid: Any) -> bool:
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _agent(data_dir: Path) -> dict[str, Any] | None:
    """The agent's status when one is running on this data dir now, else None."""
    status = control.read_status(data_dir)
    if status is None or status.get("state") == "stopped" or not _alive(status.get("pid")):
        return None
    return status


@node_app.command("status")
def status(
    data_dir: DataDirOpt = None, unit: UnitOpt = svc.UNIT_NAME, as_json: JsonOpt = False
) -> None:
    """What this device's node does and has earned: the service, the agent's work in hand,
    a pause, and its balance on the fog (reading the credential needs root for a service)."""
    where = node_dir(data_dir, unit)
    report: dict[str, Any] = {"data_dir": str(where)}
    if (Path(svc.UNIT_DIR) / f"{unit}.service").exists() and _systemd_running():
        states = _run(["systemctl", "is-active", f"{unit}.service"], check=False).stdout.strip()
        enabled = _run(["systemctl", "is-enabled", f"{unit}.service"], check=False).stdout.strip()
        report["service"] = {"unit": f"{unit}.service", "active": states, "enabled": enabled}
    agent = _agent(where)
    pause = control.read_pause(where)
    report["agent"] = agent
    report["paused"] = pause is not None
    report["earnings"] = _earnings(where)
    if as_json:
        print(json.dumps(report), flush=True)
        return
    table = Table(title=f"node in {where}", show_header=False)
    table.add_column("what")
    table.add_column("")
    if "service" in report:
        s = report["service"]
        table.add_row("service", f"{s['unit']}: {s['active']}, {s['enabled']}")
    if agent is None:
        table.add_row("agent", "not running")
    else:
        table.add_row("node", f"{agent.get('node_id')} of {agent.get('coordinator')}")
        table.add_row("state", str(agent.get("state")))
        table.add_row(
            "work in hand",
            f"{agent.get('running', 0)} running, {agent.get('queued', 0)} queued, "
            f"{agent.get('reporting', 0)} results being reported, "
            f"{agent.get('handing_back', 0)} being handed back",
        )
        table.add_row("tasks finished", f"{agent.get('tasks_finished', 0)} since it started")
        seen = agent.get("last_answer_at")
        if isinstance(seen, int | float):
            table.add_row("coordinator", f"last answered {max(0.0, time.time() - seen):.0f} s ago")
    if pause is not None:
        how = "running tasks finish first" if pause.finish else "running tasks handed back"
        table.add_row("paused", f"yes, by the owner ({how}); `sudo fogwheel node resume`")
    e = report["earnings"]
    table.add_row("earned", e.get("balance_text") or e.get("error", "?"))
    out.print(table)


def _earnings(data_dir: Path) -> dict[str, Any]:
    """The node's balance from its coordinator, or why it cannot be had."""
    import httpx

    from fogwheel.core.ledger import format_credits

    path = data_dir / "node.json"
    try:
        ident = json.loads(path.read_text())
        url, credential = ident["coordinator"], ident["credential"]
    except FileNotFoundError:
        return {"error": f"not joined yet (no {path})"}
    except PermissionError:
        return {"error": f"cannot read {path}: run it with sudo to see earnings"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"error": f"cannot read {path}: {e}"}
    try:
        r = httpx.get(
            f"{url}/v1/nodes/me/earnings",
            params={"limit": 1},
            headers={"authorization": f"Bearer {credential}"},
            timeout=10,
        )
    except httpx.HTTPError as e:
        return {"error": f"the coordinator at {url} did not answer ({type(e).__name__})"}
    if r.status_code != 200:
        return {"error": f"the coordinator at {url} answered HTTP {r.status_code}"}
    with contextlib.suppress(ValueError, KeyError, TypeError):
        balance = int(r.json()["balance"])
        return {"balance": balance, "balance_text": format_credits(balance)}
    return {"error": "the coordinator's answer was not an account"}


def _writable(where: Path) -> None:
    if not where.is_dir():
        raise _fail(f"{where} is not a node's data dir (pass --data-dir)")


def _await(where: Path, done: Callable[[dict[str, Any]], bool], what: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    with err.status(what):
        while time.monotonic() < deadline:
            agent = _agent(where)
            if agent is None or done(agent):
                return agent is not None
            time.sleep(0.2)
    return False


def _handed_back(finish: bool) -> Callable[[dict[str, Any]], bool]:
    def done(a: dict[str, Any]) -> bool:
        settled = not a.get("queued") and not a.get("handing_back")
        return bool(a.get("paused")) and settled and (finish or not a.get("running"))

    return done


@node_app.command("pause")
def pause(
    data_dir: DataDirOpt = None,
    finish: Annotated[
        bool,
        typer.Option(
            "--finish",
            help="Let running tasks finish and report first (queued ones go back at once).",
        ),
    ] = False,
    unit: UnitOpt = svc.UNIT_NAME,
    wait: WaitOpt = 60.0,
) -> None:
    """Take the device back: the node hands its work back to the fog (running tasks are
    stopped and handed back, unless --finish) and asks for none until `fogwheel node resume`.
    The pause outlasts restarts and reboots; the node stays joined and keeps serving CDN shares.
    """
    where = node_dir(data_dir, unit)
    _writable(where)
    try:
        control.write_pause(where, finish, time.time())
    except PermissionError:
        raise _fail(f"cannot write in {where}: run it with sudo (it is the service's)") from None
    if _agent(where) is None:
        out.print("paused (no agent runs now: it starts paused)", markup=False)
        return
    if _await(where, _handed_back(finish), "pausing: handing work back to the fog…", wait):
        agent = _agent(where) or {}
        left = f"; {agent.get('running')} running tasks finish first" if finish else ""
        out.print(f"paused: work handed back, no new work taken{left}", markup=False)
        return
    raise _fail(
        f"the pause is recorded but the agent has not confirmed it within {wait:g} s: see "
        "`fogwheel node status` (the coordinator may be unreachable; the node asks for no work)"
    )


@node_app.command("resume")
def resume(
    data_dir: DataDirOpt = None, unit: UnitOpt = svc.UNIT_NAME, wait: WaitOpt = 30.0
) -> None:
    """Give the device back to the fog: the node asks for work again."""
    where = node_dir(data_dir, unit)
    _writable(where)
    try:
        was = control.clear_pause(where)
    except PermissionError:
        raise _fail(f"cannot write in {where}: run it with sudo (it is the service's)") from None
    if not was:
        out.print("not paused", markup=False)
        return
    if _agent(where) is None:
        out.print("resumed (no agent runs now)", markup=False)
        return
    if _await(where, lambda a: not a.get("paused"), "resuming…", wait):
        out.print("resumed: asking the fog for work again", markup=False)
        return
    raise _fail(
        f"the agent has not confirmed the resume within {wait:g} s: see `fogwheel node status`"
    )
