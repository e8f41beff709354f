"""A throwaway fog on this machine: a coordinator and N node agents as real processes.

Used by `fogwheel up`, `fogwheel demo`, every `--local N` option and the integration tests.

With `coordinators=N` (and a PostgreSQL `db`) it starts N coordinator processes on that one
database, each on a port of its own, as one service: they share one data dir (the signing key
and the blobs are there) and every node is given all their URLs, a different one first, so
that the nodes spread over them and move to another when theirs stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from fogwheel.errors import FogwheelError
from fogwheel.store.sql import new_secret


class LocalFog:
    def __init__(
        self,
        nodes: int = 4,
        *,
        cores_per_node: int = 1,
        lease_seconds: float = 5.0,
        workdir: str | os.PathLike[str] | None = None,
        db: str | None = None,
        host: str = "127.0.0.1",
        node_args: list[str] | None = None,
        sandbox: bool | None = None,
        coordinators: int = 1,
        coordinator_args: list[str] | None = None,
        gone_after_s: float | None = None,
    ) -> None:
        if coordinators < 1:
            raise ValueError("a fog needs at least one coordinator")
        if coordinators > 1 and not (db or "").startswith("postgresql"):
            raise FogwheelError(
                f"{coordinators} coordinators share one database: give a PostgreSQL URL "
                "(db='postgresql+psycopg://USER@HOST/DB'); SQLite serves one process"
            )
        self.n_nodes = nodes
        self.cores_per_node = cores_per_node
        self.lease_seconds = lease_seconds
        # A few nodes on one machine: a silent one is gone after three leases (the coordinator's
        # own default waits at least 120 s, so that a large idle fleet may sync rarely).
        self.gone_after_s = 3 * lease_seconds if gone_after_s is None else gone_after_s
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fogwheel-"))
        self.db = db
        self.host = host
        self.node_args = node_args or []
        self.coordinator_args = coordinator_args or []  # more `fogwheel coordinator` options
        # A local fog runs its owner's own code: where no bubblewrap works (sandbox=None and
        # detection fails), its nodes run unconfined and `sandboxed` says so; sandbox=True
        # insists on one, as a real node does.
        if sandbox is None:
            from fogwheel.node.sandbox import detect

            sandbox = detect() is not None
            if not sandbox:
                self.node_args = [*self.node_args, "--unsafe-no-sandbox"]
        self.sandboxed = sandbox
        self.join_token = new_secret("fwj")
        self.api_key = new_secret("fwc")
        self.admin_key = new_secret("fwa")
        self.key_pin = ""  # the coordinator key's pin, read once it has started
        # One entry per coordinator process; index 0 is the one `url`, `port` and
        # `coordinator` name (the whole of a one-coordinator fog).
        self.urls: list[str] = [""] * coordinators
        self.ports: list[int] = [0] * coordinators
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * coordinators
        self.nodes: list[subprocess.Popen[bytes] | None] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    @url.setter
    def url(self, value: str) -> None:
        self.urls[0] = value

    @property
    def port(self) -> int:
        return self.ports[0]

    @port.setter
    def port(self, value: int) -> None:
        self.ports[0] = value

    @property
    def coordinator(self) -> subprocess.Popen[bytes] | None:
        return self.procs[0]

    @coordinator.setter
    def coordinator(self, value: subprocess.Popen[bytes] | None) -> None:
        self.procs[0] = value

    @property
    def coordinator_url(self) -> str:
        """Every coordinator's URL, separated by commas: what a node or the SDK is given."""
        return ",".join(self.urls)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalFog:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    def start(self, wait_for_nodes: bool = True) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # the first alone: it creates the schema and the signing key; then the others at
        # once, which find them (two creating them at the same time would race)
        self.start_coordinator(index=0)
        for i in range(1, len(self.procs)):
            self._spawn_coordinator(i)
        for i in range(1, len(self.procs)):
            self._await_coordinator(i)
        for _ in range(self.n_nodes):
            self.add_node()
        if wait_for_nodes:
            self.wait_for_nodes(self.n_nodes)

    def start_coordinator(self, timeout: float = 30.0, index: int = 0) -> None:
        """Start coordinator `index` (again, after a kill: on the port it had)."""
        self._spawn_coordinator(index)
        self._await_coordinator(index, timeout)

    def _coordinator_files(self, index: int) -> tuple[Path, Path]:
        name = "coordinator" if index == 0 else f"coordinator-{index}"
        return self.dir / f"{name}.ready", self.dir / f"{name}.log"

    def _spawn_coordinator(self, index: int) -> None:
        ready, log_path = self._coordinator_files(index)
        ready.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "fogwheel",
            "coordinator",
            "--data-dir",
            str(self.dir / "coordinator"),
            "--host",
            self.host,
            "--port",
            str(self.ports[index]),
            "--lease-seconds",
            str(self.lease_seconds),
            "--gone-after",
            str(self.gone_after_s),
            "--ready-file",
            str(ready),
            "--quiet",
            "--allow-private-serve",  # its nodes serve the CDN from this machine's addresses
            *self.coordinator_args,
        ]
        # secrets (and a database URL, which may hold a password) travel in the environment,
        # readable by this user only, never on the command line every local user can read
        secrets = {
            "FOGWHEEL_JOIN_TOKEN": self.join_token,
            "FOGWHEEL_API_KEY": self.api_key,
            "FOGWHEEL_ADMIN_KEY": self.admin_key,
        }
        if self.db:
            secrets["FOGWHEEL_DB"] = self.db
        self.procs[index] = self._spawn(cmd, log_path, secrets)

    def _await_coordinator(self, index: int, timeout: float = 30.0) -> None:
        """Wait until coordinator `index` has written its ready file and answers."""
        ready, log_path = self._coordinator_files(index)
        proc = self.procs[index]
        assert proc is not None
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise FogwheelError(
                    f"the coordinator exited at start: see {log_path}:\n" + _tail(log_path)
                )
            if time.monotonic() > deadline:
                raise FogwheelError(f"the coordinator did not start in {timeout:g} s")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        url = self.urls[index] = info["url"]
        pin = info.get("key_pin", "")
        if index > 0 and pin != self.key_pin:
            # nodes pin one key: a coordinator signing with another would be refused by all
            raise FogwheelError(
                f"coordinator {index} signs with another key than coordinator 0 "
                f"({pin or 'none'} vs {self.key_pin or 'none'}): they must share one"
            )
        self.key_pin = pin
        self.ports[index] = int(url.rsplit(":", 1)[1])
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise FogwheelError("the coordinator does not answer /v1/health")
            time.sleep(0.02)

    def add_node(
        self, *extra: str, env: dict[str, str] | None = None, first: int | None = None
    ) -> int:
        """Start a node agent; with several coordinators it is given all their URLs,
        coordinator `first`'s first (default: the next in turn, so nodes spread)."""
        i = len(self.nodes)
        k = (i if first is None else first) % len(self.urls)
        urls = self.urls[k:] + self.urls[:k]
        cmd = [
            sys.executable,
            "-m",
            "fogwheel",
            "node",
            "--coordinator",
            ",".join(urls),
            "--cores",
            str(self.cores_per_node),
            "--data-dir",
            str(self.dir / f"node-{i}"),
            "--name",
            f"local-{i}",
            *self.node_args,
            *extra,
        ]
        secrets = {"FOGWHEEL_JOIN_TOKEN": self.join_string}  # not on argv: see start_coordinator
        self.nodes.append(self._spawn(cmd, self.dir / f"node-{i}.log", {**secrets, **(env or {})}))
        return i

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = httpx.get(f"{self.url}/v1/nodes", headers=self.headers, timeout=5)
                if r.status_code == 200 and sum(x["state"] == "up" for x in r.json()["nodes"]) >= n:
                    return
            except httpx.TransportError:
                pass
            for i, proc in enumerate(self.nodes):
                if proc is not None and (proc.poll() or 0) > 0:  # it failed (not killed by us)
                    log = self.dir / f"node-{i}.log"
                    raise FogwheelError(f"node {i} exited at start; see {log}:\n" + _tail(log))
            if time.monotonic() > deadline:
                raise FogwheelError(f"{n} nodes did not join within {timeout:g} s; see {self.dir}")
            time.sleep(0.05)

    @property
    def join_string(self) -> str:
        """What a node joins with: the token and the pin of the coordinator's key."""
        return f"{self.join_token}#{self.key_pin}" if self.key_pin else self.join_token

    def write_env_file(self, url: str | None = None) -> Path:
        """`fogwheel.env` in the fog's dir (mode 0600): the URL (`url`, else every
        coordinator's) and every secret, to `source`."""
        from fogwheel.secretfile import write_env_file

        path = self.dir / "fogwheel.env"
        write_env_file(
            path,
            {
                "FOGWHEEL_COORDINATOR": url or self.coordinator_url,
                "FOGWHEEL_API_KEY": self.api_key,
                "FOGWHEEL_ADMIN_KEY": self.admin_key,
                "FOGWHEEL_JOIN_TOKEN": self.join_string,
            },
        )
        return path

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.nodes[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait()

    def kill_coordinator(self, index: int = 0) -> None:
        """SIGKILL coordinator `index`: what it acknowledged is in the database already."""
        proc = self.procs[index]
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.nodes:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.nodes:
            if proc is not None:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for coordinator in self.procs:
            if coordinator and coordinator.poll() is None:
                coordinator.send_signal(signal.SIGTERM)
        for coordinator in self.procs:
            if coordinator is None:
                continue
            try:
                coordinator.wait(10)
            except subprocess.TimeoutExpired:
                coordinator.kill()
                coordinator.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(
        self, cmd: list[str], log_path: Path, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        try:
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""
