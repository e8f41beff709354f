"""A device names its network only by the address it connects from.

Copies of a task go to devices on distinct networks (core/owners.py), and the network is the
/24 the device connects from. A device that could name any network in an X-Forwarded-For
header would pass for as many networks as it likes, so the coordinator reads that header only
from the reverse proxies it is told to trust (`--trusted-proxy`), as `fogwheel up` does for its
own nginx. Real coordinator processes, a hostile node speaking the real protocol.
"""

from __future__ import annotations

import sqlite3

import pytest

from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode

SPOOFED = "8.8.8.8"  # a global address: it would make a network of its own


def _network(fog: LocalFog, node_id: str) -> str | None:
    with sqlite3.connect(fog.dir / "coordinator" / "fogwheel.db") as db:
        [(network,)] = db.execute("SELECT network FROM nodes WHERE id = ?", (node_id,)).fetchall()
    return network


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(None, None), ("127.0.0.1", "8.8.8.0/24")],
    ids=["no-proxy-trusted", "local-proxy-trusted"],
)
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    tmp_path, trusted: str | None, expected: str | None
) -> None:
    args = ["--trusted-proxy", trusted] if trusted else []
    with (
        LocalFog(0, workdir=tmp_path / "fog", coordinator_args=args) as fog,
        HostileNode(fog.url, fog.join_string) as node,
    ):
        node.http.headers["x-forwarded-for"] = SPOOFED
        assert node.join().status_code == 201
        assert node.sync(want=0, slots_free=1).status_code == 200
        # loopback is no network at all (None); only a trusted proxy's header is believed
        assert _network(fog, node.node_id) == expected
