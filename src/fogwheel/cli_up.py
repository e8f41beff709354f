"""`fogwheel up`: a fog on this machine — one coordinator, or several on one PostgreSQL
database behind nginx as one URL — with local nodes, until Ctrl-C.

Several coordinators are one service because the database is the truth (DESIGN.md, principle
3): any of them answers any request. nginx (Debian's package) puts them behind one URL: an
upstream of all of them, a request that found no coordinator (connection refused, a timeout,
a 502/503/504) passed to the next, and a request that may have been acted on (a POST already
sent) never passed twice — nginx's own rule for non-idempotent methods, which is the SDK's
(retry.may_resend). It runs as this user, from a config and prefix of its own in the fog's
directory, and touches no system config. The layout for real machines is in docs/scale.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

INSTALL_NGINX = "apt-get install -y nginx"
UPSTREAM = "fogwheel_coordinators"
# Longer than any long-poll (a results poll waits up to 60 s, a node's sync less) and than a
# blob upload's slowest accepted pace, so that nginx never cuts a request that is working.
LONG_S = 300
# Under uvicorn's keep-alive (30 s, coordinator/server.py): nginx never reuses a connection
# the coordinator is closing, which would fail a POST that may not be passed on.
KEEPALIVE_S = 20


@dataclass(frozen=True)
class Balancer:
    """What nginx is told: where it listens, the coordinators behind it, and their limits."""

    port: int
    upstreams: tuple[str, ...]  # "127.0.0.1:PORT" of each coordinator
    prefix: Path
    max_body_mb: int  # the coordinator's --max-body-mb
    max_blob_mb: int  # … and --max-blob-mb (blob uploads are streamed, with a limit of their own)
    user: str | None = None  # only when started as root: the workers' user (they read prefix)


def nginx_conf(b: Balancer) -> str:
    """The nginx configuration of a balancer: a pure function of what it balances."""
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in b.upstreams)
    tmp = b.prefix / "tmp"
    user = f"user {b.user};\n" if b.user else ""
    # nginx's own refusals in the API's form: one JSON sentence that says what to do
    too_large = (
        f"request body too large: at most {b.max_body_mb} MB, a blob upload at most "
        f"{b.max_blob_mb} MB"
    )
    no_coordinator = "no coordinator behind this balancer answered: try again shortly"
    return f"""# written by `fogwheel up`: {len(b.upstreams)} coordinators of one fog behind one URL
{user}daemon off;
worker_processes 1;
pid {b.prefix / "nginx.pid"};
error_log {b.prefix / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    upstream {UPSTREAM} {{
{servers}
        keepalive 32;
        keepalive_timeout {KEEPALIVE_S}s;
    }}
    server {{
        listen 127.0.0.1:{b.port};
        # the coordinator's own limits: larger bodies are refused here, as it would
        client_max_body_size {b.max_body_mb}m;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        # set, not appended: a client's own X-Forwarded-For is not believed (the coordinators
        # read this header from 127.0.0.1 only: --trusted-proxy)
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_connect_timeout 2s;
        proxy_send_timeout {LONG_S}s;
        proxy_read_timeout {LONG_S}s;
        # a request no coordinator took goes to the next one; a POST already sent never does
        # (no `non_idempotent`): the client decides whether it may be sent again
        proxy_next_upstream error timeout http_502 http_503 http_504;
        proxy_next_upstream_tries {len(b.upstreams)};
        proxy_next_upstream_timeout 10s;
        proxy_buffering off;  # long-polls and downloads stream through as they come
        proxy_intercept_errors off;
        error_page 413 @too_large;
        # nginx's own refusals as JSON; the status stays the one nginx met (502, 503, 504)
        error_page 502 503 504 @no_coordinator;
        location / {{
            proxy_pass http://{UPSTREAM};
        }}
        location /v1/blobs/ {{
            client_max_body_size {b.max_blob_mb}m;
            proxy_request_buffering off;  # a blob streams to the coordinator, never to disk here
            proxy_pass http://{UPSTREAM};
        }}
        location @too_large {{
            default_type application/json;
            return 413 '{{"error": "{too_large}"}}';
        }}
        location @no_coordinator {{
            default_type application/json;
            return 502 '{{"error": "{no_coordinator}"}}';
        }}
    }}
}}
"""


def find_nginx(given: str | None = None) -> str:
    """The nginx binary (`given`, else on PATH or in /usr/sbin), or a FogwheelError that says
    how to install it."""
    from fogwheel.errors import ConfigError

    for candidate in [given] if given else [shutil.which("nginx"), "/usr/sbin/nginx"]:
        if candidate and os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    where = f"no nginx at {given}" if given else "nginx is not installed"
    raise ConfigError(
        f"{where}: several coordinators are served as one URL by nginx; install Debian's "
        f"package with `{INSTALL_NGINX}` (fogwheel runs it as you, with its own config), "
        "or start one coordinator (--coordinators 1)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Nginx:
    """An nginx process of this user's, with its config and prefix in `prefix`."""

    def __init__(self, binary: str, balancer: Balancer) -> None:
        self.binary = binary
        self.balancer = balancer
        self.url = f"http://127.0.0.1:{balancer.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        from fogwheel.errors import FogwheelError

        prefix = self.balancer.prefix
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(self.balancer))
        log = prefix / "error.log"
        with open(prefix / "nginx.out", "ab") as sink:
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                said = _tail(prefix / "nginx.out") + _tail(log)
                raise FogwheelError(f"nginx exited at start (see {log}):\n{said}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise FogwheelError(f"nginx does not answer at {self.url}; see {log}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful (SIGQUIT: requests under way finish), then SIGKILL of its group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def up(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=0, help="Local node agents.")] = 4,
    coordinators: Annotated[
        int,
        typer.Option(
            "--coordinators",
            min=1,
            help="Coordinator processes on one PostgreSQL database (--db), behind nginx as one "
            "URL; each node is given all their URLs.",
        ),
    ] = 1,
    db: Annotated[
        str | None,
        typer.Option(
            envvar="FOGWHEEL_DB",
            help="Database URL, e.g. postgresql+psycopg://USER@HOST/DB (default: SQLite in "
            "the data dir; several coordinators need PostgreSQL).",
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="The fog's port on 127.0.0.1 (nginx's with several coordinators); 0: a free one.",
        ),
    ] = 0,
    cores_per_node: Annotated[int, typer.Option(min=1)] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep state here (default: a temporary dir).")
    ] = None,
    lease_seconds: Annotated[float, typer.Option(min=1.0)] = 10.0,
    nginx: Annotated[
        str | None, typer.Option(help="The nginx binary (default: nginx on PATH).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print URL and key as one JSON line.")
    ] = False,
) -> None:
    """Start a coordinator (or several behind nginx) and N local nodes, print the URL and an
    API key, stay up until Ctrl-C or SIGTERM."""
    from fogwheel.cli import _fail  # here, not above: fogwheel.cli imports this module
    from fogwheel.errors import FogwheelError
    from fogwheel.localfog import LocalFog

    try:
        fog = LocalFog(
            nodes,
            cores_per_node=cores_per_node,
            workdir=data_dir,
            lease_seconds=lease_seconds,
            db=db,
            coordinators=coordinators,
            # behind nginx on this machine: the devices' addresses come in X-Forwarded-For
            coordinator_args=["--trusted-proxy", "127.0.0.1"] if coordinators > 1 else None,
        )
    except FogwheelError as e:
        raise _fail(str(e), 2) from None
    try:
        binary = find_nginx(nginx) if coordinators > 1 else None
    except FogwheelError as e:
        fog.stop()  # nothing started: this removes the temporary dir it made
        raise _fail(str(e), 2) from None
    if coordinators == 1:
        fog.ports[0] = port
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    balancer: Nginx | None = None
    try:
        fog.start(wait_for_nodes=False)
        if binary is not None:
            balancer = _start_balancer(binary, fog, port)
        fog.wait_for_nodes(nodes)
        url = balancer.url if balancer else fog.url
        _announce(fog, url, balancer, nodes, as_json)
        while not stop.wait(0.5):
            if balancer is not None and balancer.proc and balancer.proc.poll() is not None:
                raise FogwheelError(
                    f"nginx stopped (see {fog.dir / 'nginx' / 'error.log'}): stopping the fog"
                )
    except KeyboardInterrupt:
        pass
    except FogwheelError as e:
        raise _fail(str(e)) from None
    finally:
        if balancer is not None:
            balancer.stop()
        fog.stop()


def _start_balancer(binary: str, fog: Any, port: int) -> Nginx:
    from fogwheel.coordinator.server import CoordinatorConfig

    limits = CoordinatorConfig()  # the limits the coordinators were started with
    prefix = fog.dir / "nginx"
    balancer = Nginx(
        binary,
        Balancer(
            port=port or free_port(),
            upstreams=tuple(u.removeprefix("http://") for u in fog.urls),
            prefix=prefix,
            max_body_mb=limits.max_body_mb,
            max_blob_mb=limits.max_blob_mb,
            user=_user_if_root(),
        ),
    )
    balancer.start()
    return balancer


def _user_if_root() -> str | None:
    """nginx started by root runs its workers as `nobody`, who could not read the prefix in
    this user's directory: name this user instead. Started by anyone else, it runs as them."""
    if os.geteuid() != 0:
        return None
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _announce(fog: Any, url: str, balancer: Nginx | None, nodes: int, as_json: bool) -> None:
    from fogwheel.cli import out

    info: dict[str, Any] = {
        "url": url,
        "api_key": fog.api_key,
        "join_token": fog.join_token,
        "join_string": fog.join_string,
        "admin_key": fog.admin_key,
        "nodes": nodes,
        "dir": str(fog.dir),
        "sandboxed": fog.sandboxed,
    }
    if balancer is not None:
        info["coordinators"] = list(fog.urls)
        info["coordinator_pids"] = [p.pid if p else None for p in fog.procs]
        info["nginx_pid"] = balancer.proc.pid if balancer.proc else None
    info["env_file"] = str(fog.write_env_file(url))
    if as_json:
        print(json.dumps(info), flush=True)
        return
    say = partial(out.print, soft_wrap=True, highlight=False)  # a long key stays whole
    if balancer is None:
        say(f"[bold green]fog up[/] at {url} with {nodes} nodes")
    else:
        say(
            f"[bold green]fog up[/] at {url}: {len(fog.urls)} coordinators behind nginx, "
            f"{nodes} nodes"
        )
        for i, (u, p) in enumerate(zip(fog.urls, fog.procs, strict=True)):
            say(f"  coordinator {i}: {u} (pid {p.pid if p else '-'})", markup=False)
    if not fog.sandboxed:
        say(
            "[bold yellow]warning:[/] no usable bubblewrap: these local nodes run guest "
            "code unconfined; `apt-get install bubblewrap` sandboxes them"
        )
    say(f"  data dir: {fog.dir}", markup=False)
    say(f"  export FOGWHEEL_COORDINATOR={url}", markup=False)
    say(f"  export FOGWHEEL_API_KEY={fog.api_key}", markup=False)
    say(f"  admin key: {fog.admin_key}", markup=False)
    say(f"  all of these, for your shell: source {info['env_file']}", markup=False)
    say(
        f"  join more nodes: FOGWHEEL_JOIN_TOKEN='{fog.join_string}' "
        f"fogwheel node -c {fog.coordinator_url}",
        markup=False,
    )
    say("  Ctrl-C to stop")


def register(app: typer.Typer) -> None:
    """Add `up` to the `fogwheel` app."""
    app.command()(up)
