"""Closed-loop pacing: a coordinator whose syncs queue longer than its target stretches waits.

Real coordinator processes and the real protocol. The target is set far below what any sync
queues (FOGWHEEL_SYNC_TARGET_MS=0.001: a microsecond), so every window reads as overload: the
Pacer's factor climbs, busy nodes are told a pace, leases and the gone horizon stretch, and work
still completes through real agents that obey the pace. With the closed loop off (0) nothing
stretches.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from fogwheel import Client
from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode


def _scrape(fog: LocalFog, name: str) -> float:
    text = httpx.get(
        f"{fog.url}/metrics", headers={"authorization": f"Bearer {fog.admin_key}"}, timeout=30
    ).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _submit(fog: LocalFog, n: int) -> None:
    body = {"kind": "command", "tasks": [{"command": ["true"]} for _ in range(n)]}
    r = httpx.post(f"{fog.url}/v1/jobs", json=body, headers=fog.headers, timeout=30)
    assert r.status_code in (200, 201), r.text


def _sync_for(node: HostileNode, seconds: float, **body: object) -> dict:
    """Sync every 50 ms for `seconds` (so the Pacer sees several windows); the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        answer = node.sync(**body)
        assert answer.status_code == 200, answer.text
        if time.monotonic() > deadline:
            return answer.json()
        time.sleep(0.05)


def test_queueing_syncs_stretch_every_wait_and_the_lease_and_the_fog_still_finishes_its_work(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_SYNC_TARGET_MS", "0.001")
    with LocalFog(2, workdir=tmp_path / "fog", lease_seconds=5.0) as fog:
        _submit(fog, 2)
        with HostileNode(fog.url, fog.join_string) as node:
            assert node.join().status_code == 201
            answer = _sync_for(node, 4.0, want=1, slots_free=1)
            held = [t["task_id"] for t in answer["tasks"]]
            answer = _sync_for(node, 0.5, renew=held or [999_999], want=0, slots_free=0)
        factor = _scrape(fog, "fogwheel_sync_pace_factor")
        assert factor > 1.5, "four seconds of slow windows stretch the waits"
        assert answer["pace_s"] > 0, "a busy node is told to report less often"
        assert answer["lease_seconds"] >= 3 * answer["pace_s"], "its leases outlast its pace"
        assert answer["lease_seconds"] >= 5.0  # never shorter than configured
        # Real agents obey the pace and still finish a job, each task once.
        with Client(fog.url, api_key=fog.api_key) as client:
            assert list(client.map(lambda x: x * x, range(8), timeout=120)) == [
                x * x for x in range(8)
            ]


def test_with_the_closed_loop_off_nothing_stretches(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOGWHEEL_SYNC_TARGET_MS", "0")
    with LocalFog(0, workdir=tmp_path / "fog", lease_seconds=5.0) as fog:
        _submit(fog, 1)
        with HostileNode(fog.url, fog.join_string) as node:
            assert node.join().status_code == 201
            answer = _sync_for(node, 2.5, want=1, slots_free=1)
        assert _scrape(fog, "fogwheel_sync_pace_factor") == 1.0
        assert answer["pace_s"] == 0.0
        assert answer["lease_seconds"] == 5.0
