"""How a device behind NAT is reached: its reachability, the paths a fetcher tries, the bounds.

Issue #16 item 1. A device's chunk server is reached by one of three paths, best first:

- `direct`: the coordinator's probe connected to the address the device announced (a public
  address, a port its router maps by UPnP-IGD, or a full-cone NAT that forwards what comes to
  the address the device connects from: the coordinator tries that connect-back too);
- `punch`: the device answers no probe, but a fetcher that is a fogwheel client and the device
  both connect to each other's observed address at the moment the coordinator (the rendezvous)
  says: TCP simultaneous open, as libp2p's DCUtR does it (which measured about 70 % success);
- `relay`: neither works (a symmetric NAT maps each connection to a new port, so the address
  the coordinator observed is not the one the device dials from): the device uploads the share
  to the coordinator, which hands it to the fetcher, as a circuit relay v2 or a TURN server
  does. Counted apart: it costs the coordinator bandwidth the fog was meant to save.

Pure: the coordinator and the fetcher keep the facts (probe outcomes, punch outcomes, counts)
and ask these functions; time comes in as `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reach = Literal["direct", "rendezvous"]
Path = Literal["direct", "punch", "relay"]
PATHS: tuple[Path, ...] = ("direct", "punch", "relay")

PUNCH_FAILS_BEFORE_RELAY = 2  # punches to a node failed in a row before relaying at once
PUNCH_RETRY_S = 300.0  # ... and for this long; then a punch is tried again (NATs change)
RENDEZVOUS_SCHEME = "nat"  # serve_url `nat://IP:PORT`: reachable through the rendezvous only


@dataclass(frozen=True)
class Probed:
    """What the coordinator's probes of a device's chunk server found, and when."""

    reach: Reach
    url: str  # where fetchers go: http://IP:PORT, or nat://IP:PORT for the rendezvous
    at: float
    reason: str


def probed(
    announced_ok: bool, connect_back_ok: bool, peer: str, port: int, announced: str, now: float
) -> Probed:
    """The reachability a device's probes show: its announced address when that answered,
    else the address it connects from at its own port (a full-cone NAT or a forwarded port),
    else the rendezvous (`nat://`), where only punching or the relay reach it."""
    if announced_ok:
        return Probed("direct", announced, now, "the coordinator reached its announced address")
    if connect_back_ok:
        return Probed(
            "direct",
            _url("http", peer, port),
            now,
            f"its announced address is not reachable, but the address it connects from is "
            f"(port {port} comes through its router)",
        )
    return Probed(
        "rendezvous",
        _url(RENDEZVOUS_SCHEME, peer, port),
        now,
        "no inbound connection reaches it: fetchers punch through its NAT or take the relay",
    )


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def reach_of(url: str) -> Reach:
    """A serve URL's reachability: `nat://` needs the rendezvous; http(s) is direct."""
    return "rendezvous" if url.startswith(RENDEZVOUS_SCHEME + "://") else "direct"


@dataclass(frozen=True)
class PunchRecord:
    """Punches to one device from this fetcher: failures in a row and when the last one was."""

    failures: int = 0
    last_at: float = 0.0


def after_punch(record: PunchRecord | None, ok: bool, now: float) -> PunchRecord:
    """The record once a punch succeeded (the count starts again) or failed (one more)."""
    if ok:
        return PunchRecord(0, now)
    return PunchRecord((record.failures if record else 0) + 1, now)


def paths_for(
    reach: Reach, punch: PunchRecord | None, now: float, *, can_punch: bool
) -> list[Path]:
    """The paths to try for a share of a device, best first.

    A direct device is asked directly (and, if it fails, another holder is tried: it was
    probed reachable). A device behind the rendezvous is punched, unless this fetcher cannot
    (`can_punch`: no raw sockets, or the coordinator's own streaming) or punching it failed
    PUNCH_FAILS_BEFORE_RELAY times in a row within PUNCH_RETRY_S; then relayed."""
    if reach == "direct":
        return ["direct"]
    stuck = (
        punch is not None
        and punch.failures >= PUNCH_FAILS_BEFORE_RELAY
        and now - punch.last_at < PUNCH_RETRY_S
    )
    return ["relay"] if stuck or not can_punch else ["punch", "relay"]


def holder_rank(reach: Reach) -> int:
    """Peer choice: direct devices before those that need the rendezvous (a punch costs round
    trips through the coordinator, and may end on the relay)."""
    return 0 if reach == "direct" else 1


# -- what the rendezvous and the relay may be made to do ---------------------------------------


@dataclass(frozen=True)
class Bounds:
    """How much one caller may make the rendezvous and the relay do at once."""

    per_node: int = 4  # calls waiting for or running on one device
    per_customer: int = 16  # punches and relays one customer has in flight
    total: int = 128  # in flight, everyone's
    node_relay_bytes_per_min: int = 64 << 20  # relayed bytes one device may send a minute
    customer_relay_bytes_per_min: int = 256 << 20  # relayed bytes one customer may take
    relay_bytes_in_flight: int = 64 << 20  # shares the coordinator holds in memory at once


@dataclass(frozen=True)
class Load:
    """What is in flight now and what was relayed in the last minute."""

    node_calls: int
    customer_calls: int
    total_calls: int
    node_relayed: int  # bytes, last minute
    customer_relayed: int
    relay_in_flight: int = 0  # bytes of the relays in flight now (each buffered whole)


def refusal(kind: Path, load: Load, bounds: Bounds, size: int = 0) -> str | None:
    """Why a punch or relay call may not start now (a sentence for a 429/503), or None."""
    if load.total_calls >= bounds.total:
        return "the rendezvous is at its bound of calls in flight: take the origin"
    if load.customer_calls >= bounds.per_customer:
        return f"you have {load.customer_calls} punches or relays in flight, the most allowed"
    if load.node_calls >= bounds.per_node:
        return "that device has as many punches or relays in flight as it may: try another"
    if kind == "relay":
        if load.node_relayed + size > bounds.node_relay_bytes_per_min:
            return "that device has relayed its share of bytes this minute: try another"
        if load.customer_relayed + size > bounds.customer_relay_bytes_per_min:
            return "you have taken your relayed bytes for this minute: take the origin"
        if load.relay_in_flight + size > bounds.relay_bytes_in_flight:
            return "the relay holds as many bytes as it may now: take the origin"
    return None


def direct_share(counts: dict[str, int]) -> float:
    """Shares from peers without the relay ÷ all shares from peers (1.0 with none)."""
    peers = sum(counts.get(p, 0) for p in PATHS)
    return 1.0 if peers == 0 else (counts.get("direct", 0) + counts.get("punch", 0)) / peers
