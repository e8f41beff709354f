"""The `fogwheel` command: run a coordinator or a node, bring up a local fog, submit work."""

from __future__ import annotations

import contextlib
import enum
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fogwheel import __version__
from fogwheel import cli_waits as waits
from fogwheel.cli_errors import coordinator_url, explain, user_errors
from fogwheel.core.scheduler import Policy
from fogwheel.logs import LogFormat

app = typer.Typer(
    name="fogwheel",
    help="fogwheel: pool idle Linux devices into one cloud. "
    "Start with `fogwheel demo`, then `fogwheel up` and `fogwheel run`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)

CoordinatorOpt = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        "-c",
        envvar="FOGWHEEL_COORDINATOR",
        callback=coordinator_url,
        help="Coordinator URL, e.g. http://127.0.0.1:8470 (the base: a trailing /v1 is dropped).",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="FOGWHEEL_API_KEY", help="Your customer API key."),
]
LocalOpt = Annotated[
    int,
    typer.Option("--local", min=0, help="Run on a throwaway local fog of N nodes instead."),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0.000001,
        envvar="FOGWHEEL_MAX_COST",
        help="Credits the job may cost: refused when its limits let it cost more, cancelled "
        "('max cost reached') once its charges reach it. See `fogwheel price`.",
    ),
]
ReplicasOpt = Annotated[
    str,
    typer.Option(
        "--replicas",
        envvar="FOGWHEEL_REPLICAS",
        help="'adaptive': check new or doubtful nodes' results on another node; "
        "N: run on N distinct nodes; 1: no checking.",
    ),
]


def _replicas(value: str) -> str | int:
    if value == "adaptive":
        return value
    if value.isdigit() and 1 <= int(value) <= 5:
        return int(value)
    raise _fail(f"--replicas must be 'adaptive' or a number from 1 to 5, not {value!r}", 2)


def _version(value: bool) -> None:
    if value:
        out.print(f"fogwheel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    pass


LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="FOGWHEEL_LOG_FORMAT",
        help="text, or json: one JSON object a line with time, level, logger, message and "
        "the job, task and node ids where known; secrets are redacted in both.",
    ),
]


def _logging(verbose: bool, log_format: LogFormat = LogFormat.TEXT) -> None:
    from fogwheel import logs

    logs.configure(str(log_format), verbose)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as the command's error (a coordinator's refusal put in the CLI's words,
    see cli_errors.explain) and return the Exit to raise."""
    line = Text.assemble(("error:", "red"), " ", explain(message))
    err.print(line, highlight=False, soft_wrap=True)  # one line, whole, for grep and logs
    return typer.Exit(code)


# -- operator and device owner ---------------------------------------------------------------


@app.command()
def coordinator(
    db: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_DB",
            help="Database URL: sqlite:///path.db (default: in --data-dir) or postgresql+psycopg://user@host/db.",
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="FOGWHEEL_DATA_DIR", help="Where the SQLite file and the blob store live."
        ),
    ] = Path.home() / ".fogwheel" / "coordinator",
    host: Annotated[
        str, typer.Option(envvar="FOGWHEEL_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="FOGWHEEL_PORT", help="Port (0: any free port).")
    ] = 8470,
    public_url: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_PUBLIC_URL",
            help="The URLs clients reach this coordinator at (commas, e.g. "
            "https://fog.example.com), listed as `servers` in /openapi.json for client "
            "generators. Default: / (wherever the document was read from).",
        ),
    ] = None,
    lease_seconds: Annotated[
        float, typer.Option(min=1.0, help="How long a node holds a task without renewing it.")
    ] = 15.0,
    gone_after: Annotated[
        float | None,
        typer.Option(
            "--gone-after",
            min=1.0,
            envvar="FOGWHEEL_GONE_AFTER",
            help="Seconds a node may stay silent before it counts as gone (default: the longer "
            "of 3 leases and 120 s). Longer lets idle nodes sync less often; a dead node is "
            "then noticed later.",
        ),
    ] = None,
    join_token: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_JOIN_TOKEN",
            help="Join token that nodes present (created and printed when none exists).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_API_KEY",
            help="A customer API key to accept (created and printed when none exists).",
        ),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_ADMIN_KEY",
            help="The operator key (created and printed when none exists).",
        ),
    ] = None,
    max_body_mb: Annotated[int, typer.Option(min=1, help="Largest request body accepted.")] = 64,
    max_blob_mb: Annotated[
        int,
        typer.Option(
            min=1,
            max=2047,
            envvar="FOGWHEEL_MAX_BLOB_MB",
            help="Largest blob one upload may make (streamed to disk), MB.",
        ),
    ] = 2047,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds a request body may go without a byte (then 408); after that long it "
            "must also average 1 KB/s.",
        ),
    ] = 30.0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_TLS_CERT",
            exists=True,
            dir_okay=False,
            help="Serve HTTPS with this certificate (PEM, with its chain); needs --tls-key.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_TLS_KEY",
            exists=True,
            dir_okay=False,
            help="The certificate's private key (PEM).",
        ),
    ] = None,
    allow_private_serve: Annotated[
        bool,
        typer.Option(
            help="Let nodes serve CDN shares from loopback or private addresses (a fog on one "
            "machine or one LAN); off, such serve addresses are refused.",
        ),
    ] = False,
    secrets_file: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_SECRETS_FILE",
            help="Read FOGWHEEL_JOIN_TOKEN, FOGWHEEL_API_KEY and FOGWHEEL_ADMIN_KEY from this "
            "file (NAME=value lines, mode 0600) rather than from the command line, where every "
            "local user can read them.",
        ),
    ] = None,
    placement: Annotated[
        Policy,
        typer.Option(
            envvar="FOGWHEEL_PLACEMENT",
            help="Which pending tasks a node gets: fair (customers take turns, queue order; "
            "the default), random, reliability (long tasks to reliable nodes) or deadline "
            "(least slack first). `fogwheel sim` compares them (docs/sim.md).",
        ),
    ] = Policy.FAIR,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_SIGNING_KEY",
            help="Sign task specs with this Ed25519 key file (PKCS#8 PEM, mode 0600), e.g. one "
            "that config management gives every coordinator; default: coordinator.key in "
            "--data-dir on SQLite, a key kept in the database on PostgreSQL.",
        ),
    ] = None,
    blobs: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_BLOBS",
            help="Where blobs live: db (in the database, reached by every coordinator; the "
            "default on PostgreSQL) or dir (in --data-dir; the default on SQLite; several "
            "coordinators then need one shared --data-dir).",
        ),
    ] = None,
    trusted_proxy: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_TRUSTED_PROXY",
            help="Believe X-Forwarded-For only from these reverse-proxy addresses (commas; "
            "e.g. 127.0.0.1 behind a local nginx). Default: none, the connection's own "
            "address counts, since a device could name any network in that header.",
        ),
    ] = None,
    cors_origin: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_CORS_ORIGIN",
            help="Origins whose pages may read CDN content with a bearer key (commas, e.g. "
            "https://console.example.com; * for any). Default: none; signed URLs (fogwheel cdn "
            "url) are readable from any page regardless.",
        ),
    ] = None,
    sample_s: Annotated[
        float | None,
        typer.Option(
            envvar="FOGWHEEL_SAMPLE_S",
            help="Seconds between samples of the fog's figures (devices, capacity, pay, "
            "price) kept for the console's charts over time; default 60.",
        ),
    ] = None,
    ready_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    quiet: Annotated[bool, typer.Option(help="Print nothing at start.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
) -> None:
    """Run the coordinator: the HTTP API under /v1, the web console at /, OpenAPI at /docs,
    metrics at /metrics."""
    from fogwheel.coordinator import CoordinatorConfig, serve
    from fogwheel.errors import ConfigError

    _logging(verbose, log_format)
    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together: give both, or neither for HTTP", 2)
    if secrets_file is not None:
        from fogwheel.errors import FogwheelError
        from fogwheel.secretfile import read_env_file

        try:
            held = read_env_file(secrets_file)
        except FogwheelError as e:
            raise _fail(str(e), 2) from None
        join_token = join_token or held.get("FOGWHEEL_JOIN_TOKEN")
        api_key = api_key or held.get("FOGWHEEL_API_KEY")
        admin_key = admin_key or held.get("FOGWHEEL_ADMIN_KEY")
    from fogwheel.core.cors import valid_origin

    origins = tuple(o.strip().rstrip("/") for o in (cors_origin or "").split(",") if o.strip())
    for origin in origins:
        if not valid_origin(origin):
            raise _fail(
                f"--cors-origin {origin[:80]!r} is not an origin: write scheme://host[:port] "
                "with no path (e.g. https://console.example.com), or *",
                2,
            )
    config = CoordinatorConfig(
        data_dir=data_dir,
        db=db,
        host=host,
        port=port,
        public_urls=tuple(u.strip() for u in (public_url or "").split(",") if u.strip()),
        lease_seconds=lease_seconds,
        gone_after_s=gone_after,
        join_token=join_token,
        api_key=api_key,
        admin_key=admin_key,
        max_body_mb=max_body_mb,
        max_blob_mb=max_blob_mb,
        body_idle_s=body_timeout,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_private_serve=allow_private_serve,
        ready_file=ready_file,
        placement=placement.value,
        signing_key=signing_key,
        blobs=blobs,
        trusted_proxies=tuple(a.strip() for a in (trusted_proxy or "").split(",") if a.strip()),
        cors_origins=origins,
    )
    if sample_s is not None:
        config.sample_s = sample_s
    try:
        serve(config, announce=not quiet)
    except ConfigError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
    except Exception as e:
        if "psycopg" in type(e).__module__ or "sqlalchemy" in type(e).__module__:
            raise _fail(f"cannot open the database: {e}; check --db / FOGWHEEL_DB") from None
        raise


def _node_coordinators(value: str | None) -> str | None:
    """The node's --coordinator callback: one base URL, or several of one fog separated by
    commas, each normalised (core/urls.py)."""
    if not value:
        return value
    from fogwheel.core.urls import coordinator_base

    try:
        return ",".join(coordinator_base(p) for p in value.split(",") if p.strip())
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def node(
    ctx: typer.Context,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            "-c",
            envvar="FOGWHEEL_COORDINATOR",
            callback=_node_coordinators,
            help="Coordinator URL, e.g. http://127.0.0.1:8470; several coordinators of one fog "
            "separated by commas: the node moves to the next when one does not answer.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_JOIN_TOKEN",
            help="The fog's join string TOKEN#sha256:PIN, as the coordinator printed it (needed "
            "the first time only); the node refuses a coordinator whose key is not the pinned "
            "one. A bare token trusts the key on first use. Prefer --token-file or the "
            "environment: a command line is visible to every local user.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_TOKEN_FILE",
            help="Read the join string from this file (mode 0600: the string alone, or a "
            "FOGWHEEL_JOIN_TOKEN=... line).",
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="FOGWHEEL_CA_CERT",
            exists=True,
            dir_okay=False,
            help="Verify an https coordinator's certificate against this CA file (PEM) instead "
            "of the system's store.",
        ),
    ] = None,
    max_clock_skew: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds this device's clock may lag the coordinator's: a lease that expired "
            "longer ago than this is refused (replayed).",
        ),
    ] = 60.0,
    cores: Annotated[
        int | None, typer.Option(min=1, help="Slots to offer (default: all cores).")
    ] = None,
    memory: Annotated[
        int | None, typer.Option(min=16, help="Memory to offer, MB (default: all).")
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="FOGWHEEL_NODE_DIR", help="Credential, blob cache and scratch space."),
    ] = Path.home() / ".fogwheel" / "node",
    name: Annotated[
        str | None, typer.Option(help="A name for this device (default: host name).")
    ] = None,
    poll: Annotated[
        float, typer.Option(min=0.05, help="Seconds between asks for work when idle.")
    ] = 0.5,
    capability: Annotated[
        list[str] | None, typer.Option(help="Extra capability to advertise.")
    ] = None,
    unsafe_no_sandbox: Annotated[
        bool,
        typer.Option(
            "--unsafe-no-sandbox",
            help="Run guest code without bubblewrap: it gets the network and every file "
            "this user can read. Only for a machine you would not mind losing.",
        ),
    ] = False,
    cache_mb: Annotated[
        int,
        typer.Option(
            min=16, help="Disk kept for blobs later tasks may read again (least recent dropped)."
        ),
    ] = 2048,
    serve: Annotated[
        bool, typer.Option(help="Keep CDN shares and serve them to fetching clients.")
    ] = True,
    serve_host: Annotated[str, typer.Option(help="Address of the chunk server.")] = "127.0.0.1",
    serve_port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port.")] = 0,
    advertise: Annotated[
        str | None,
        typer.Option(help="The chunk server's URL as clients reach it (port forward, proxy)."),
    ] = None,
    share_quota_mb: Annotated[int, typer.Option(min=1, help="Disk for CDN shares, MB.")] = 1024,
    uplink_mbit: Annotated[
        float | None, typer.Option(min=0.01, help="Cap the chunk server's upload, Mbit/s.")
    ] = None,
    scratch_mb: Annotated[
        int,
        typer.Option(
            min=16,
            help="Each slot's scratch space, MB (a tmpfs, so it counts toward a task's memory; "
            "root agents only: others keep scratch on disk without a quota).",
        ),
    ] = 1024,
    keep_mb: Annotated[
        int, typer.Option(min=0, help="Disk for state tasks keep between phases, MB.")
    ] = 1024,
    keep_hours: Annotated[
        float, typer.Option(min=0.01, help="Kept state unused for this long is removed.")
    ] = 24.0,
    images_mb: Annotated[
        int,
        typer.Option(
            min=1,
            help="Disk for unpacked program images (docs/images.md), MB; the least recently "
            "used not in use is removed beyond it.",
        ),
    ] = 4096,
    env_mb: Annotated[
        int,
        typer.Option(
            min=1,
            help="Disk for the Python environments tasks bring (docs/envs.md), MB; the least "
            "recently used is removed beyond it.",
        ),
    ] = 2048,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    log_format: LogFormatOpt = LogFormat.TEXT,
) -> None:
    """Run a node agent: join the fog, pull tasks, run them, report back. SIGTERM drains.

    Or, with a command below, run it as a systemd service (docs/node-install.md)."""
    from fogwheel.node.agent import Agent, FatalNodeError, NodeConfig

    if ctx.invoked_subcommand is not None:
        return  # install, status, pause, ... (src/fogwheel/cli_node.py)
    _logging(verbose, log_format)
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    if token_file is not None and not token:
        from fogwheel.errors import FogwheelError
        from fogwheel.secretfile import read_token_file

        try:
            token = read_token_file(token_file)
        except FogwheelError as e:
            raise _fail(str(e), 2) from None
    agent = Agent(
        NodeConfig(
            coordinator=coordinator,
            token=token,
            ca_cert=ca_cert,
            max_clock_skew_s=max_clock_skew,
            cores=cores,
            memory_mb=memory,
            data_dir=data_dir,
            name=name,
            poll_s=poll,
            capabilities=capability or [],
            unsafe_no_sandbox=unsafe_no_sandbox,
            cache_mb=cache_mb,
            serve=serve,
            serve_host=serve_host,
            serve_port=serve_port,
            advertise=advertise,
            share_quota_mb=share_quota_mb,
            uplink_mbit=uplink_mbit,
            scratch_mb=scratch_mb,
            keep_mb=keep_mb,
            keep_hours=keep_hours,
            images_mb=images_mb,
            env_mb=env_mb,
        )
    )
    agent.install_signal_handlers()
    try:
        agent.run()
    except FatalNodeError as e:
        raise _fail(str(e)) from None
    if agent.updater.target is not None:  # an agent roll-out: it stopped to change version
        from fogwheel.node.selfupdate import exec_into

        exec_into(agent.updater.target)


@app.command()
def demo(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=2, help="Local node agents.")] = 4,
    tasks: Annotated[int, typer.Option(min=2, help="Tasks in the job.")] = 400,
    kill: Annotated[bool, typer.Option(help="SIGKILL one node halfway.")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="End with one JSON line of figures.")
    ] = False,
) -> None:
    """Start a local fog, run a prime-counting job on it, kill a node halfway, check the result."""
    from fogwheel.demo import run_demo

    summary = run_demo(nodes=nodes, tasks=tasks, kill=kill, console=err if as_json else out)
    if as_json:
        print(json.dumps(summary), flush=True)
    if not summary["ok"]:
        raise typer.Exit(1)


# -- customer --------------------------------------------------------------------------------


@contextlib.contextmanager
def _client(
    coordinator: str | None, api_key: str | None, local: int, replicas: str | int = "adaptive"
) -> Iterator[Any]:
    from fogwheel.cli_costs import max_cost_option
    from fogwheel.cli_jobs import stopping  # Ctrl-C cancels the jobs waited for
    from fogwheel.client import Client
    from fogwheel.errors import ConfigError

    if local:
        from fogwheel.localfog import LocalFog

        fog = LocalFog(local)
        with err.status(f"starting a local fog of {local} nodes…"):
            fog.start()
        # One node cannot check another: a single-node local fog runs unchecked.
        if local == 1:
            replicas = 1
        try:
            hooks = waits.notice.hooks()  # why a job waits, each retry: said on stderr
            with (
                Client(fog.url, fog.api_key, replicas=replicas, cancel_on_exit=False, **hooks) as c,
                stopping(c),
            ):
                c.max_cost = max_cost_option()  # --max-cost of the running command
                yield c
        finally:
            fog.stop()
        return
    # The CLI's own words for what is missing (the SDK's would say url= and api_key=).
    local_hint = " (or use --local N for a throwaway local fog)" if _offers_local() else ""
    if not coordinator:
        raise _fail(
            f"no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR{local_hint}"
        )
    if not api_key:
        raise _fail(f"no API key: pass --api-key KEY or set FOGWHEEL_API_KEY{local_hint}")
    try:
        hooks = waits.notice.hooks()  # why a job waits, each retry: said on stderr
        client = Client(coordinator, api_key, replicas=replicas, cancel_on_exit=False, **hooks)
    except ConfigError as e:
        raise _fail(str(e)) from None
    client.max_cost = max_cost_option()  # --max-cost of the running command
    with user_errors(_fail), client, stopping(client):
        yield client


def _offers_local() -> bool:
    """Whether the running command has --local (then a missing coordinator can suggest it)."""
    try:  # Typer carries its own Click, whose context is not public API
        from typer._click.globals import get_current_context
    except ImportError:
        return False
    ctx = get_current_context(silent=True)
    return ctx is not None and any(p.name == "local" for p in ctx.command.params)


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str], typer.Argument(help="The program and its arguments (after --).")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="A file to place in the task's working directory: PATH, NAME=PATH, or "
            "NAME=blob:SHA (a blob of yours, see `fogwheel blobs`). Large files are streamed "
            "up as blobs first, resumably.",
        ),
    ] = None,
    output: Annotated[
        list[str] | None,
        typer.Option("--output", "-o", help="A file the program writes, to bring back."),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Where to save output files.")] = Path("."),
    memory: Annotated[int, typer.Option(min=16, help="Memory limit, MB.")] = 256,
    wall: Annotated[float, typer.Option(help="Wall-time limit, seconds.")] = 600.0,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="Run it in this program image (an id from `fogwheel images push`) as /, "
            "in /.fogwheel/task; only nodes of the image's architecture take it."
        ),
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(
            help="When it should be done, from now: 90s, 30m, 2h, 1d. A coordinator run with "
            "--placement deadline leases least slack first; a late job still runs.",
        ),
    ] = None,
) -> None:
    """Run a program on one node of the fog.

    Example: fogwheel run -i data.txt -o out.txt -- sort -o out.txt data.txt
    """
    from rich.markup import escape

    from fogwheel.cli_blobs import inputs_for
    from fogwheel.errors import CommandFailed, FogwheelError

    due = _duration(deadline, "--deadline")
    with _client(coordinator, api_key, local, _replicas(replicas)) as client:
        inputs = inputs_for(client, input or [])  # large files uploaded here, with a bar
        try:
            doing = f"running {escape(command[0])} on the fog…"
            with err.status(doing) as status, waits.notice.shown_on(status, doing):
                res = client.run(
                    command,
                    inputs=inputs,
                    outputs=output or [],
                    memory_mb=memory,
                    wall_s=wall,
                    image=image,
                    deadline=due,
                ).result()
        except CommandFailed as e:
            if e.result is not None:
                sys.stdout.write(e.result.stdout)
                sys.stderr.write(e.result.stderr)
            raise _fail(str(e), e.result.returncode if e.result else 1) from None
        except FogwheelError as e:
            raise _fail(str(e)) from None
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    for note in res.warnings:  # an output file the task did not ask for: not written
        err.print(f"warning: {note}", style="yellow", markup=False)
    try:
        # Only the names given with -o are in res.outputs: those the user asked to be
        # written, so they replace what is there (never through a link, never outside).
        for path in res.save(out_dir, overwrite=True):
            err.print(f"saved {path}", markup=False, highlight=False, soft_wrap=True)
    except FogwheelError as e:
        raise _fail(str(e)) from None


@app.command()
def jobs(
    job_id: Annotated[
        int | None, typer.Argument(help="Show one job and why each task went where.")
    ] = None,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """List your jobs, or show one job's tasks with their placement history."""
    from fogwheel.errors import FogwheelError

    with _client(coordinator, api_key, 0) as client:
        try:
            if job_id is None:
                _print_jobs(client.jobs(limit))
            else:
                _print_job(client.job(job_id), client.tasks(job_id, limit=limit))
        except FogwheelError as e:
            raise _fail(str(e)) from None


def _duration(text: str | None, option: str) -> float | None:
    """Seconds of a duration option (`2h`), or a usage error that shows the forms."""
    from fogwheel.cli_owners import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None


def _due(deadline: float | None, now: float) -> str:
    """A job's deadline as the table shows it: `in 1h 59m`, `5m ago`, or `-`."""
    if deadline is None:
        return "-"
    left = abs(deadline - now)
    h, m = divmod(int(left) // 60, 60)
    span = f"{h}h {m:02d}m" if h else f"{m}m" if m else f"{int(left)}s"
    return f"in {span}" if deadline >= now else f"{span} ago"


def _print_jobs(rows: list[dict[str, Any]]) -> None:
    from fogwheel.cli_costs import job_cost_cells

    table = Table(title="jobs", caption="cost: credits charged so far; checks: runs that checked")
    cols = ("id", "name", "kind", "state", "done", "failed", "deadline", "cost", "checks")
    for col in cols:
        table.add_column(col, justify="right" if col in ("cost", "checks") else "left")
    now = time.time()
    for j in rows:
        table.add_row(
            str(j["id"]),
            Text(j["name"]),  # a job's name as written: never Rich markup
            j["kind"],
            j["state"],
            f"{j['finished']}/{j['total']}",
            str(j["failed"]),
            _due(j.get("deadline"), now),
            *job_cost_cells(j),
        )
    out.print(table)


def _print_job(job: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    out.print(
        Text.assemble(
            (f"job {job['id']}", "bold"),
            f" {job['name']}: {job['state']}, "
            f"{job['finished']}/{job['total']} finished, {job['failed']} failed",
        )
    )
    from fogwheel.cli_costs import job_cost_line

    out.print(job_cost_line(job), markup=False, highlight=False, soft_wrap=True)
    if job.get("deadline") is not None:  # JobIn.deadline: placement's slack
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["deadline"]))
        out.print(f"deadline {when} ({_due(job['deadline'], time.time())})", highlight=False)
    # The reasons name tasks by the fog's task id ("checks task 812"), so the table shows it.
    table = Table(caption="#: the task's place in the job; task id: the fog's, as reasons name it")
    for col in ("#", "task id", "state", "attempt", "node", "outcome", "why it went there"):
        table.add_column(col)
    for t in tasks:
        for h in t["history"] or [
            {"n": "-", "node_id": "-", "outcome": "-", "reason": "not placed yet"}
        ]:
            table.add_row(
                str(t["index"]),
                str(t["id"]),
                t["state"],
                str(h["n"]),
                h["node_id"],
                str(h["outcome"] or "running"),
                Text(h["reason"]),  # as written: no Rich markup in a reason
            )
    out.print(table)


nodes_app = typer.Typer(
    help="The fog's nodes: list them (no subcommand); operator: pardon a quarantined one; "
    "operator or owner: revoke a device.",
    invoke_without_command=True,
)
app.add_typer(nodes_app, name="nodes")


@nodes_app.callback(invoke_without_command=True)
def nodes(
    ctx: typer.Context, coordinator: CoordinatorOpt = None, api_key: ApiKeyOpt = None
) -> None:
    """List the fog's nodes: state, capacity, reliability, and how far their results are trusted
    (a quarantined node's reason below the table)."""
    from fogwheel.errors import FogwheelError

    if ctx.invoked_subcommand is not None:
        return

    with _client(coordinator, api_key, 0) as client:
        try:
            rows = client.nodes()
        except FogwheelError as e:
            raise _fail(str(e)) from None
    table = Table(title="nodes")
    for col in ("id", "name"):
        table.add_column(col, no_wrap=True)
    for col in (
        "owner",
        "state",
        "cores",
        "quota",
        "held",
        "lost",
        "reliability",
        "agreed",
        "disputed",
        "checked",
    ):
        table.add_column(col)
    for n in rows:
        table.add_row(
            n["id"],
            n["name"],
            n.get("owner_id", "operator"),
            n["state"],
            str(n["cores"]),
            str(n.get("quota", "")),
            str(n["held"]),
            str(n["lost"]),
            f"{n['reliability']:.2f}",
            str(n["agreed"]),
            str(n["disputed"]),
            f"{n['check_rate']:.0%}",
        )
    out.print(table)
    for n in rows:
        if n["state"] == "quarantined":
            reason = n.get("quarantine_reason") or "no reason recorded"
            out.print(f"{n['id']} quarantined: {reason}", markup=False, highlight=False)


@nodes_app.command("pardon")
def nodes_pardon(
    node_id: Annotated[str, typer.Argument(help="The node's id (see `fogwheel nodes`).")],
    coordinator: CoordinatorOpt = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            envvar="FOGWHEEL_ADMIN_KEY",
            help="The operator key that `fogwheel coordinator` printed.",
        ),
    ] = None,
) -> None:
    """Operator: lift a node's quarantine. It is up again on probation (every result checked
    again until it earns trust back); its reason is cleared."""
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    if not admin_key:
        raise _fail("no admin key: pass --admin-key or set FOGWHEEL_ADMIN_KEY")
    _api_call("POST", coordinator, admin_key, f"/v1/nodes/{node_id}/pardon", {})
    out.print(f"node {node_id} pardoned: up again, on probation", markup=False, highlight=False)


# -- the books: usage, earnings, customer keys ----------------------------------------------

HistoryLimitOpt = Annotated[
    int, typer.Option("--limit", "-n", min=1, max=1000, help="Entries of history to show.")
]
BeforeOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Show entries older than this entry id (the next page)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead.")]


@app.command()
def usage(
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    limit: HistoryLimitOpt = 20,
    before: BeforeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what your customer account has been charged: its balance and newest entries.

    Amounts are in credits (1 credit = 1,000,000 micro-credits); charges are negative.
    """
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    if not api_key:
        raise _fail("no API key: pass --api-key or set FOGWHEEL_API_KEY")
    params = {"limit": limit, **({"before": before} if before else {})}
    data = _api_call("GET", coordinator, api_key, "/v1/usage", params)
    _print_account(data, as_json)


@app.command()
def earnings(
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="FOGWHEEL_NODE_DIR",
            help="The node's data dir, whose node.json holds its coordinator and credential.",
        ),
    ] = Path.home() / ".fogwheel" / "node",
    limit: HistoryLimitOpt = 20,
    before: BeforeOpt = None,
    as_json: JsonOpt = False,
    owner: Annotated[
        bool,
        typer.Option(
            "--owner", help="Sum every device of your owner account instead (needs --owner-key)."
        ),
    ] = False,
    owner_key: Annotated[
        str | None,
        typer.Option(
            "--owner-key", envvar="FOGWHEEL_OWNER_KEY", help="Your owner key (with --owner)."
        ),
    ] = None,
    coordinator: CoordinatorOpt = None,
    statement: Annotated[
        bool,
        typer.Option(
            "--statement",
            help="A statement instead: earnings per UTC day and job, and payouts so far "
            "(with --owner: of all your devices).",
        ),
    ] = False,
) -> None:
    """Show what this device has earned: its node's balance and newest entries.

    Run it on the device: it reads the credential that `fogwheel node` saved in --data-dir.
    With --owner, what all your devices earned, each and in total (docs/owners.md).
    With --statement, earnings per day and job and payouts so far; its lines sum to the
    earnings.

    Amounts are in credits (1 credit = 1,000,000 micro-credits).
    """
    if owner and statement:
        url, key = cli_owners._need(
            coordinator, owner_key, "no owner key: pass --owner-key or set FOGWHEEL_OWNER_KEY"
        )
        cli_costs.statement(url, key, "/v1/owners/me/statement", as_json)
        return
    if owner:
        cli_owners.owner_earnings(coordinator, owner_key, as_json)
        return
    path = data_dir / "node.json"
    try:
        ident = json.loads(path.read_text())
        url, credential = ident["coordinator"], ident["credential"]
    except FileNotFoundError:
        raise _fail(
            f"no node credential in {path}: this device has not joined a fog yet "
            "(run `fogwheel node`), or pass the node's --data-dir"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _fail(f"cannot read the node credential in {path}: {e}") from None
    if statement:
        cli_costs.statement(url, credential, "/v1/nodes/me/statement", as_json)
        return
    params = {"limit": limit, **({"before": before} if before else {})}
    data = _api_call("GET", url, credential, "/v1/nodes/me/earnings", params)
    _print_account(data, as_json)


keys_app = typer.Typer(
    help="Operator: customer API keys and scrape-only metrics keys (authenticate with the "
    "admin key).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


class KeyRole(enum.StrEnum):
    """What `fogwheel keys create` makes."""

    CUSTOMER = "customer"
    METRICS = "metrics"


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Who the customer is, e.g. 'acme-render' (needed for a customer key); for a "
            "metrics key, what scrapes with it (default 'prometheus').",
        ),
    ] = None,
    role: Annotated[
        KeyRole,
        typer.Option(
            "--role",
            help="customer: an API key for a new customer; metrics: a scrape-only key that "
            "reads /metrics and nothing else, for Prometheus (docs/metrics.md).",
        ),
    ] = KeyRole.CUSTOMER,
    coordinator: CoordinatorOpt = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            envvar="FOGWHEEL_ADMIN_KEY",
            help="The operator key that `fogwheel coordinator` printed.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print customer id and key as one JSON line.")
    ] = False,
) -> None:
    """Create a customer and print its API key (or, --role metrics, a scrape-only key), once:
    only the key's hash is kept.

    The key alone goes to stdout, so KEY=$(fogwheel keys create --name x) works.

    The customer uses it as --api-key or FOGWHEEL_API_KEY.

    Prometheus sends a metrics key as its bearer token (authorization.credentials_file).

    `fogwheel keys revoke m-…` revokes a metrics key.
    """
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    if not admin_key:
        raise _fail("no admin key: pass --admin-key or set FOGWHEEL_ADMIN_KEY")
    if role is KeyRole.METRICS:
        body = {"name": name or "prometheus"}
        made = _api_call("POST", coordinator, admin_key, "/v1/metrics-keys", {}, body)
        if as_json:
            print(json.dumps(made), flush=True)
            return
        err.print(
            f"metrics key {made['key_id']} ({made['name']}) created; it reads /metrics only. "
            "The key, shown once:",
            markup=False,
            highlight=False,
        )
        print(made["metrics_key"], flush=True)
        return
    if not name:
        raise _fail("a customer key needs --name: who the customer is, e.g. 'acme-render'", 2)
    made = _api_call("POST", coordinator, admin_key, "/v1/customers", {"name": name})
    if as_json:
        print(json.dumps(made), flush=True)
        return
    err.print(
        f"customer {made['customer_id']} ({name}) created; its API key, shown once:",
        markup=False,
        highlight=False,
    )
    print(made["api_key"], flush=True)


def _api_call(
    method: str,
    url: str,
    secret: str | None,
    path: str,
    params: dict[str, Any],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One request (`body` as JSON; authenticated unless `secret` is None) to the first of
    the comma-separated coordinators in `url` that answers. A request goes to the next one
    only when it surely never left, or when sending it twice does no harm (retry.py
    `may_resend`); any failure becomes a one-line error and exit status 1."""
    import httpx

    from fogwheel.retry import FAILOVER_STATUSES, coordinator_urls, may_resend, surely_unsent

    try:
        urls = coordinator_urls(url)
    except ValueError as e:
        raise _fail(f"{e} (--coordinator / FOGWHEEL_COORDINATOR)", 2) from None
    headers = {"authorization": f"Bearer {secret}"} if secret is not None else {}
    for i, base in enumerate(urls):
        more = i + 1 < len(urls)
        try:
            r = httpx.request(
                method, base + path, params=params, json=body, headers=headers, timeout=30.0
            )
        except httpx.HTTPError as e:
            if more and may_resend(method, idempotent=None, sent=not surely_unsent(e)):
                continue
            raise _fail(
                f"cannot reach the coordinator at {base}: {e}; check --coordinator / "
                "FOGWHEEL_COORDINATOR, and that the coordinator runs there"
            ) from None
        if (
            r.status_code in FAILOVER_STATUSES
            and more
            and may_resend(method, idempotent=None, sent=True)
        ):
            continue
        break
    if r.status_code >= 400:
        try:
            message = str(r.json().get("error", r.text[:200]))
        except ValueError:
            message = r.text[:200] or r.reason_phrase
        raise _fail(f"{message} (HTTP {r.status_code})")
    answer: dict[str, Any] = r.json()
    return answer


def _print_account(data: dict[str, Any], as_json: bool) -> None:
    from datetime import UTC, datetime

    from fogwheel.core.ledger import format_credits

    if as_json:
        print(json.dumps(data), flush=True)
        return
    out.print(f"[bold]{data['account']}[/]: balance {format_credits(data['balance'])}")
    if not data["history"]:
        out.print("no entries yet")
        return
    table = Table(title="newest entries")
    for col in ("entry", "time (UTC)", "transaction", "credits", "task", "memo"):
        table.add_column(col, justify="right" if col in ("entry", "credits") else "left")
    for e in data["history"]:
        when = datetime.fromtimestamp(e["created_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        amount = format_credits(e["amount"]).removesuffix(" credits")
        table.add_row(
            str(e["id"]),
            when,
            e["txn"],
            amount if e["amount"] < 0 else "+" + amount,
            "-" if e["task_id"] is None else str(e["task_id"]),
            e["memo"],
        )
    out.print(table)
    if data.get("next_before"):
        out.print(f"older entries: --before {data['next_before']}")


# -- k-mers (`fogwheel mapreduce …` is src/fogwheel/cli_mapreduce.py) -------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="End with one JSON line of figures.")]


@app.command()
def kmer(
    fasta: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, help="FASTA or FASTQ files.")
    ],
    k: Annotated[
        int, typer.Option("--kmer-length", "-k", min=1, max=31, help="k-mer length.")
    ] = 21,
    counts: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write kmer<TAB>count lines.")
    ] = Path("counts.tsv"),
    split_mb: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            help="Bases per map task, millions (at most 4, less for a small input, so that "
            "every slot gets two).",
        ),
    ] = None,
    partitions: PartitionsOpt = None,
    backups: BackupsOpt = True,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    replicas: ReplicasOpt = "adaptive",
    max_cost: MaxCostOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Count canonical k-mers across the fog, as `jellyfish count -C -m K` + `dump -c`, sorted.

    Example: fogwheel kmer examples/genome.fa -k 21 --out counts.tsv --local 2
    """
    from fogwheel.workloads.kmer import KmerJob

    _run_mapreduce(
        KmerJob(k),
        fasta,
        counts,
        split_mb=split_mb,
        partitions=partitions,
        backups=backups,
        coordinator=coordinator,
        api_key=api_key,
        local=local,
        replicas=replicas,
        as_json=as_json,
    )


# -- training ----------------------------------------------------------------------------------


@app.command()
def train(
    workers: Annotated[int, typer.Option(min=1, max=64, help="DiLoCo workers (K).")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Outer rounds.")] = 10,
    inner_steps: Annotated[int, typer.Option(min=1, help="Inner AdamW steps a round (H).")] = 50,
    batch: Annotated[int, typer.Option(min=1, help="Windows a step.")] = 16,
    inner_lr: Annotated[float, typer.Option(min=0.0, help="Inner AdamW learning rate.")] = 1e-3,
    min_workers: Annotated[
        int | None,
        typer.Option(min=1, help="Take the outer step once this many workers reported."),
    ] = None,
    round_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds before a round closes with what it has.")
    ] = 600.0,
    compression: Annotated[
        str,
        typer.Option(
            "--compress",
            "--compression",
            help="Pseudo-gradients on the wire: none (fp32), fp16, int8, or "
            "topk:DENSITY:BITS[:DECAY] (the DENSITY largest of every 4096, BITS of 2, 4 or 8 "
            "a value, the rest kept on the device as error feedback, decayed by DECAY a round, "
            "default 1; e.g. topk:0.05:2:0.9).",
        ),
    ] = "fp16",
    fragments: Annotated[
        int,
        typer.Option(
            min=1,
            help="Streaming DiLoCo: the parameters in this many fragments, one synchronised a "
            "round (each round runs inner steps / fragments), so no sync sends the whole model.",
        ),
    ] = 1,
    aggregate: Annotated[
        str,
        typer.Option(
            help="The outer aggregate of the pseudo-gradients: mean (plain DiLoCo), "
            "centered-clip, trimmed-mean or median (robust to a minority of poisoned ones; "
            "docs/training.md).",
        ),
    ] = "centered-clip",
    audit_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Chance a worker's round is recomputed on two devices and judged by the "
            "coordinator's quorum (a liar is quarantined); suspects are audited always.",
        ),
    ] = 0.1,
    pin: Annotated[
        str | None,
        typer.Option(
            metavar="PREFIX",
            help="One worker a device: worker k's first round runs only on a device started "
            "with `fogwheel node --capability PREFIXk` (e.g. --pin w for w0, w1, ...), and its "
            "kept state holds it there after. Without it any device may take any worker, and "
            "a fast one may take two.",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="small (about 0.8M parameters) or tiny (25K, for tests).")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and the data order.")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where the run's manifest, curves and sample go.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory (its settings are kept)."),
    ] = None,
    coordinator: CoordinatorOpt = None,
    api_key: ApiKeyOpt = None,
    local: LocalOpt = 0,
    max_cost: MaxCostOpt = None,
    as_json: JsonOpt = False,
) -> None:
    r"""Train a byte-level Transformer on Python's documentation with DiLoCo across the fog.

    Each round, every worker runs H AdamW steps on its shard and sends back only its
    pseudo-gradient; the outer Nesterov step runs here. Needs the \[ml] extra (PyTorch).

    Example: fogwheel train --workers 2 --rounds 5 --inner-steps 20 --local 2
    """
    try:
        from fogwheel.workloads import diloco, transformer
    except ImportError as e:
        raise _fail(
            f"training needs PyTorch ({e}): pip install torch==2.13.0 && pip install -e '.[ml]'"
        ) from None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fogwheel.errors import FogwheelError

    if resume is not None:
        directory = resume
    else:
        if model not in ("small", "tiny"):
            raise _fail(f"--model must be small or tiny, not {model!r}")
        config = transformer.ModelConfig.tiny() if model == "tiny" else transformer.ModelConfig()
        try:
            settings = diloco.TrainConfig(
                model=config.to_dict(),
                workers=workers,
                rounds=rounds,
                inner_steps=inner_steps,
                batch=batch,
                inner_lr=inner_lr,
                min_workers=min_workers,
                round_timeout=round_timeout,
                compression=compression,
                fragments=fragments,
                aggregate=aggregate,
                audit_rate=audit_rate,
                pin=pin,
                seed=seed,
            )
        except ValueError as e:
            raise _fail(str(e)) from None
        directory = run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    with _client(coordinator, api_key, local, 1) as client:
        try:
            if resume is not None:
                trainer = diloco.Trainer.resume(client, directory)
            else:
                trainer = diloco.Trainer.start(client, settings, directory)
        except (FileNotFoundError, FileExistsError, ValueError, FogwheelError) as e:
            raise _fail(str(e)) from None
        run = trainer.run
        cfg = run.config
        err.print(
            f"run {run.run_id} in {directory}: {cfg.workers} workers, H={cfg.inner_steps}, "
            f"{cfg.compression} pseudo-gradients, {trainer.model.param_count():,} parameters"
            + (f", {cfg.fragments} fragments" if cfg.fragments > 1 else ""),
            highlight=False,
        )
        if trainer.initial_val is not None:
            err.print(f"initial validation loss {trainer.initial_val:.3f}", highlight=False)
        with Progress(
            TextColumn("round {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("train {task.fields[train]}  val {task.fields[val]}"),
            TimeElapsedColumn(),
            waits.notice.column(),  # why it waits, while it does (cli_waits.py)
            console=err,
        ) as bar:
            task = bar.add_task("train", total=cfg.rounds, completed=run.round, train="-", val="-")

            def progress(rec: Any, _run: Any) -> None:
                bar.update(
                    task,
                    completed=rec.round,
                    train=f"{rec.train_loss:.3f}",
                    val=f"{rec.val_loss:.3f}",
                )

            try:
                trainer.train(progress)
            except (FogwheelError, RuntimeError) as e:
                raise _fail(f"{e}; continue with: fogwheel train --resume {directory}") from None
        report = trainer.write_report()
    history = run.history
    out.print(
        f"trained {len(history)} rounds: validation loss "
        f"{history[0].val_loss if history else float('nan'):.3f} after round 1, "
        f"{history[-1].val_loss:.3f} at the end",
        highlight=False,
    )
    for worker, sent in sorted(run.bytes_per_worker.items()):
        out.print(f"  {worker} sent {sent / 1e6:.2f} MB of pseudo-gradients", highlight=False)
    peak = max((h.bytes_up_max for h in history), default=0)
    out.print(f"  peak {peak:,} bytes a worker in one sync", highlight=False)
    dropped = sum(h.dropped for h in history)
    rejected = sum(h.rejected for h in history)
    if dropped or rejected:
        out.print(f"  dropped late: {dropped}, rejected as malformed: {rejected}")
    wrote = f"wrote {report['csv']}" + (f" and {report['png']}" if report["png"] else "")
    out.print(wrote, markup=False, highlight=False)  # paths as written
    out.print("sample:", highlight=False)
    out.print(report["sample"], markup=False, highlight=False)
    if as_json:
        print(
            json.dumps(
                {
                    "run": run.run_id,
                    "dir": str(directory),
                    "rounds": len(history),
                    "initial_val_loss": trainer.initial_val,
                    "val_loss": [h.val_loss for h in history],
                    "bytes_per_worker": run.bytes_per_worker,
                    "peak_sync_bytes": peak,
                    "dropped": dropped,
                    "rejected": rejected,
                }
            ),
            flush=True,
        )


# owners, join tokens, revocation (src/fogwheel/cli_owners.py)
from fogwheel import cli_owners  # noqa: E402

cli_owners.register(app, keys_app, nodes_app)

# price, keys credit-limit, the cost columns and --max-cost (src/fogwheel/cli_costs.py)
from fogwheel import cli_costs  # noqa: E402

cli_costs.register(app, keys_app)

# cancel, attach, logs; Ctrl-C while a job runs (src/fogwheel/cli_jobs.py)
from fogwheel import cli_jobs  # noqa: E402

cli_jobs.register(app)

# blobs put|get|ls; large inputs of `run -i` (src/fogwheel/cli_blobs.py)
from fogwheel import cli_blobs  # noqa: E402

cli_blobs.register(app)

# images push|list: program images for command tasks (src/fogwheel/cli_images.py)
from fogwheel import cli_images  # noqa: E402

cli_images.register(app)

# agent publish|versions, rollouts list|show|cancel (src/fogwheel/cli_rollouts.py)
from fogwheel import cli_rollouts  # noqa: E402

cli_rollouts.register(app)

# apps publish|list|show|set-current: versioned, signed bundles (src/fogwheel/cli_apps.py)
from fogwheel import cli_apps  # noqa: E402

cli_apps.register(app)

# up: a local fog, one coordinator or several behind nginx (src/fogwheel/cli_up.py)
from fogwheel import cli_up  # noqa: E402

cli_up.register(app)

# mapreduce wordcount|grep|run|streaming, and kmer's progress bars (src/fogwheel/cli_mapreduce.py)
from fogwheel import cli_mapreduce  # noqa: E402
from fogwheel.cli_mapreduce import BackupsOpt, PartitionsOpt, _run_mapreduce  # noqa: E402

cli_mapreduce.register(app)

# sim: the discrete-event simulator over core/ (src/fogwheel/cli_sim.py)
from fogwheel import cli_sim  # noqa: E402

cli_sim.register(app)

# render: POV-Ray with POV-Ray's own options (src/fogwheel/cli_render.py)
from fogwheel import cli_render  # noqa: E402

cli_render.register(app)


# node install|uninstall|status|pause|resume: the node as a service (src/fogwheel/cli_node.py)
from fogwheel import cli_node  # noqa: E402

cli_node.register(app, node)

# cdn publish|get|url|stats (src/fogwheel/cli_cdn.py)
from fogwheel.cli_cdn import cdn_app  # noqa: E402

app.add_typer(cdn_app, name="cdn")


def main() -> None:
    app()
