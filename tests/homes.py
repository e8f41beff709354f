"""Emulated homes: a "public" network and N home routers doing NAT, built with `ip netns`.

Issue #16 item 2. Everything lives in network namespaces this module creates (their names all
start with `prefix`), so nothing touches the machine's own network and nothing leaves it:

    {p}-pub     the public network: a bridge `pub` at 10.77.0.1/24 (the coordinator and the
                customers' fetchers run here, on that address)
    {p}-r{i}    home i's router: `wan` 10.77.0.{10+i}/24 on the public bridge, `lan`
                192.168.{i}.1/24 on the home's own bridge; NAT by iptables (below); its
                uplink (wan egress) shaped by `tc tbf`; optionally miniupnpd on `lan`
    {p}-h{i}d{j} device j of home i: 192.168.{i}.{2+j}, default route via the router

NAT behaviours (RFC 4787 terms) and the iptables rules that give them:

- `full`: endpoint-independent mapping (port kept) and filtering ("full cone"):
  `POSTROUTING -o wan -j MASQUERADE` plus `PREROUTING -i wan -p tcp -j DNAT --to-destination
  <device 0>` for every port nobody mapped.
- `restricted`: endpoint-independent mapping, address-dependent filtering ("restricted
  cone"): MASQUERADE, `-m recent --rdest --set` on what the LAN sends, and the DNAT to device 0
  only from an address in that list (`-m recent --rsource --rcheck`).
- `port_restricted`: endpoint-independent mapping, address- and port-dependent filtering:
  `MASQUERADE` alone (conntrack lets in replies of the exact 5-tuple only).
- `symmetric`: endpoint-dependent mapping (a random port per connection), address- and
  port-dependent filtering: `MASQUERADE --random-fully`.

Every router also drops unsolicited inbound TCP to itself and to the LAN (FORWARD policy DROP
but for ESTABLISHED/RELATED, DNAT'd and miniupnpd's chain), as a home router does. With `upnp`
the router runs Debian's miniupnpd (legacy iptables backend), which adds its port mappings to
the MINIUPNPD chains. Processes run inside with `ip netns exec` (`Homes.popen`); `close()`
kills them and deletes every namespace, and setup first removes what a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PUBLIC_IP = "10.77.0.1"
STUN_PORT = 3478
NAT_KINDS = ("full", "restricted", "port_restricted", "symmetric")
IPT = "iptables-legacy"  # miniupnpd-iptables speaks to the legacy tables (libip4tc)


class HomesUnavailable(RuntimeError):
    """This machine cannot build the homes (not root, no netns, a tool missing): why."""


def unavailable() -> str | None:
    """Why the homes cannot be built here; None when they can."""
    if os.geteuid() != 0:
        return "emulated homes need root (ip netns, iptables, tc)"
    for tool in ("ip", "tc", IPT, "conntrack"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 iptables conntrack)"
    probe = f"fwprobe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no network namespaces here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass(frozen=True)
class Home:
    """One home: its NAT kind, whether its router speaks UPnP-IGD, its uplink and devices."""

    nat: str = "port_restricted"
    upnp: bool = False
    uplink_mbit: float = 8.0
    devices: int = 1


@dataclass
class BuiltHome:
    index: int
    spec: Home
    router: str  # namespace
    wan_ip: str
    devices: list[tuple[str, str]] = field(default_factory=list)  # (namespace, address)


def _run(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise HomesUnavailable(f"{' '.join(full)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class Homes:
    """The public network and `homes`; a context manager that always tears down."""

    def __init__(self, homes: Sequence[Home], *, prefix: str = "fwh", workdir: Path) -> None:
        if len(homes) > 200:
            raise ValueError("at most 200 homes (one /24 each)")
        for h in homes:
            if h.nat not in NAT_KINDS:
                raise ValueError(f"NAT kind {h.nat!r}: one of {', '.join(NAT_KINDS)}")
            if not 1 <= h.devices <= 50:
                raise ValueError("a home has 1 to 50 devices")
            if h.upnp and h.nat == "symmetric":
                # miniupnpd's libiptc fails to commit a nat table holding MASQUERADE
                # --random-fully (error 501 on every AddPortMapping, tried here)
                raise ValueError("miniupnpd cannot run beside a symmetric NAT's rules here")
        self.specs = list(homes)
        self.prefix = prefix
        self.pub = f"{prefix}-pub"
        self.dir = Path(workdir)
        self.homes: list[BuiltHome] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- building -----------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        out = _run("ip", "netns", "list")
        return [
            line.split()[0]
            for line in out.splitlines()
            if line.split() and line.split()[0].startswith(self.prefix + "-")
        ]

    def _ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        _run("ip", "link", "set", "lo", "up", ns=name)

    def build(self) -> Homes:
        """Make every namespace, link, NAT rule and shaper (removing a killed run's first)."""
        self._remove_namespaces()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._ns(self.pub)
            _run("ip", "link", "add", "pub", "type", "bridge", ns=self.pub)
            _run("ip", "addr", "add", f"{PUBLIC_IP}/24", "dev", "pub", ns=self.pub)
            _run("ip", "link", "set", "pub", "up", ns=self.pub)
            if any(h.upnp for h in self.specs):
                self.popen(
                    self.pub,
                    [sys.executable, str(Path(__file__).resolve()), "stun"],
                    self.dir / "stun.log",
                )
            for i, spec in enumerate(self.specs):
                self.homes.append(self._build_home(i, spec))
        except BaseException:
            self.close()
            raise
        return self

    def _build_home(self, i: int, spec: Home) -> BuiltHome:
        r = f"{self.prefix}-r{i}"
        wan_ip = f"10.77.0.{10 + i}"
        self._ns(r)
        # the uplink: a veth from the router's wan into the public bridge
        _run("ip", "link", "add", f"h{i}", "type", "veth", "peer", "name", "wan", "netns", r,
             ns=self.pub)  # fmt: skip
        _run("ip", "link", "set", f"h{i}", "master", "pub", "up", ns=self.pub)
        _run("ip", "addr", "add", f"{wan_ip}/24", "dev", "wan", ns=r)
        _run("ip", "link", "set", "wan", "up", ns=r)
        _run("ip", "link", "add", "lan", "type", "bridge", ns=r)
        _run("ip", "addr", "add", f"192.168.{i}.1/24", "dev", "lan", ns=r)
        _run("ip", "link", "set", "lan", "up", ns=r)
        _run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r)
        home = BuiltHome(i, spec, r, wan_ip)
        for j in range(spec.devices):
            d = f"{self.prefix}-h{i}d{j}"
            addr = f"192.168.{i}.{2 + j}"
            self._ns(d)
            _run("ip", "link", "add", f"d{j}", "type", "veth", "peer", "name", "eth0",
                 "netns", d, ns=r)  # fmt: skip
            _run("ip", "link", "set", f"d{j}", "master", "lan", "up", ns=r)
            _run("ip", "addr", "add", f"{addr}/24", "dev", "eth0", ns=d)
            _run("ip", "link", "set", "eth0", "up", ns=d)
            _run("ip", "route", "add", "default", "via", f"192.168.{i}.1", ns=d)
            home.devices.append((d, addr))
        self._nat(home)
        # the uplink shaped as a home's: tbf on the router's wan egress (what the devices send)
        rate = f"{spec.uplink_mbit:g}mbit"
        _run("tc", "qdisc", "add", "dev", "wan", "root", "tbf", "rate", rate,
             "burst", "32kb", "latency", "100ms", ns=r)  # fmt: skip
        if spec.upnp:
            self._miniupnpd(home)
        return home

    def _nat(self, home: BuiltHome) -> None:
        r, spec = home.router, home.spec
        first = home.devices[0][1]

        def ipt(*args: str) -> None:
            _run(IPT, *args, ns=r)

        # miniupnpd's chains first (empty without it), as its iptables_init.sh makes them
        ipt("-t", "nat", "-N", "MINIUPNPD")
        ipt("-t", "nat", "-A", "PREROUTING", "-i", "wan", "-j", "MINIUPNPD")
        ipt("-t", "nat", "-N", "MINIUPNPD-POSTROUTING")
        ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MINIUPNPD-POSTROUTING")
        ipt("-t", "filter", "-N", "MINIUPNPD")
        masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        if spec.nat == "symmetric":
            masquerade.append("--random-fully")
        ipt(*masquerade)
        if spec.nat == "full":
            ipt("-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "tcp",
                "-j", "DNAT", "--to-destination", first)  # fmt: skip
        elif spec.nat == "restricted":
            # remember every address the home sends to; let in from those only, to device 0
            ipt("-t", "mangle", "-A", "PREROUTING", "-i", "lan", "-m", "recent", "--name",
                "contacted", "--rdest", "--set")  # fmt: skip
            ipt("-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "tcp", "-m", "recent",
                "--name", "contacted", "--rsource", "--rcheck", "--seconds", "300",
                "-j", "DNAT", "--to-destination", first)  # fmt: skip
        # a home router's filter: nothing unsolicited comes in
        ipt("-P", "FORWARD", "DROP")
        ipt("-A", "FORWARD", "-i", "lan", "-j", "ACCEPT")
        ipt("-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        ipt("-A", "FORWARD", "-i", "wan", "-j", "MINIUPNPD")
        ipt("-A", "FORWARD", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
        ipt("-A", "INPUT", "-i", "wan", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW",
            "-j", "DROP")  # fmt: skip

    def _miniupnpd(self, home: BuiltHome) -> None:
        i = home.index
        conf = self.dir / f"miniupnpd-{i}.conf"
        conf.write_text(
            "\n".join(
                [
                    "ext_ifname=wan",
                    # miniupnpd refuses a private external address unless STUN says it is
                    # reachable (1:1): the public network's STUN server (stun_serve) says so
                    "ext_perform_stun=yes",
                    f"ext_stun_host={PUBLIC_IP}",
                    f"ext_stun_port={STUN_PORT}",
                    "listening_ip=lan",
                    "http_port=0",
                    "enable_upnp=yes",
                    "enable_natpmp=yes",
                    "secure_mode=yes",
                    "system_uptime=yes",
                    "notify_interval=30",
                    f"uuid=3d3cec3a-8cf0-11e0-98ee-00000000{i:04x}",
                    f"allow 1024-65535 192.168.{i}.0/24 1024-65535",
                    "deny 0-65535 0.0.0.0/0 0-65535",
                    "",
                ]
            )
        )
        self.popen(
            home.router,
            ["miniupnpd", "-d", "-f", str(conf), "-P", str(self.dir / f"miniupnpd-{i}.pid")],
            self.dir / f"miniupnpd-{i}.log",
        )

    # -- processes ------------------------------------------------------------------------------

    def popen(
        self,
        ns: str,
        cmd: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` inside namespace `ns`, its output appended to `log`; killed at close."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self._procs.append(proc)
        return proc

    def run(self, ns: str, cmd: Sequence[str], timeout: float = 120.0) -> str:
        """Run `cmd` in `ns` to its end; its stdout (RuntimeError with its stderr on failure)."""
        r = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)[:200]} in {ns}: rc {r.returncode}\n{r.stderr}")
        return r.stdout

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process started inside and delete every namespace; safe to call twice."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)
        self._procs.clear()
        self._remove_namespaces()
        self.homes.clear()

    def _remove_namespaces(self) -> None:
        for ns in self.namespaces():
            # anything still inside (a process of a killed run) goes first, then the namespace
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)

    def __enter__(self) -> Homes:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a fog in the homes: the coordinator on the public network, a node on every device -------


class HomeFog:
    """A coordinator in the public namespace and a node agent on each device of `homes`.

    The coordinator listens on PUBLIC_IP with --allow-private-serve (every address here is a
    10.x or 192.168.x one); each node serves its chunk server on its device's LAN address, so
    it is behind its home's NAT. `sdk(code)` runs Python in the public namespace with the
    customer's key in the environment (the customers' fetchers) and returns its last line.
    """

    def __init__(self, homes: Homes, *, lease_seconds: float = 3.0) -> None:
        from fogwheel.store.sql import new_secret

        self.h = homes
        self.lease_seconds = lease_seconds
        self.join_token = new_secret("fwj")
        self.api_key = new_secret("fwc")
        self.admin_key = new_secret("fwa")
        self.url = ""
        self.pin = ""
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}  # device namespace -> its agent
        self._started: dict[str, int] = {}
        self.data_dirs: dict[str, Path] = {}  # device namespace -> its agent's data dir now

    @property
    def env(self) -> dict[str, str]:
        return {
            "FOGWHEEL_COORDINATOR": self.url,
            "FOGWHEEL_API_KEY": self.api_key,
            "FOGWHEEL_ADMIN_KEY": self.admin_key,
        }

    def start_coordinator(self, timeout: float = 60.0) -> None:
        ready = self.h.dir / "coordinator.ready"
        ready.unlink(missing_ok=True)
        proc = self.h.popen(
            self.h.pub,
            [sys.executable, "-m", "fogwheel", "coordinator", "--data-dir",
             str(self.h.dir / "coordinator"), "--host", PUBLIC_IP, "--port", "0",
             "--lease-seconds", str(self.lease_seconds), "--gone-after",
             str(3 * self.lease_seconds), "--ready-file", str(ready), "--quiet",
             "--allow-private-serve"],
            self.h.dir / "coordinator.log",
            env={"FOGWHEEL_JOIN_TOKEN": self.join_token, "FOGWHEEL_API_KEY": self.api_key,
                 "FOGWHEEL_ADMIN_KEY": self.admin_key},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (self.h.dir / "coordinator.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the coordinator did not start:\n{log}")
            time.sleep(0.05)
        import json

        info = json.loads(ready.read_text())
        self.url, self.pin = info["url"], info.get("key_pin", "")

    def start_node(self, device_ns: str, address: str, *extra: str) -> subprocess.Popen[bytes]:
        """(Re)start the agent of one device, serving on its LAN address."""
        n = self._started[device_ns] = self._started.get(device_ns, -1) + 1
        self.data_dirs[device_ns] = self.h.dir / f"{device_ns}-{n}"
        join = f"{self.join_token}#{self.pin}" if self.pin else self.join_token
        proc = self.h.popen(
            device_ns,
            [sys.executable, "-m", "fogwheel", "node", "--coordinator", self.url,
             "--cores", "1", "--data-dir", str(self.data_dirs[device_ns]),
             "--name", device_ns, "--serve-host", address, "--unsafe-no-sandbox", *extra],
            self.h.dir / f"{device_ns}.log",
            env={"FOGWHEEL_JOIN_TOKEN": join},
        )  # fmt: skip
        self.nodes[device_ns] = proc
        return proc

    def start(self) -> HomeFog:
        self.start_coordinator()
        for home in self.h.homes:
            for ns, addr in home.devices:
                self.start_node(ns, addr)
        return self

    def sdk(self, code: str, timeout: float = 180.0) -> str:
        """Run Python `code` in the public namespace as a customer; its last line of output."""
        r = subprocess.run(
            ["ip", "netns", "exec", self.h.pub, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if r.returncode != 0:
            raise RuntimeError(f"customer code failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
        lines = r.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def nodes_up(self) -> dict[str, dict[str, object]]:
        """The coordinator's record of every live node by name (id, serve_url, reach,
        reach_at), read from its SQLite database."""
        import sqlite3

        with sqlite3.connect(self.h.dir / "coordinator" / "fogwheel.db", timeout=10) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT id, name, serve_url, reach, reach_at FROM nodes WHERE state = 'up'"
            ).fetchall()
        return {r["name"]: dict(r) for r in rows}

    def wait_for_reach(self, n: int, timeout: float = 60.0) -> None:
        """Until `n` nodes are up with their reachability probed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                up = self.nodes_up()
            except Exception:  # the database is not there yet
                up = {}
            if sum(bool(x["reach"]) for x in up.values()) >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} nodes were not up and probed within {timeout:g} s")
            time.sleep(0.3)

    def serving(self) -> dict[str, dict[str, object]]:
        """Every node by name: its state, serve URL and recorded reach (admin's view)."""
        import json

        code = (
            "import json,os,httpx\n"
            "h={'authorization':'Bearer '+os.environ['FOGWHEEL_ADMIN_KEY']}\n"
            "r=httpx.get(os.environ['FOGWHEEL_COORDINATOR']+'/v1/nodes',headers=h,timeout=10)\n"
            "print(json.dumps(r.json()['nodes']))"
        )
        return {n["name"]: n for n in json.loads(self.sdk(code))}


# -- a STUN server for the public network ---------------------------------------------------


def stun_serve(host: str = PUBLIC_IP, port: int = STUN_PORT) -> None:
    """Answer STUN Binding requests (RFC 5389) with the address they came from.

    Only what miniupnpd's check needs: MAPPED-ADDRESS and XOR-MAPPED-ADDRESS; CHANGE-REQUEST is
    ignored (answered from this address), which tells miniupnpd nothing filters its WAN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    cookie = 0x2112A442
    while True:
        data, (ip, src_port) = sock.recvfrom(2048)
        if len(data) < 20 or struct.unpack("!H", data[:2])[0] != 0x0001:
            continue
        tid = data[8:20]
        raw_ip = socket.inet_aton(ip)
        mapped = struct.pack("!BBH", 0, 1, src_port) + raw_ip
        xip = bytes(a ^ b for a, b in zip(raw_ip, struct.pack("!I", cookie), strict=True))
        xmapped = struct.pack("!BBH", 0, 1, src_port ^ (cookie >> 16)) + xip
        attrs = struct.pack("!HH", 0x0001, 8) + mapped + struct.pack("!HH", 0x0020, 8) + xmapped
        sock.sendto(struct.pack("!HHI", 0x0101, len(attrs), cookie) + tid + attrs, (ip, src_port))


if __name__ == "__main__" and sys.argv[1:] == ["stun"]:
    stun_serve()
