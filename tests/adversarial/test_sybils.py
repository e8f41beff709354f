"""Sybils that lease work and report `crash` do not fail an honest customer's job (finding 6
of issue 10): a new device's crash, or another from an owner that crashed the task already,
gives the task another attempt instead of using one up (core/owners.py)."""

from __future__ import annotations

import threading

from fogwheel import Client
from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode


def square(x: int) -> int:
    busy = sum(k * k for k in range(20_000))
    return x * x + busy - busy


def crash_everything(fog: LocalFog, n: int, stop: threading.Event, crashed: list[int]) -> None:
    """n Sybils on the fog's own join token: lease whatever they can and report a crash."""
    sybils = [HostileNode(fog.url, fog.join_token, name=f"sybil-{i}") for i in range(n)]
    for s in sybils:
        assert s.join().status_code == 201
    while not stop.is_set():
        for s in sybils:
            r = s.sync(want=8, slots_free=8)
            if r.status_code != 200:
                continue
            leases = r.json()["tasks"]
            if leases:
                crash = {"kind": "crash", "message": "worker died"}
                s.report(*[s.result(t, ok=False, error=crash) for t in leases])
                crashed[0] += len(leases)
        stop.wait(0.02)
    for s in sybils:
        s.close()


def test_three_crash_reporting_sybils_fail_none_of_an_honest_customers_50_tasks(tmp_path) -> None:
    with LocalFog(0, workdir=tmp_path) as fog:
        stop, crashed = threading.Event(), [0]
        attack = threading.Thread(target=crash_everything, args=(fog, 3, stop, crashed))
        attack.start()
        try:
            fog.add_node()
            fog.add_node()
            fog.wait_for_nodes(5)
            with Client(fog.url, fog.api_key) as client:
                futures = client.submit_many(square, [((i,), {}) for i in range(50)])
                answers = [f.result(timeout=600) for f in futures]  # raises if any failed
                [job] = [j for j in client.jobs() if j["id"] == futures[0].job_id]
        finally:
            stop.set()
            attack.join()
        assert answers == [i * i for i in range(50)]
        assert job["failed"] == 0
        assert crashed[0] >= 10  # the Sybils did get work, and crashed it
