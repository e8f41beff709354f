"""A throwaway fog on this machine: a coordinator and N node agents as real processes.

Used by `fogwheel up`, `fogwheel demo`, every `--local N` option and the integration tests.
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
    ) -> None:
        self.n_nodes = nodes
        self.cores_per_node = cores_per_node
        self.lease_seconds = lease_seconds
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fogwheel-"))
        self.db = db
        self.host = host
        self.node_args = node_args or []
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
        self.url = ""
        self.port = 0
        self.key_pin = ""  # the coordinator key's pin, read once it has started
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes] | None] = []

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalFog:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    def start(self, wait_for_nodes: bool = True) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start_coordinator()
        for _ in range(self.n_nodes):
            self.add_node()
        if wait_for_nodes:
            self.wait_for_nodes(self.n_nodes)

    def start_coordinator(self, timeout: float = 30.0) -> None:
        ready = self.dir / "coordinator.ready"
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
            str(self.port),
            "--lease-seconds",
            str(self.lease_seconds),
            "--ready-file",
            str(ready),
            "--quiet",
            "--allow-private-serve",  # its nodes serve the CDN from this machine's addresses
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
        self.coordinator = self._spawn(cmd, self.dir / "coordinator.log", secrets)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.coordinator.poll() is not None:
                raise FogwheelError(
                    f"the coordinator exited at start: see {self.dir / 'coordinator.log'}:\n"
                    + _tail(self.dir / "coordinator.log")
                )
            if time.monotonic() > deadline:
                raise FogwheelError(f"the coordinator did not start in {timeout:g} s")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.url = info["url"]
        self.key_pin = info.get("key_pin", "")
        self.port = int(self.url.rsplit(":", 1)[1])
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise FogwheelError("the coordinator does not answer /v1/health")
            time.sleep(0.02)

    def add_node(self, *extra: str, env: dict[str, str] | None = None) -> int:
        i = len(self.nodes)
        cmd = [
            sys.executable,
            "-m",
            "fogwheel",
            "node",
            "--coordinator",
            self.url,
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

    def write_env_file(self) -> Path:
        """`fogwheel.env` in the fog's dir (mode 0600): the URL and every secret, to `source`."""
        from fogwheel.secretfile import write_env_file

        path = self.dir / "fogwheel.env"
        write_env_file(
            path,
            {
                "FOGWHEEL_COORDINATOR": self.url,
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

    def kill_coordinator(self) -> None:
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.kill()
            self.coordinator.wait()

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
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)
            try:
                self.coordinator.wait(10)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()
                self.coordinator.wait()
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
