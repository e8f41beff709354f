"""Kept state: a task leaves files in `keep/`, a later task of the same customer finds them on
the node that kept them (placement goes there), another customer never does, and nothing of
it is uploaded."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx

from fogwheel.client import Client
from fogwheel.localfog import LocalFog


def step(previous_must_exist: bool) -> dict[str, object]:
    """Count up in keep/counter; say where it ran and whether the state was there."""
    path = Path("keep/counter")
    found = path.exists()
    n = int(path.read_text()) if found else 0
    path.parent.mkdir(exist_ok=True)
    path.write_text(str(n + 1))
    if previous_must_exist and not found:
        raise RuntimeError("no kept state")
    return {"n": n + 1, "found": found, "pid_host": (os.getppid(), socket.gethostname())}


def test_state_kept_by_one_task_reaches_the_next_on_the_same_node_only_for_its_customer(
    tmp_path: Path,
) -> None:
    with LocalFog(2, workdir=tmp_path / "fog") as fog:
        with Client(fog.url, fog.api_key, replicas=1) as client:
            [first] = client.submit_many(
                step, [((False,), {})], keep=[(None, "counter/1")], replicas=1
            )
            assert first.result(60)["n"] == 1
            for r in range(2, 6):
                [nxt] = client.submit_many(
                    step, [((True,), {})], keep=[(f"counter/{r - 1}", f"counter/{r}")]
                )
                out = nxt.result(60)
                assert out == {**out, "n": r, "found": True}
            reasons = [h["reason"] for t in client.tasks(nxt.job_id) for h in t["history"]]
            assert any("of its input already here" in why for why in reasons), reasons
        # Another customer naming the same key finds nothing.
        admin = {"authorization": f"Bearer {fog.admin_key}"}
        key = httpx.post(f"{fog.url}/v1/customers", params={"name": "eve"}, headers=admin).json()[
            "api_key"
        ]
        with Client(fog.url, key, replicas=1) as eve:
            [theirs] = eve.submit_many(step, [((False,), {})], keep=[("counter/5", "x/1")])
            assert theirs.result(60)["found"] is False
    # Kept state never went to the coordinator's blob store.
    blobs = tmp_path / "fog" / "coordinator"
    stored = [p.read_bytes() for p in blobs.rglob("*") if p.is_file() and p.stat().st_size < 8]
    assert b"5" not in stored


def pid() -> str:
    """Which process this is: its pid and start time (a sandbox gives every worker pid 2)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return f"{os.getpid()}@{fields[19]}"


def test_a_worker_stays_warm_across_one_customers_jobs_and_never_serves_another(
    tmp_path: Path,
) -> None:
    with LocalFog(1, workdir=tmp_path / "fog") as fog:
        admin = {"authorization": f"Bearer {fog.admin_key}"}
        key = httpx.post(f"{fog.url}/v1/customers", params={"name": "eve"}, headers=admin).json()[
            "api_key"
        ]
        with (
            Client(fog.url, fog.api_key, replicas=1) as mine,
            Client(fog.url, key, replicas=1) as theirs,
        ):
            first = mine.submit(pid).result(60)
            again = mine.submit(pid).result(60)  # another job, same customer
            other = theirs.submit(pid).result(60)
            back = mine.submit(pid).result(60)
    assert first == again  # imports stay warm between one customer's jobs
    assert other not in (first, again)  # never a process another customer's code ran in
    assert back not in (first, other)
