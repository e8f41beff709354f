"""Honest CDN placement (issue 11, finding 8), in the store on SQLite and PostgreSQL and on a
real local fog: a fog with fewer live devices than n still takes every share (peers serve
them) but the stats call such segments degraded, with the distinct devices a segment has, and
at risk when one device failure leaves fewer than k; publishing warns; repair moves doubled
shares onto devices that come back, so the spread is full again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from fogwheel.cdn.client import fetch
from fogwheel.protocol import NodeJoin, SyncIn
from fogwheel.store import Store

NOW = 1_000_000.0
LATER = NOW + 100.0  # past NODE_GONE_AFTER_LEASES x the store's 10 s lease: the silent are gone


def node(store: Store, name: str, host: str, now: float = NOW) -> str:
    info = NodeJoin(token="x" * 8, name=name, cores=1, memory_mb=512, disk_mb=1000)
    node_id, _ = store.join_node(info, now)
    store.sync(node_id, SyncIn(serve_url=f"http://{host}:8471"), now)
    return node_id


def publish(store: Store, segments: int, k: int, n: int) -> tuple[str, dict, list]:
    cid = "c" + "cd" * 12
    shares = []
    for seg in range(segments):
        for i in range(n):
            sha = hashlib.sha256(f"{seg}/{i}".encode()).hexdigest()
            shares.append((sha, seg, i, 100))
    manifest = {"content_id": cid, "name": "film", "size": 1, "k": k, "n": n}
    out = store.cdn_create("cust", manifest, "00" * 32, shares, NOW)
    return cid, out, shares


def confirm(store: Store, cid: str, nodes: list[str], now: float) -> dict[str, set[str]]:
    """The listed nodes sync: they confirm what they were assigned. Returns the live
    holders (stored) of every share."""
    for n in nodes:
        todo = [r["sha"] for r in store.cdn_shares_of(cid) if r["node_id"] == n]
        store.sync(n, SyncIn(stored=todo), now)
    out: dict[str, set[str]] = defaultdict(set)
    for r in store.cdn_shares_of(cid):
        if r["state"] == "stored" and r["node_id"] in nodes:
            out[r["sha"]].add(r["node_id"])
    return out


def devices_per_segment(held: dict[str, set[str]], shares: list) -> dict[int, set[str]]:
    seg: dict[int, set[str]] = defaultdict(set)
    for sha, s, _, _ in shares:
        seg[s] |= held.get(sha, set())
    return dict(seg)


def test_three_devices_for_n8_are_degraded_with_their_count_and_the_publisher_is_warned(
    store: Store,
) -> None:
    ids = [node(store, f"n{i}", f"127.0.0.{i + 1}") for i in range(3)]
    cid, out, shares = publish(store, segments=2, k=4, n=8)
    assert out["placed"] == 16 and out["devices"] == 3
    assert out["warning"].startswith("3 live devices for n=8")
    assert "add devices or use --n 3" in out["warning"]
    held = confirm(store, cid, ids, NOW + 1)
    # every share is on a peer, a device takes at most ceil(8/3) = 3 of a segment
    assert all(held[sha] for sha, *_ in shares)
    for devs in devices_per_segment(held, shares).values():
        assert devs == set(ids)
    per_seg: dict[tuple[int, str], int] = defaultdict(int)
    for sha, seg, _, _ in shares:
        for d in held[sha]:
            per_seg[(seg, d)] += 1
    assert max(per_seg.values()) == 3
    stats = store.cdn_stats("cust", NOW + 1)
    seg = stats["segments"]
    assert (seg["full"], seg["degraded"], seg["at_risk"], seg["below_k"]) == (0, 2, 0, 0)
    assert seg["min_devices"] == 3
    [obj] = stats["by_object"]
    assert obj["state"] == "degraded" and obj["min_devices"] == 3
    assert obj["min_shares_after_one_loss"] == 5  # losing a device of 3 shares leaves 5


def test_two_devices_lost_leave_one_at_risk_and_repair_spreads_out_when_devices_return(
    store: Store,
) -> None:
    ids = [node(store, f"n{i}", f"127.0.0.{i + 1}") for i in range(3)]
    cid, _, shares = publish(store, segments=2, k=4, n=8)
    confirm(store, cid, ids, NOW + 1)
    # two devices fall silent; the survivor is given every share in repair
    survivor = ids[0]
    store.sync(survivor, SyncIn(), LATER)
    store.cdn_repair(LATER)
    held = confirm(store, cid, [survivor], LATER + 1)
    assert all(held[sha] == {survivor} for sha, *_ in shares)
    stats = store.cdn_stats("cust", LATER + 1)
    assert stats["segments"]["at_risk"] == 2 and stats["segments"]["full"] == 0
    [obj] = stats["by_object"]
    assert obj["state"] == "at_risk" and obj["min_devices"] == 1
    assert obj["min_shares_after_one_loss"] == 0
    # seven devices join: repair gives each doubled share a device of its own ...
    t = LATER + 2
    fresh = [node(store, f"m{i}", f"127.0.1.{i + 1}", t) for i in range(7)]
    store.sync(survivor, SyncIn(), t)
    assert store.cdn_repair(t) == 2 * 7
    everyone = [survivor, *fresh]
    held = confirm(store, cid, everyone, t + 1)
    for devs in devices_per_segment(held, shares).values():
        assert devs == set(everyone)
    # ... and once those copies are stored, the next pass drops the doubles
    store.cdn_repair(t + 1)
    drops = store.sync(survivor, SyncIn(), t + 2)
    assert len(drops.drop) == 2 * 7
    held = confirm(store, cid, everyone, t + 2)
    for sha, *_ in shares:
        assert len(held[sha]) == 1, "a share on one device after the doubles are dropped"
    stats = store.cdn_stats("cust", t + 2)
    assert stats["segments"]["full"] == stats["segments"]["total"] == 2
    assert stats["segments"]["min_devices"] == 8
    assert stats["by_object"][0]["state"] == "full"
    assert store.cdn_repair(t + 3) == 0  # settled: nothing more to move


def test_a_fog_of_n_devices_gets_no_warning(store: Store) -> None:
    for i in range(8):
        node(store, f"n{i}", f"127.0.0.{i + 1}")
    _, out, _ = publish(store, segments=1, k=4, n=8)
    assert out["devices"] == 8 and out["warning"] is None


# -- on a real local fog, through the real CLI -------------------------------------------------


def fogwheel(fog, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def wait_for(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting until {what}")


def test_a_fog_of_three_says_degraded_warns_at_publish_and_repair_spreads_out_again(
    tmp_path: Path,
) -> None:
    from fogwheel.client import Client
    from fogwheel.localfog import LocalFog

    data = os.urandom((1 << 20) + 4321)  # two segments
    path = tmp_path / "film.bin"
    path.write_bytes(data)
    with LocalFog(3, lease_seconds=2.0, workdir=tmp_path / "fog") as fog:
        pub = fogwheel(fog, "cdn", "publish", str(path), "--k", "4", "--n", "8")
        assert pub.returncode == 0, pub.stderr
        cid = pub.stdout.strip().splitlines()[-1]
        assert "warning: 3 live devices for n=8" in pub.stderr
        assert "add devices or use --n 3" in pub.stderr

        def spread(state: str, devices: int):
            res = fogwheel(fog, "cdn", "stats", "--json")
            assert res.returncode == 0, res.stderr
            s = json.loads(res.stdout)
            [obj] = s["by_object"]
            ok = obj["state"] == state and obj["min_devices"] == devices
            return s if ok else None

        s = wait_for("both segments sit, stored, on all 3 devices", lambda: spread("degraded", 3))
        assert s["segments"]["full"] == 0 and s["segments"]["degraded"] == 2
        table = fogwheel(fog, "cdn", "stats")
        assert "degraded" in table.stdout and "3 of 8" in table.stdout
        with Client(fog.url, fog.api_key) as client:
            stats = fetch(client, cid, tmp_path / "copy.bin")
            assert (tmp_path / "copy.bin").read_bytes() == data and stats.from_peers > 0
        # two devices die: repair puts every share on the last one, one failure from the origin
        fog.kill_node(1, signal.SIGKILL)
        fog.kill_node(2, signal.SIGKILL)
        s = wait_for("all shares sit on the survivor", lambda: spread("at_risk", 1))
        assert s["by_object"][0]["min_shares_after_one_loss"] == 0
        assert "at risk" in fogwheel(fog, "cdn", "stats").stdout
        # two devices come back: repair moves the doubled shares onto them
        fog.add_node()
        fog.add_node()
        wait_for("the shares are spread over 3 devices again", lambda: spread("degraded", 3))
        with Client(fog.url, fog.api_key) as client:
            fetch(client, cid, tmp_path / "again.bin")
        assert (tmp_path / "again.bin").read_bytes() == data


def test_repair_evens_out_a_crowded_device_over_the_few_that_join(store: Store) -> None:
    survivor = node(store, "s", "127.0.0.1")
    cid, _, shares = publish(store, segments=1, k=4, n=8)
    confirm(store, cid, [survivor], NOW + 1)  # all 8 on one device: at risk
    t = NOW + 2
    fresh = [node(store, f"m{i}", f"127.0.1.{i + 1}", t) for i in range(2)]
    everyone = [survivor, *fresh]
    for step in range(6):  # a few housekeeping passes, each node syncing in between
        store.cdn_repair(t + step)
        confirm(store, cid, everyone, t + step)
    held = confirm(store, cid, everyone, t + 6)
    per_device = {d: sum(1 for sha, *_ in shares if d in held[sha]) for d in everyone}
    assert sorted(per_device.values()) == [2, 3, 3]  # as even as 8 on 3 can be
    assert all(len(held[sha]) == 1 for sha, *_ in shares)  # and the doubles were dropped
    [obj] = store.cdn_stats("cust", t + 6)["by_object"]
    assert obj["state"] == "degraded" and obj["min_devices"] == 3
    assert obj["min_shares_after_one_loss"] == 5
