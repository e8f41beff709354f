"""A comparison bomb does not stall the coordinator.

Before: a 150-byte result of nested lists that share references (`[x, x]` forty times over)
made the tolerance comparison walk 2**40 leaves, under the database write lock, so every other
request waited. Now the decoder refuses shared references and counts what it builds, the
comparison has a step budget, and decoding happens before the write transaction
(core/compare.py, store/verify.py): the bomb is compared by hash."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

from fogwheel.localfog import LocalFog
from tests.adversarial.customers import Customer
from tests.adversarial.hostile import HostileNode, shared_reference_bomb

PROMPT_S = 5.0  # a liveness bound, not a speed claim: the bomb took forever before


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def other_bomb(depth: int = 40) -> bytes:
    """The same shape with another leaf: another digest, so the two must be compared."""
    x: list[Any] = [1.0 + 1e-12]
    for _ in range(depth):
        x = [x, x]
    return pickle.dumps(x)


def test_another_customer_is_answered_promptly_while_a_bomb_is_compared(tmp_path) -> None:
    with LocalFog(0, lease_seconds=30.0, workdir=tmp_path) as fog:
        a = Customer(fog.url, fog.api_key)
        b = Customer.create(fog.url, fog.admin_key, "b")
        job = a.submit(mean, [([1.0, 2.0],)], replicas=2, tolerance={"rel": 1e-6, "abs": 0.0})
        with (
            HostileNode(fog.url, fog.join_token, name="bomber-1") as h1,
            HostileNode(fog.url, fog.join_token, name="bomber-2") as h2,
        ):
            assert h1.join().status_code == 201 and h2.join().status_code == 201
            [l1] = h1.lease(1)
            [l2] = h2.lease(1)
            assert l1["task_id"] != l2["task_id"]  # two replicas of one task
            r = h1.report(h1.result(l1, value=shared_reference_bomb()))
            assert r.status_code == 200 and r.json()["acked"] == [l1["task_id"]]

            answer: dict[str, Any] = {}

            def detonate() -> None:
                t0 = time.monotonic()
                answer["response"] = h2.report(h2.result(l2, value=other_bomb()))
                answer["took"] = time.monotonic() - t0

            bomb = threading.Thread(target=detonate)
            bomb.start()
            time.sleep(0.3)  # let it reach the coordinator first
            t0 = time.monotonic()
            other = b.submit(mean, [([3.0],)])  # another customer's submission
            submit_s = time.monotonic() - t0
            t0 = time.monotonic()
            s = h1.sync(want=0)  # and another node's sync
            sync_s = time.monotonic() - t0
            bomb.join(timeout=120)
            assert not bomb.is_alive(), "the bomb's report never came back"
            assert other["total"] == 1 and s.status_code == 200
            assert submit_s < PROMPT_S, f"another customer's submission took {submit_s:.1f} s"
            assert sync_s < PROMPT_S, f"another node's sync took {sync_s:.1f} s"
            assert answer["response"].status_code == 200, answer["response"].text
            assert answer["took"] < 60

        # The bomb's task is resolved, compared by hash: the two results do not agree, and
        # with nobody left to break the tie it fails instead of hanging.
        [res] = a.results(job["id"], timeout=120)
        assert res["state"] == "failed"
        assert "disagree" in (res["error"] or {}).get("message", "")
