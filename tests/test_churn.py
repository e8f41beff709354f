"""Devices and the coordinator vanish mid-job; nothing acknowledged is lost."""

from __future__ import annotations

import signal
import time
from concurrent.futures import as_completed

import httpx

from fogwheel import Client
from fogwheel.localfog import LocalFog


def slow_square(x: int) -> int:
    time.sleep(0.15)
    return x * x


def _node_holding_work(fog: LocalFog, client: Client, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in client.nodes():
            i = int(n["name"].split("-")[1])
            if n["held"] > 0 and fog.nodes[i] is not None and fog.nodes[i].poll() is None:
                return i
        time.sleep(0.05)
    raise AssertionError("no node ever held work")


def test_a_node_killed_mid_task_loses_nothing_and_each_task_finishes_once(tmp_path) -> None:
    with LocalFog(3, lease_seconds=2.0, workdir=tmp_path) as fog, Client(fog.url, fog.api_key) as c:
        futures = c.submit_many(slow_square, [((i,), {}) for i in range(60)])
        victim = _node_holding_work(fog, c)
        fog.kill_node(victim, signal.SIGKILL)
        results = {f.index: f.result(timeout=120) for f in as_completed(futures, timeout=120)}
        assert results == {i: i * i for i in range(60)}
        tasks = c.tasks(futures[0].job_id, limit=1000)
        assert len(tasks) == 60 and all(t["state"] == "done" for t in tasks)
        lost = [h for t in tasks for h in t["history"] if h["outcome"] == "lost"]
        assert lost, "the killed node held work, so some attempts must have been lost"
        settled = ("agreed", "accepted")
        assert all(any(h["outcome"] in settled for h in t["history"]) for t in tasks)
        page = httpx.get(
            f"{fog.url}/v1/jobs/{futures[0].job_id}/results", headers=fog.headers
        ).json()
        assert sorted(r["index"] for r in page["results"]) == list(range(60))  # once each


def test_the_coordinator_killed_mid_job_restarts_on_its_database_and_finishes(tmp_path) -> None:
    with LocalFog(2, lease_seconds=3.0, workdir=tmp_path) as fog, Client(fog.url, fog.api_key) as c:
        futures = c.submit_many(slow_square, [((i,), {}) for i in range(40)])
        while c.job(futures[0].job_id)["finished"] < 8:
            time.sleep(0.05)
        acknowledged = c.job(futures[0].job_id)["finished"]
        fog.kill_coordinator()
        time.sleep(2.0)  # nodes finish work and keep their results while it is down
        fog.start_coordinator()
        assert c.job(futures[0].job_id)["finished"] >= acknowledged
        results = {f.index: f.result(timeout=120) for f in futures}
        assert results == {i: i * i for i in range(40)}
        deadline = time.monotonic() + 30
        while sum(n["state"] == "up" for n in c.nodes()) < 2:
            assert time.monotonic() < deadline, "nodes did not reconnect by themselves"
            time.sleep(0.1)


def test_a_node_stopped_with_sigterm_hands_back_its_queue_and_leaves(tmp_path) -> None:
    # Unchecked (replicas=1): with one node left, nobody could check the other's results.
    with (
        LocalFog(2, lease_seconds=30.0, workdir=tmp_path) as fog,
        Client(fog.url, fog.api_key, replicas=1) as c,
    ):
        futures = c.submit_many(slow_square, [((i,), {}) for i in range(30)])
        victim = _node_holding_work(fog, c)
        fog.kill_node(victim, signal.SIGTERM)
        assert fog.nodes[victim].wait(30) == 0
        # With 30 s leases, only a hand-back (not an expiry) gets its tasks done this soon.
        results = {f.index: f.result(timeout=25) for f in futures}
        assert results == {i: i * i for i in range(30)}
        [gone] = [n for n in c.nodes() if n["name"] == f"local-{victim}"]
        assert gone["state"] == "gone" and gone["held"] == 0


def test_nodes_reconnect_after_the_coordinator_is_restarted(tmp_path) -> None:
    with LocalFog(1, lease_seconds=2.0, workdir=tmp_path) as fog:
        fog.kill_coordinator()
        fog.start_coordinator()
        with Client(fog.url, fog.api_key, replicas=1) as c:
            assert c.submit(slow_square, 5).result(timeout=60) == 25
        r = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers)
        assert [n["state"] for n in r.json()["nodes"]] == ["up"]
