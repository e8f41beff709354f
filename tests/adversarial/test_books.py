"""Honest books: a node's CPU claim is not what the customer pays.

Before: each agreeing replica was paid its own unbounded `cpu_s` (a 1 ms task charged
1,000,000 credits), and a `cpu_s` of 1e17 overflowed SQLite's INTEGER in the ledger, so that
every later sync of the honest node that shared the task got HTTP 500.

Now credit comes from the quorum (core/credit.py): the least agreeing claim, each held to its
lease's wall time x cores, and a lone unchecked claim to the typical checked run of the same
function; the wire refuses numbers past any column; the books balance."""

from __future__ import annotations

import json
import math
import pickle
import time
from typing import Any

import cloudpickle
import pytest

from fogwheel.core.ledger import DEFAULT_PRICE
from fogwheel.localfog import LocalFog
from tests.adversarial.customers import Customer, books
from tests.adversarial.hostile import HostileNode

TASKS = 2
SLACK_PER_RUN = 0  # micro-credits: none, the honest price of a run is exactly the least charge


def tiny(x: int) -> int:
    """Far less than a millisecond of CPU: its honest price is the least charge, 1 µcr a run,
    whatever the load on this machine (CPU time of heavier work varies too much from one run
    to the next to compare two jobs within 10 %)."""
    return x * 3


def answer_for(lease: dict[str, Any]) -> bytes:
    """What an honest worker returns for this lease: the customer's own arguments (the test
    made them) through the same function, as cloudpickle bytes."""
    import base64

    (args, kwargs) = pickle.loads(base64.b64decode(lease["args"]["data"]))
    return cloudpickle.dumps(tiny(*args, **kwargs))


def lie(h: HostileNode, leases: list[dict[str, Any]], cpu_s: float) -> None:
    """Report the right answers, claiming `cpu_s` CPU-seconds for each."""
    reps = [h.result(t, value=answer_for(t), cpu_s=cpu_s, wall_s=3600.0) for t in leases]
    r = h.report(*reps)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["acked"]) == sorted(t["task_id"] for t in leases)


def no_server_errors(fog: LocalFog) -> None:
    log = (fog.dir / "coordinator.log").read_text(errors="replace")
    assert "unhandled error" not in log, log[-3000:]


def test_a_liar_is_paid_the_honest_price_as_a_replica_and_alone(tmp_path) -> None:
    with LocalFog(0, lease_seconds=30.0, workdir=tmp_path) as fog:
        c = Customer(fog.url, fog.api_key)
        fog.add_node()
        fog.add_node()
        fog.wait_for_nodes(2)
        # The honest price: the same job on honest nodes only, every task checked twice.
        honest = c.submit(tiny, [(i,) for i in range(TASKS)], replicas=2)
        assert [r["state"] for r in c.results(honest["id"])] == ["done"] * TASKS
        per_run = c.charged(honest["id"]) / (2 * TASKS)
        assert per_run == DEFAULT_PRICE.min_charge
        fog.kill_node(1)

        with HostileNode(fog.url, fog.join_token, name="liar") as h:
            assert h.join().status_code == 201
            # 1. The liar is one of two agreeing replicas (the honest node takes the other).
            job = c.submit(tiny, [(i,) for i in range(TASKS)], replicas=2)
            leases = h.lease(TASKS, at_least=TASKS, timeout=60)
            lie(h, leases, cpu_s=1e6)
            assert [r["state"] for r in c.results(job["id"])] == ["done"] * TASKS
            charged = c.charged(job["id"])
            assert charged <= 1.1 * per_run * 2 * TASKS + SLACK_PER_RUN * 2 * TASKS, charged

            # 2. The liar alone, replicas=1: nobody checks it. It holds the lease a while,
            # so that wall time x cores would allow far more than the task took.
            fog.kill_node(0)
            alone = c.submit(tiny, [(i,) for i in range(TASKS)], replicas=1)
            leases = h.lease(TASKS, at_least=TASKS, timeout=60)
            time.sleep(1.0)
            lie(h, leases, cpu_s=1e6)
            c.results(alone["id"])
            charged = c.charged(alone["id"])
            assert charged <= 1.1 * per_run * TASKS + SLACK_PER_RUN * TASKS, charged
            earned = h.http.get("/v1/nodes/me/earnings").json()["balance"]
            assert earned <= 1.1 * per_run * 2 * TASKS + SLACK_PER_RUN * 2 * TASKS

        ledger = books(fog.url, fog.admin_key)
        assert ledger["total"] == 0 and ledger["balanced"]
        assert sum(ledger["accounts"].values()) == 0
        no_server_errors(fog)


@pytest.mark.parametrize("claim", [1e17, 1e308, math.nan, math.inf, -1.0])
def test_a_claim_past_any_column_is_refused_and_the_honest_node_carries_on(tmp_path, claim) -> None:
    with LocalFog(0, lease_seconds=30.0, workdir=tmp_path) as fog:
        c = Customer(fog.url, fog.api_key)
        with HostileNode(fog.url, fog.join_token, name="liar") as h:
            assert h.join().status_code == 201
            job = c.submit(tiny, [(i,) for i in range(TASKS)], replicas=2)
            leases = h.lease(TASKS, at_least=TASKS)
            fog.add_node()  # the honest node takes the other replica of each task
            reps = [h.result(t, value=answer_for(t), cpu_s=claim) for t in leases]
            # NaN and Infinity as Python's json writes them (httpx refuses to)
            r = h.http.post(
                "/v1/nodes/me/sync",
                content=json.dumps({"results": reps}, allow_nan=True),
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 422, r.text  # refused at the wire, with a sentence
            assert "cpu_s" in r.text
            # The honest node's syncs go on (a 500 would leave its reports unsettled).
            lie(h, [{**t} for t in leases], cpu_s=0.004)
            results = c.results(job["id"], timeout=120)
            assert [r["state"] for r in results] == ["done"] * TASKS
        ledger = books(fog.url, fog.admin_key)
        assert ledger["total"] == 0 and ledger["balanced"]
        no_server_errors(fog)
