"""A node that syncs in a loop is refused alone (coordinator/syncrate.py, core/ratelimit.py).

Real coordinator and agent processes with a low per-node rate (5 calls a second, bursts of
5): a hostile node floods the sync route and gets 429s with a Retry-After and a sentence,
counted in /metrics, while an honest agent beside it, which meets the same limit whenever its
results come quicker than that (tests/test_core_nodestate.py: it waits as told), finishes
its job, every result once.
"""

from __future__ import annotations

import re

import httpx
import pytest

from fogwheel import Client
from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode


def square(x: int) -> int:
    return x * x


@pytest.fixture
def fog(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FOGWHEEL_NODE_SYNC_RATE", "5")
    monkeypatch.setenv("FOGWHEEL_NODE_SYNC_BURST", "5")
    with LocalFog(1, workdir=tmp_path / "fog") as f:
        yield f


def test_a_flooding_node_gets_429s_while_an_honest_one_finishes_its_job(fog: LocalFog) -> None:
    with (
        HostileNode(fog.url, fog.join_string) as flood,
        Client(fog.url, fog.api_key, replicas=1) as client,
    ):
        assert flood.join().status_code == 201
        results = client.map(square, range(40), timeout=120)  # one job, 40 tasks
        answers = [flood.sync(want=0, slots_free=0) for _ in range(60)]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [200] * 5, "the burst is admitted"
        refused = [a for a in answers if a.status_code == 429]
        assert len(refused) >= 40, codes  # 60 calls in far less than the 11 s they would need
        first = refused[0]
        assert int(first.headers["retry-after"]) >= 1
        assert "faster than its 5 a second" in first.json()["error"]
        # every result once, from the honest agent that met the same limit and waited
        assert list(results) == [i * i for i in range(40)]
        scraped = httpx.get(
            f"{fog.url}/metrics", headers={"authorization": f"Bearer {fog.admin_key}"}, timeout=30
        ).text
        counted = re.search(r"^fogwheel_node_calls_limited_total (\S+)$", scraped, re.M)
        assert counted and float(counted.group(1)) >= len(refused)


def test_a_call_without_credentials_is_not_limited_but_refused_401(fog: LocalFog) -> None:
    for _ in range(20):  # the bucket is keyed by credential: none is authentication's to refuse
        r = httpx.post(f"{fog.url}/v1/nodes/me/sync", json={}, timeout=30)
        assert r.status_code == 401
