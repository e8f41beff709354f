"""The coordinator's probe of a device's reachability: direct, connect-back, or the rendezvous.

Issue #16 item 1. cdn/audit.py `ServeScreen` checks an announced serve address (the address the
sync comes from, and a challenge only that node can answer). A device behind NAT announces the
address of its LAN (192.168.x.y): no fetcher can reach that, and the coordinator never connects
to an address a device merely names. So when the announced address is a private one and is
not where the device connects from, the coordinator tries the one place it may connect to: the
address the sync came from, at the device's own port (a full-cone NAT, or a port forwarded by
hand, lets that through), with the same challenge. If that fails too, the device is recorded
behind the rendezvous (`nat://ADDRESS:PORT`, core/reach.py): its shares are fetched by punching
or through the relay (cdn/relay.py), never by a direct connection. Each outcome is kept with
its time (`nodes.reach`, `nodes.reach_at`).
"""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlsplit

from fogwheel.cdn.audit import ServeScreen, address_refusal
from fogwheel.core import reach


def screen_reach(
    screen: ServeScreen, node_id: str, url: str, peer: str | None, now: float | None = None
) -> tuple[reach.Probed | None, str | None]:
    """The device's reachability as its probes show it, or the reason its address is refused
    (exactly one of the two is None)."""
    now = time.time() if now is None else now
    refusal = screen.screen(node_id, url, peer)
    if refusal is None:
        return reach.probed(True, False, peer or "", 0, url, now), None
    try:
        parts = urlsplit(url)
        announced = ipaddress.ip_address(parts.hostname or "")
        port = parts.port
    except ValueError:
        return None, refusal
    if peer is None or port is None or not announced.is_private or announced.is_loopback:
        return None, refusal  # not a device behind NAT: the refusal stands
    try:
        if ipaddress.ip_address(peer) == announced:
            return None, refusal  # its own address, and it did not answer: nothing behind
    except ValueError:
        return None, refusal
    back = f"http://[{peer}]:{port}" if ":" in peer else f"http://{peer}:{port}"
    if address_refusal(back, peer, allow_private=screen.allow_private) is not None:
        return None, refusal
    ok = screen.probe(node_id, back) is None
    return reach.probed(False, ok, peer, port, url, now), None
