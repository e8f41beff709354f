"""`fogwheel apps publish|list|show|set-current`: apps, their versions, and which one runs.

`publish` bundles a version — a function by reference with the code it imports, or a command
line — with its Python environment (`--pip`, `--requirements`) or program image (`--image`),
uploads what the fog lacks and prints the version's id (its manifest's SHA-256). Tasks of the
app (`Client.app(NAME).submit(...)`) run the version bound when each is leased. docs/apps.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fogwheel.cli import ApiKeyOpt, CoordinatorOpt, _client, _fail, err
from fogwheel.cli_errors import explain
from fogwheel.errors import FogwheelError

apps_app = typer.Typer(
    help="Apps: a name with versions, each an immutable, signed bundle of code and its "
    "environment or image (publish one, list yours, show one, choose the current version).",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead.")]


@apps_app.command("publish")
def apps_publish(
    name: Annotated[str, typer.Argument(help="The app's name, e.g. render (yours alone).")],
    rest: Annotated[
        list[str] | None,
        typer.Argument(
            help="With --function: the code to ship (a directory, or one .py file), zipped "
            "and put on the task's sys.path; leave it out when the function comes from "
            "--pip packages. Without --function: the command line, after --."
        ),
    ] = None,
    function: Annotated[
        str | None,
        typer.Option(
            "--function", "-f", help="The function to run, module:attr (e.g. scene:draw)."
        ),
    ] = None,
    pip: Annotated[
        list[str] | None,
        typer.Option(
            "--pip", help="A requirement of its Python environment (repeat: --pip numpy==2.1.*)."
        ),
    ] = None,
    requirements: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A requirements file for its environment."),
    ] = None,
    python: Annotated[
        str | None, typer.Option(help="The devices' Python, e.g. 3.11 (default: this one's).")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="A command app's program image (an id from `fogwheel images push`)."),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="The version's label, e.g. 1.2.0 (default: v1, v2, ...)."),
    ] = None,
    current: Annotated[
        bool,
        typer.Option(
            "--current/--no-current",
            help="Run it from now on (default), or only publish it (then `apps set-current`).",
        ),
    ] = True,
    canary: Annotated[
        str | None,
        typer.Option(
            help="Roll it out in steps from this share of the devices (e.g. 10%: then 50 %, "
            "100 %), rolled back by itself if it fails more often (docs/rollouts.md)."
        ),
    ] = None,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a version of an app; prints its id.

    Examples: fogwheel apps publish render ./src --function scene:draw --pip numpy;
    fogwheel apps publish greet --image IMAGE -- /bin/sh -c 'echo hello $0'
    """
    from fogwheel import apps
    from fogwheel.core.apps import AppError
    from fogwheel.envs import Env, EnvBuildError

    args = list(rest or [])
    env = None
    if pip or requirements:
        env = Env(pip=list(pip or []), requirements=requirements, python=python)
    if function is not None and len(args) > 1:
        raise _fail(f"one PATH of code with --function, not {len(args)}: {' '.join(args[:3])}")
    if function is None and not args:
        raise _fail("say what the version runs: PATH --function module:attr, or -- prog args")
    current = current and canary is None  # a canary becomes current when its roll-out is done
    kw: dict[str, Any] = {"env": env, "image": image, "label": version, "make_current": current}
    if function is not None:
        kw.update(function=function, path=Path(args[0]) if args else None)
    else:
        kw["command"] = args
    with _client(coordinator, api_key, 0) as client, err.status(f"publishing {name}…") as status:
        client.env_progress = lambda line: status.update(f"{name}: {line}")
        try:
            v = apps.publish(client, name, **kw)
        except (AppError, apps.AppCodeError, EnvBuildError) as e:
            raise _fail(f"{name}: {e}") from None
        except FogwheelError as e:
            raise _fail(f"{name}: {explain(e)}") from None
        if canary is not None:  # roll it out (docs/rollouts.md)
            from fogwheel.cli_rollouts import roll_app

            roll_app(client, name, v.id, canary)
    said = "published" if v.new else "already published"
    runs = "current" if v.current else "not current"
    err.print(f"{name} {v.label}: {said}, {runs}", markup=False, highlight=False)
    if as_json:
        typer.echo(json.dumps({"id": v.id, "label": v.label, "current": v.current, "new": v.new}))
    else:
        typer.echo(v.id)


@apps_app.command("list")
def apps_list(
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your apps: NAME, KIND, VERSIONS, CURRENT (the version new tasks run)."""
    from fogwheel import apps

    with _client(coordinator, api_key, 0) as client:
        try:
            rows = apps.listed(client)
        except FogwheelError as e:
            raise _fail(explain(e)) from None
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        err.print("no apps yet: publish one with `fogwheel apps publish NAME ...`")
        return
    for a in rows:
        cur = (a["current"] or "-")[:12]
        typer.echo(f"{a['name']:24} {a['kind']:8} {a['version_count']:>3}  {cur}")


@apps_app.command("show")
def apps_show(
    name: Annotated[str, typer.Argument(help="The app's name.")],
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One app's versions, oldest first: * marks the current one; what each runs, and how
    the attempts that ran it ended."""
    with _client(coordinator, api_key, 0) as client:
        try:
            info = client.app(name).info()
        except FogwheelError as e:
            raise _fail(explain(e)) from None
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"{info['name']} ({info['kind']}), {len(info['versions'])} version(s)")
    for v in info["versions"]:
        mark = "*" if v["current"] else " "
        runs = v["entry"] or " ".join(v["command"] or [])
        extra = [f"env {v['env'][:12]}"] if v["env"] else []
        extra += [f"image {v['image'][:12]}"] if v["image"] else []
        counts = ", ".join(f"{k} {n}" for k, n in sorted(v["outcomes"].items())) or "no runs"
        typer.echo(
            f"{mark} {v['label']:12} {v['id'][:12]}  {runs[:40]:40} "
            f"{' '.join(extra):18} {counts}".rstrip()
        )


@apps_app.command("set-current")
def apps_set_current(
    name: Annotated[str, typer.Argument(help="The app's name.")],
    version: Annotated[str, typer.Argument(help="A version's label, id, or 8+ digits of its id.")],
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Make a version current: tasks leased from now on run it (those running finish theirs)."""
    with _client(coordinator, api_key, 0) as client:
        try:
            app = client.app(name)
            app.set_current(version)
            info = app.info()
        except FogwheelError as e:
            raise _fail(explain(e)) from None
    chosen = next(v for v in info["versions"] if v["current"])
    err.print(f"{name}: {chosen['label']} is current", markup=False, highlight=False)
    typer.echo(chosen["id"])


def call(
    entry: Annotated[str, typer.Argument(help="The function, module:attr (e.g. scene:draw).")],
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="Its arguments: each read as JSON when it is (3, [1,2], null), else text."
        ),
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option(exists=True, help="Code to ship with it (a directory or a .py file)."),
    ] = None,
    pip: Annotated[
        list[str] | None,
        typer.Option("--pip", help="A requirement of its Python environment (repeat)."),
    ] = None,
    requirements: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A requirements file for its environment."),
    ] = None,
    python: Annotated[
        str | None, typer.Option(help="The devices' Python, e.g. 3.11 (default: this one's).")
    ] = None,
    wall: Annotated[float, typer.Option(help="Wall-time limit, seconds.")] = 600.0,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Run a Python function by reference on one node, in an environment of --pip packages;
    prints its result (JSON when it is JSON, else its repr).

    Example: fogwheel call tabulate:tabulate '[[1, 2]]' --pip tabulate==0.9.0
    """
    from fogwheel import apps
    from fogwheel.envs import Env, EnvBuildError

    values = [_value(a) for a in args or []]
    env = None
    if pip or requirements:
        env = Env(pip=list(pip or []), requirements=requirements, python=python)
    try:
        fn, files = apps.by_reference(entry, path)
    except apps.AppCodeError as e:
        raise _fail(str(e)) from None
    with _client(coordinator, api_key, 0) as client, err.status(f"calling {entry}…") as status:
        client.env_progress = lambda line: status.update(f"{entry}: {line}")
        try:
            [fut] = client.with_env(env).submit_many(
                fn, [(tuple(values), {})], name=entry, wall_s=wall, inputs=[files]
            )
            _show_env_progress(client, fut, status, entry, env is not None)
            result = fut.result()
        except EnvBuildError as e:
            raise _fail(f"{entry}: {e}") from None
        except FogwheelError as e:
            raise _fail(f"{entry}: {explain(e)}") from None
    try:
        typer.echo(json.dumps(result))
    except (TypeError, ValueError):
        typer.echo(repr(result))


def _show_env_progress(client: Any, fut: Any, status: Any, what: str, has_env: bool) -> None:
    """Until `fut` is done: "preparing environment on N devices" while devices running it
    build its environment for the first time (GET /v1/jobs/ID/env), else "running"."""
    from concurrent.futures import wait

    said = ""
    while not fut.done():
        line = f"{what}: running on the fog…"
        if has_env:
            try:
                n = client.env_status(fut.job_id)["preparing"]
            except FogwheelError:
                n = 0
            if n:
                line = f"{what}: preparing environment on {n} device{'s' if n > 1 else ''}…"
        if line != said:
            status.update(line)
            if "preparing" in line:
                err.print(line, markup=False, highlight=False)
            said = line
        wait([fut], timeout=0.5)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def register(app: typer.Typer) -> None:
    """Add `fogwheel apps` and `fogwheel call` to the app."""
    app.add_typer(apps_app, name="apps")
    app.command("call")(call)
