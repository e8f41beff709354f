"""cdn/upnp.py against a real UPnP-IGD router: miniupnpd in an emulated home (tests/homes.py).

Each check runs the client inside the home's device namespace and looks at the router's
iptables (where miniupnpd puts its mappings) and at a connection from the public network.
A hostile device on the LAN answers the SSDP search with a description on another host; the
client must not follow it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from homes import PUBLIC_IP, Home, Homes, unavailable

_why = unavailable() or (None if shutil.which("miniupnpd") else "miniupnpd is not installed")
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homes]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    specs = [Home("port_restricted", upnp=True, devices=2), Home("port_restricted")]
    with Homes(specs, prefix=f"fwu{worker[2:]}", workdir=tmp_path_factory.mktemp("upnp")) as h:
        time.sleep(3.5)  # miniupnpd asks the STUN server before it maps anything
        yield h


def _py(h: Homes, ns: str, code: str) -> dict:  # type: ignore[type-arg]
    out = h.run(ns, [sys.executable, "-c", code], timeout=60)
    return json.loads(out.strip().splitlines()[-1])


MAP = """
import json, time
from fogwheel.cdn import upnp
m = upnp.map_port({port}, time.time())
print(json.dumps({{"url": m.url, "lease": m.lease_s, "local": m.gateway.local_ip,
                  "service": m.gateway.service}}))
"""


def _rules(h: Homes) -> str:
    return h.run(h.homes[0].router, ["iptables-legacy", "-t", "nat", "-S", "MINIUPNPD"])


def test_a_mapping_forwards_the_routers_port_to_this_device(home: Homes) -> None:
    ns, addr = home.homes[0].devices[0]
    server = home.popen(
        ns, [sys.executable, "-m", "http.server", "--bind", addr, "4100"], home.dir / "srv.log"
    )
    try:
        got = _py(home, ns, MAP.format(port=4100))
        assert got["url"] == f"http://{home.homes[0].wan_ip}:4100"
        assert got["local"] == addr and got["lease"] == 3600
        assert got["service"].startswith("urn:schemas-upnp-org:service:WANIPConnection:")
        assert "--dport 4100 -j DNAT" in _rules(home)
        code = home.run(
            home.pub, ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", got["url"]]
        )
        assert code == "200"
    finally:
        Homes.kill(server)


def test_a_port_taken_by_another_device_is_mapped_to_the_next_one(home: Homes) -> None:
    first, second = home.homes[0].devices
    a = _py(home, first[0], MAP.format(port=4200))
    b = _py(home, second[0], MAP.format(port=4200))  # 4200 outside is the first device's
    assert a["url"].endswith(":4200") and b["url"].endswith(":4201")


def test_a_renewed_mapping_stays_and_a_removed_one_goes(home: Homes) -> None:
    ns, _ = home.homes[0].devices[0]
    code = """
import json, time
from fogwheel.cdn import upnp
m = upnp.map_port(4300, time.time())
assert not m.due(m.made_at + 100) and m.due(m.made_at + 1800)
m.renew(time.time())
print(json.dumps({"url": m.url}))
"""
    assert _py(home, ns, code)["url"].endswith(":4300")
    assert "--dport 4300 -j DNAT" in _rules(home)
    remove = """
import json, time
from fogwheel.cdn import upnp
m = upnp.map_port(4300, time.time())  # the same mapping asked again: the router says yes
m.remove()
print(json.dumps({"removed": True}))
"""
    assert _py(home, ns, remove)["removed"]
    assert "--dport 4300 " not in _rules(home)


def test_without_a_gateway_there_is_no_mapping_and_the_node_says_why(home: Homes) -> None:
    ns, addr = home.homes[1].devices[0]  # a router without UPnP
    code = f"""
import json, time
from fogwheel.cdn import upnp
try:
    upnp.discover(timeout=1.0)
except upnp.UpnpError as e:
    why = str(e)
print(json.dumps({{"why": why, "map": upnp.try_map("http://{addr}:4400", time.time())}}))
"""
    got = _py(home, ns, code)
    assert got == {"why": "no UPnP gateway answered on this network", "map": None}


HOSTILE_SSDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 1900))
mreq = socket.inet_aton("239.255.255.250") + socket.inet_aton(sys.argv[1])
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
while True:
    data, peer = s.recvfrom(4096)
    if data.startswith(b"M-SEARCH"):
        where = b"http://%s:80/rootDesc.xml" % sys.argv[2].encode()
        s.sendto(b"HTTP/1.1 200 OK\\r\\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1"
                 b"\\r\\nLOCATION: " + where + b"\\r\\n\\r\\n", peer)
"""


def test_a_lan_host_that_names_another_host_as_the_gateway_is_not_followed(
    home: Homes,
) -> None:
    ns, addr = home.homes[1].devices[0]  # no miniupnpd in this home: only the liar answers
    liar = home.popen(
        ns, [sys.executable, "-c", HOSTILE_SSDP, addr, PUBLIC_IP], home.dir / "liar.log"
    )
    try:
        time.sleep(0.5)
        code = """
import json
from fogwheel.cdn import upnp
try:
    upnp.discover(timeout=1.0)
    why = None
except upnp.UpnpError as e:
    why = str(e)
print(json.dumps({"why": why}))
"""
        why = _py(home, ns, code)["why"]
        assert why is not None and "not on its own address" in why
    finally:
        Homes.kill(liar)
