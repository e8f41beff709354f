"""The CDN served from devices behind home NAT (issue #16): six devices in emulated homes.

tests/homes.py builds the homes in network namespaces: a public network with the coordinator
and the fetching customer, and six homes, each with a NAT router, a shaped uplink and one
device running a real node agent. Homes 0 (port-restricted NAT) and 1 (full cone) have a
UPnP-IGD router (miniupnpd), home 2 a full-cone NAT, home 3 a port-restricted one, homes 4 and
5 symmetric NATs without UPnP. So shares come by a port mapping (0, 1), a connect-back (2), a
punch (3) and the relay (4, 5).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from homes import Home, HomeFog, Homes, unavailable

_why = unavailable() or (None if shutil.which("miniupnpd") else "miniupnpd is not installed")
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

SPECS = [
    Home("port_restricted", upnp=True, uplink_mbit=4),
    Home("full", upnp=True, uplink_mbit=4),
    Home("full", uplink_mbit=4),
    Home("port_restricted", uplink_mbit=4),
    Home("symmetric", uplink_mbit=4),
    Home("symmetric", uplink_mbit=4),
]
PATH_OF_HOME = ["direct", "direct", "direct", "punch", "relay", "relay"]


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeFog]:
    work = tmp_path_factory.mktemp("homes")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")  # each worker builds homes of its own
    with Homes(SPECS, prefix=f"fwt{worker[2:]}", workdir=work) as homes:
        time.sleep(3.5)  # miniupnpd asks the STUN server before it maps anything
        fog = HomeFog(homes).start()
        fog.wait_for_reach(6)
        yield fog


def _wait(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.3)


def _nodes(fog: HomeFog) -> dict[str, dict[str, object]]:
    return fog.nodes_up()


def _publish(fog: HomeFog, mb: float, name: str, k: int = 2) -> tuple[str, Path]:
    """Publish `mb` MiB of random bytes as k of n=6 shares: with k=6 every device serves a
    share of every segment (the fetcher prefers direct holders where it has the choice)."""
    src = fog.h.dir / name
    out = fog.sdk(
        "import json, os\n"
        "from fogwheel import Client\n"
        "from fogwheel.cdn import client as cdn\n"
        f"open({str(src)!r}, 'wb').write(os.urandom({int(mb * (1 << 20))}))\n"
        f"print(json.dumps(cdn.publish(Client(), {str(src)!r}, k={k}, n=6)))\n"
    )
    return json.loads(out), src


FETCH = """
import json, sys
from fogwheel import Client
from fogwheel.cdn import client as cdn
st = cdn.fetch(Client(), sys.argv[1], sys.argv[2])
print(json.dumps({"peers": st.from_peers, "origin": st.from_origin, "paths": st.paths,
                  "routes": st.routes, "by_node": {n: b for n, (b, _) in st.peers.items()},
                  "bad": len(st.bad)}))
"""


def _fetch(fog: HomeFog, cid: str, out: Path) -> dict:  # type: ignore[type-arg]
    r = subprocess.run(
        ["ip", "netns", "exec", fog.h.pub, sys.executable, "-c", FETCH, cid, str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **fog.env},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _stored_everywhere(fog: HomeFog, cid: str, holders: int) -> bool:
    with sqlite3.connect(fog.h.dir / "coordinator" / "fogwheel.db", timeout=10) as db:
        n = db.execute(
            "SELECT count(DISTINCT h.node_id) FROM cdn_holders h JOIN cdn_shares s "
            "ON s.sha = h.sha WHERE s.content_id = ? AND h.state = 'stored'",
            (cid,),
        ).fetchone()[0]
    return n >= holders


def test_the_coordinator_records_how_each_device_is_reached(fog: HomeFog) -> None:
    nodes = _nodes(fog)
    for home in fog.h.homes:
        ns = home.devices[0][0]
        node = nodes[ns]
        assert node["reach_at"] and time.time() - float(node["reach_at"]) < 300
        url = str(node["serve_url"])
        if home.index in (0, 1):  # UPnP: the router's address, at a port it maps to the device
            assert node["reach"] == "direct" and url.startswith(f"http://{home.wan_ip}:")
            rules = fog.h.run(home.router, ["iptables-legacy", "-t", "nat", "-S", "MINIUPNPD"])
            port = url.rsplit(":", 1)[1]
            assert f"--dport {port} -j DNAT" in rules
        elif home.index == 2:  # full cone: the connect-back to where it connects from
            assert node["reach"] == "direct" and url.startswith(f"http://{home.wan_ip}:")
        else:  # nothing comes in: the rendezvous
            assert node["reach"] == "rendezvous" and url.startswith(f"nat://{home.wan_ip}:")


def test_every_fetch_is_exact_and_shares_come_by_mapping_punching_and_relay(
    fog: HomeFog,
) -> None:
    cid, src = _publish(fog, 3, "paths.bin", k=6)
    _wait(lambda: _stored_everywhere(fog, cid, 6))
    names = {n["id"]: name for name, n in _nodes(fog).items()}
    home_of = {home.devices[0][0]: home.index for home in fog.h.homes}
    seen: dict[str, int] = {}
    for i in range(3):
        out = fog.h.dir / f"paths-{i}.out"
        got = _fetch(fog, cid, out)
        assert out.read_bytes() == src.read_bytes()
        assert got["bad"] == 0 and got["origin"] == 0  # every byte from the homes
        for node_id, routes in got["routes"].items():
            home = home_of[names[node_id]]
            assert set(routes) == {PATH_OF_HOME[home]}, (home, routes)
        for path, (n, _) in got["paths"].items():
            seen[path] = seen.get(path, 0) + n
    assert seen.get("direct", 0) > 0 and seen.get("punch", 0) > 0 and seen.get("relay", 0) > 0


def test_owners_are_paid_for_what_they_delivered_by_any_path(fog: HomeFog) -> None:
    cid, src = _publish(fog, 2, "paid.bin", k=6)
    _wait(lambda: _stored_everywhere(fog, cid, 6))
    before = _served(fog)
    got = _fetch(fog, cid, fog.h.dir / "paid.out")
    assert (fog.h.dir / "paid.out").read_bytes() == src.read_bytes()
    after = _served(fog)
    delivered = {n: b for n, b in got["by_node"].items() if b}
    paid = {n: after.get(n, 0) - before.get(n, 0) for n in set(after) | set(before)}
    assert {n: b for n, b in paid.items() if b} == delivered
    paths = {p for routes in got["routes"].values() for p in routes}
    assert "relay" in paths  # relayed bytes are paid too


def _served(fog: HomeFog) -> dict[str, int]:
    code = (
        "import json,os,httpx\n"
        "h={'authorization':'Bearer '+os.environ['FOGWHEEL_ADMIN_KEY']}\n"
        "r=httpx.get(os.environ['FOGWHEEL_COORDINATOR']+'/v1/cdn/stats',headers=h,timeout=10)\n"
        "print(json.dumps(r.json()['served_by_node']))"
    )
    return json.loads(fog.sdk(code))


def test_a_device_killed_mid_fetch_is_replaced(fog: HomeFog) -> None:
    cid, src = _publish(fog, 8, "killed.bin")
    _wait(lambda: _stored_everywhere(fog, cid, 6))
    victim = fog.h.homes[3].devices[0]  # the punched one
    old_id = _nodes(fog)[victim[0]]["id"]
    out = fog.h.dir / "killed.out"
    fetch = subprocess.Popen(
        ["ip", "netns", "exec", fog.h.pub, sys.executable, "-c", FETCH, cid, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **fog.env},
    )
    time.sleep(2.5)
    assert fetch.poll() is None, "the fetch ended before the device was killed"
    proc = fog.nodes[victim[0]]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _, stderr = fetch.communicate(timeout=180)
    assert fetch.returncode == 0, stderr[-3000:]
    assert out.read_bytes() == src.read_bytes()  # exact, the dead device's shares elsewhere
    fog.start_node(*victim)  # the owner plugs it back in: a new node with an empty disk
    _wait(lambda: victim[0] in _nodes(fog) and _nodes(fog)[victim[0]]["id"] != old_id, 60)
    new_id = _nodes(fog)[victim[0]]["id"]

    def repaired() -> bool:
        with sqlite3.connect(fog.h.dir / "coordinator" / "fogwheel.db", timeout=10) as db:
            return (
                db.execute(
                    "SELECT count(*) FROM cdn_holders h JOIN cdn_shares s ON s.sha = h.sha "
                    "WHERE s.content_id = ? AND h.node_id = ? AND h.state = 'stored'",
                    (cid, new_id),
                ).fetchone()[0]
                > 0
            )

    _wait(repaired, 90)  # repair gave the newcomer shares of the object
    again = _fetch(fog, cid, fog.h.dir / "killed-2.out")
    assert (fog.h.dir / "killed-2.out").read_bytes() == src.read_bytes()
    assert old_id not in again["by_node"]


HOSTILE = """
import json, os, sys, threading, time, httpx
base, node_id, cred, cid, sha, other_sha, direct_id = sys.argv[1:8]
me = {"authorization": "Bearer " + os.environ["FOGWHEEL_API_KEY"]}
as_node = {"authorization": "Bearer " + cred}
out = {}

def impostor():  # the device's credential, sending garbage of the share's size
    for _ in range(10):
        r = httpx.get(base + "/v1/nodes/me/calls", params={"wait": 5}, headers=as_node, timeout=15)
        for c in r.json()["calls"]:
            if c["kind"] == "relay":
                junk = b"x" * c["size"]
                r2 = httpx.post(base + "/v1/nodes/me/relay/" + c["id"], content=junk,
                                headers=as_node, timeout=15)
                out["upload"] = r2.status_code
                return

t = threading.Thread(target=impostor)
t.start()
time.sleep(0.5)
r = httpx.post(base + "/v1/cdn/relay", json={"content_id": cid, "node_id": node_id, "sha": sha},
               headers=me, timeout=40)
out["relay"] = r.status_code
t.join(30)
def ask(body):
    return httpx.post(base + "/v1/cdn/relay", json=body, headers=me, timeout=40).status_code
out["not_held"] = ask({"content_id": cid, "node_id": node_id, "sha": "0" * 64})
out["direct"] = ask({"content_id": cid, "node_id": direct_id, "sha": other_sha})
out["not_ours"] = ask({"content_id": "c" + "0" * 24, "node_id": node_id, "sha": sha})
out["bad_body"] = ask({"content_id": cid, "node_id": node_id, "sha": "zz"})
r = httpx.post(base + "/v1/nodes/me/relay/" + "0" * 32, content=b"x", headers=as_node)
out["no_session"] = r.status_code
print(json.dumps(out))
"""


def test_a_device_that_relays_wrong_bytes_is_quarantined_and_the_relay_checks_its_callers(
    fog: HomeFog,
) -> None:
    cid, _ = _publish(fog, 1, "hostile.bin", k=6)
    _wait(lambda: _stored_everywhere(fog, cid, 6))
    ns = fog.h.homes[5].devices[0][0]  # symmetric: reached through the relay only
    direct_ns = fog.h.homes[0].devices[0][0]
    nodes = _nodes(fog)
    node_id, direct_id = nodes[ns]["id"], nodes[direct_ns]["id"]
    cred = json.loads((fog.data_dirs[ns] / "node.json").read_text())["credential"]
    with sqlite3.connect(fog.h.dir / "coordinator" / "fogwheel.db", timeout=10) as db:
        held = dict(
            db.execute(
                "SELECT h.node_id, h.sha FROM cdn_holders h JOIN cdn_shares s ON s.sha = h.sha "
                "WHERE s.content_id = ? AND h.state = 'stored'",
                (cid,),
            ).fetchall()
        )
    Homes.kill(fog.nodes[ns])  # the impostor takes its calls from now on
    got = json.loads(
        fog.sdk(
            f"import sys; sys.argv = ['x', {fog.url!r}, {node_id!r}, {cred!r}, {cid!r}, "
            f"{held[node_id]!r}, {held[direct_id]!r}, {direct_id!r}]\n" + HOSTILE
        )
    )
    assert got == {
        "upload": 422,  # the coordinator checked the bytes itself
        "relay": 502,  # and the fetcher was told, not handed them
        "not_held": 404,
        "direct": 409,  # a device reached directly is not relayed
        "not_ours": 404,
        "bad_body": 422,
        "no_session": 404,
    }
    with sqlite3.connect(fog.h.dir / "coordinator" / "fogwheel.db", timeout=10) as db:
        quarantined, reason = db.execute(
            "SELECT quarantined, quarantine_reason FROM nodes WHERE id = ?", (node_id,)
        ).fetchone()
    assert quarantined and "it relayed" in reason
    fog.start_node(*fog.h.homes[5].devices[0])  # a fresh agent for whatever runs after
