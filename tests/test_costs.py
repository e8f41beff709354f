"""Costs a user can see and cap (issue 11, finding 9): the price, what each job was charged
and how much of it paid for checks, `max_cost` (refused when a job's limits let it cost more,
stopped when its charges reach it), a customer's credit limit (402), an owner's statement that
sums to its earnings. In the store on SQLite and PostgreSQL, and on a real local fog through
the real CLI and SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from fogwheel.core import costs
from fogwheel.core.ledger import DEFAULT_PRICE, MICRO, customer_account
from fogwheel.protocol import JobIn, Limits, SyncIn, TaskReport
from fogwheel.store import Store
from tests.test_store import FN, T0, join, value


def a_job(n: int, *, replicas: int | str = 1, max_cost: float | None = None, **limits) -> JobIn:
    return JobIn(
        name="t",
        kind="python",
        fn=FN,
        tasks=[{"args": value(str(i).encode())} for i in range(n)],  # type: ignore[misc]
        limits=Limits(**limits),
        replicas=replicas,
        max_cost=max_cost,
    )


def report(task: dict, cpu_s: float = 1.0) -> TaskReport:
    return TaskReport(
        task_id=task["task_id"], attempt=task["attempt"], ok=True, value=value(b"r"), cpu_s=cpu_s
    )


# -- the pure figures ------------------------------------------------------------------------


def test_the_estimate_is_tasks_x_runs_x_the_limit_x_the_price() -> None:
    est = costs.estimate(10, "adaptive", cpu_s=None, wall_s=600.0, price=DEFAULT_PRICE)
    assert est.micro == 10 * 600 * DEFAULT_PRICE.per_cpu_second  # 6 credits
    assert est.bound == "wall" and est.runs_per_task == 1
    est = costs.estimate(10, 3, cpu_s=2.0, wall_s=600.0, price=DEFAULT_PRICE)
    assert est.micro == 10 * 3 * 2 * DEFAULT_PRICE.per_cpu_second and est.bound == "cpu"
    why = costs.over_max_cost(est, costs.to_micro(0.01), DEFAULT_PRICE)
    assert why is not None
    assert why.startswith("this job may cost up to 0.060000 credits (10 tasks x 3 runs x 2")
    assert "raise --max-cost" in why
    assert costs.over_max_cost(est, est.micro, DEFAULT_PRICE) is None
    assert costs.to_micro(2.5) == 2_500_000 and costs.to_micro(1e-7) == 0
    assert costs.max_cost_reached(999, 1000) is None
    assert (costs.max_cost_reached(1000, 1000) or "").startswith("max cost reached")
    assert costs.over_credit_limit(-5 * MICRO, 10 * MICRO) is None
    assert "past your credit limit" in (costs.over_credit_limit(-10 * MICRO, 10 * MICRO) or "")


# -- the store, both databases -----------------------------------------------------------------


def test_a_job_whose_limits_let_it_cost_more_than_its_max_cost_is_refused(store: Store) -> None:
    status, why = store.job_refusal("c1", a_job(10, max_cost=5.0)) or (0, "")
    assert status == 422 and "may cost up to 6.000000 credits" in why
    assert store.job_refusal("c1", a_job(10, max_cost=6.0)) is None
    assert store.job_refusal("c1", a_job(10, max_cost=0.01, cpu_s=1.0)) is None
    status, why = store.job_refusal("c1", a_job(10, replicas=2, max_cost=6.0)) or (0, "")
    assert status == 422 and "2 runs" in why
    assert store.job_refusal("c1", a_job(10)) is None  # no cap: no estimate refuses it


def test_a_running_job_stops_when_its_charges_reach_max_cost_and_is_charged_no_more(
    store: Store,
) -> None:
    node = join(store, "n", cores=2)
    job_id = store.create_job("c1", a_job(5, max_cost=0.0025), T0)  # 2,500 micro-credits
    leased = store.sync(node, SyncIn(want=5, slots_free=5), T0).tasks
    assert len(leased) == 5
    run = DEFAULT_PRICE.for_cpu(1.0)  # 1,000 a task
    store.sync(node, SyncIn(results=[report(t) for t in leased[:2]]), T0 + 10)
    job = store.get_job("c1", job_id)
    assert job is not None and job["state"] == "running" and job["cost"] == 2 * run
    store.sync(node, SyncIn(results=[report(leased[2])]), T0 + 11)  # 3,000: past the cap
    job = store.get_job("c1", job_id)
    assert job is not None and job["state"] == "cancelled"
    assert job["cancel_reason"].startswith("max cost reached: charged 0.003000 credits")
    assert job["cost"] == 3 * run and job["max_cost"] == 2500
    # the rest was cancelled: a late result is dropped, neither charged nor paid
    store.sync(node, SyncIn(results=[report(t) for t in leased[3:]]), T0 + 12)
    after = store.get_job("c1", job_id)
    assert after is not None and after["cost"] == 3 * run
    assert -store.balance(customer_account("c1")) == 3 * run
    # the bound: max_cost plus the one batch whose charge crossed it
    assert after["cost"] <= 2500 + run
    # and nothing of it is leased again
    assert store.sync(node, SyncIn(want=5, slots_free=5), T0 + 13).tasks == []
    [t] = [t for t in store.list_tasks("c1", job_id, None, 10, 0) or [] if t["index"] == 4]
    assert t["state"] == "cancelled" and "max cost reached" in t["error"]["message"]


def test_a_jobs_cost_and_checks_come_from_the_ledger(store: Store) -> None:
    a, b = join(store, "a", cores=2), join(store, "b", cores=2)
    job_id = store.create_job("c1", a_job(1, replicas=2), T0)
    [ta] = store.sync(a, SyncIn(want=1, slots_free=1), T0).tasks
    [tb] = store.sync(b, SyncIn(want=1, slots_free=1), T0).tasks
    store.sync(a, SyncIn(results=[report(ta, 2.0)]), T0 + 5)
    store.sync(b, SyncIn(results=[report(tb, 2.0)]), T0 + 5)
    [job] = store.list_jobs("c1")
    run = DEFAULT_PRICE.for_cpu(2.0)
    assert job["id"] == job_id and job["state"] == "done"
    assert (job["cost"], job["checks"], job["checks_cost"]) == (2 * run, 1, run)
    assert job["cost"] == -store.balance(customer_account("c1"))
    assert job["max_cost"] is None and job["cancel_reason"] is None


def test_past_the_credit_limit_new_jobs_are_refused_with_402(store: Store) -> None:
    assert store.credit_limit("c1") == store.default_credit_limit
    node = join(store, "n", cores=2)
    store.set_credit_limit("c1", 1500, T0)  # 0.0015 credits
    store.create_job("c1", a_job(2), T0)
    leased = store.sync(node, SyncIn(want=2, slots_free=2), T0).tasks
    assert store.job_refusal("c1", a_job(1)) is None
    store.sync(node, SyncIn(results=[report(t) for t in leased]), T0 + 10)  # -2,000
    status, why = store.job_refusal("c1", a_job(1)) or (0, "")
    assert status == 402 and "past your credit limit of 0.001500 credits" in why
    assert store.job_refusal("c2", a_job(1)) is None  # another customer is not held to it
    store.set_credit_limit("c1", 10 * MICRO, T0 + 11)
    assert store.job_refusal("c1", a_job(1)) is None


def test_an_owners_statement_sums_to_its_earnings(store: Store) -> None:
    a, b = join(store, "a", cores=2), join(store, "b", cores=2)
    for i in range(3):
        store.create_job("c1", a_job(1, replicas=2), T0 + i)
        [ta] = store.sync(a, SyncIn(want=1, slots_free=1), T0 + i).tasks
        [tb] = store.sync(b, SyncIn(want=1, slots_free=1), T0 + i).tasks
        store.sync(a, SyncIn(results=[report(ta, 1.5)]), T0 + i + 5)
        store.sync(b, SyncIn(results=[report(tb, 1.5)]), T0 + i + 5 + 86400 * i)
    earned = store.owner_earnings("operator")["total"]
    st = store.owner_statement("operator")
    assert earned > 0 and st["earned"] == earned == sum(x["earned"] for x in st["lines"])
    assert st["paid_out"] == 0 and st["balance"] == earned and st["payouts"] == []
    assert {x["source"] for x in st["lines"]} == {f"job {j['id']}" for j in store.list_jobs("c1")}
    assert len({x["day"] for x in st["lines"]}) >= 2  # a line a day and job
    assert store.node_statement(a)["earned"] == sum(
        d["balance"] for d in store.owner_earnings("operator")["devices"] if d["node_id"] == a
    )


# -- on a real local fog, through the real CLI and SDK -----------------------------------------


def burn(seconds: float) -> float:
    """Spin the CPU for `seconds` of CPU time (not wall time: the machine may be busy)."""
    start = time.process_time()
    x = 0
    while time.process_time() - start < seconds:
        x += 1
    return seconds


def fogwheel(fog, *args: str, key: str | None = None, timeout: float = 120):
    env = {
        **os.environ,
        "FOGWHEEL_COORDINATOR": fog.url,
        "FOGWHEEL_API_KEY": fog.api_key,
        "FOGWHEEL_ADMIN_KEY": fog.admin_key,
        "COLUMNS": "200",  # tables unwrapped, for the assertions on them
    }
    if key:
        env["FOGWHEEL_OWNER_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def wait_for(what: str, check, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory):
    from fogwheel.localfog import LocalFog

    with LocalFog(2, lease_seconds=3.0, workdir=tmp_path_factory.mktemp("fog")) as f:
        yield f


def test_the_price_is_the_ledgers(fog) -> None:
    res = fogwheel(fog, "price", "--json")
    assert res.returncode == 0, res.stderr
    sheet = json.loads(res.stdout)
    assert sheet == httpx.get(f"{fog.url}/v1/price").json()
    assert sheet["per_cpu_second"] == DEFAULT_PRICE.per_cpu_second
    assert sheet["fee_bps"] == DEFAULT_PRICE.fee_bps
    assert "--replicas 1" in sheet["checks"]
    table = fogwheel(fog, "price")
    assert "a CPU-second of verified work" in table.stdout and "0.001000" in table.stdout


def test_a_job_over_its_max_cost_is_refused_by_the_cli_and_the_sdk(fog) -> None:
    from fogwheel.client import Client
    from fogwheel.errors import ApiError

    res = fogwheel(fog, "run", "--max-cost", "0.1", "--", "python3", "-c", "print(1)")
    assert res.returncode == 1
    assert "this job may cost up to 0.600000 credits" in res.stderr, res.stderr
    assert "raise --max-cost" in res.stderr
    with Client(fog.url, fog.api_key, max_cost=0.001) as client:
        with pytest.raises(ApiError) as e:
            client.submit_many(burn, [((0.1,), {}) for _ in range(16)], cpu_s=0.5)
        assert e.value.status == 422 and "may cost up to 0.008000 credits" in e.value.message
    with Client(fog.url, fog.api_key) as client:  # a cap for one job only
        with pytest.raises(ApiError) as e:
            client.run(["python3", "-c", "print(1)"], max_cost=0.1)
        assert e.value.status == 422 and "may cost up to 0.600000 credits" in e.value.message


def test_a_running_job_is_stopped_at_its_max_cost_and_jobs_show_what_each_cost(fog) -> None:
    from fogwheel.client import Client

    cap = 0.008  # 16 tasks x 0.5 CPU-s x 0.001: what one run of each may cost ...
    with Client(fog.url, fog.api_key, max_cost=cap, cancel_on_exit=False) as client:
        # ... but new nodes' results are checked on the other node: two runs a task
        futures = client.submit_many(burn, [((0.45,), {}) for _ in range(16)], cpu_s=0.5)
        job_id = futures[0].job_id
        job = wait_for(
            "the job is stopped at its max cost",
            lambda: (j := client.job(job_id))["state"] == "cancelled" and j,
        )
        assert job["cancel_reason"].startswith("max cost reached"), job
        assert job["max_cost"] == costs.to_micro(cap)
        assert job["checks"] > 0 and job["checks_cost"] > 0
        per_run = DEFAULT_PRICE.for_cpu(0.5)  # what the CPU limit lets one run be charged
        # the bound: the cap plus the sync that crossed it (a result can complete a check:
        # both its runs are charged then), here at most 2 results of 2 runs
        assert costs.to_micro(cap) <= job["cost"] <= costs.to_micro(cap) + 4 * per_run
        states = [t["state"] for t in client.tasks(job_id, limit=100)]
        assert "cancelled" in states  # stopped before the end
        time.sleep(8)  # what was in flight comes back, or its leases end: never charged
        again = client.job(job_id)
        assert again["cost"] == job["cost"]
        # what the jobs say they cost is what the books say the customer was charged
        usage = client._request("GET", "/v1/usage", params={"limit": 1000}).json()
        charged = -usage["balance"]
        assert sum(j["cost"] for j in client.jobs(1000)) == charged
        assert usage["credit_limit"] > 0
    listed = fogwheel(fog, "jobs")
    assert listed.returncode == 0, listed.stderr
    assert "cost" in listed.stdout and "checks" in listed.stdout
    assert f"of {cap:.6f}" in listed.stdout
    one = fogwheel(fog, "jobs", str(job_id))
    assert one.returncode == 0, one.stderr
    assert "stopped: max cost reached" in one.stdout and "check run(s)" in one.stdout


@pytest.fixture
def own_fog(tmp_path):
    """A fog of this test's own: its work must not earn the module fog's nodes the trust
    that lets the max-cost test's results go unchecked (under xdist either may run first)."""
    from fogwheel.localfog import LocalFog

    with LocalFog(2, lease_seconds=3.0, workdir=tmp_path / "fog") as f:
        yield f


def test_statements_sum_to_the_earnings(own_fog) -> None:
    from fogwheel.client import Client

    fog = own_fog
    # the operator's own devices do some work; their statement then sums to their earnings
    with Client(fog.url, fog.api_key) as client:
        for f in client.submit_many(burn, [((0.1,), {}) for _ in range(4)], cpu_s=0.5):
            f.result(timeout=120)
    admin = {"authorization": f"Bearer {fog.admin_key}"}
    earned = httpx.get(f"{fog.url}/v1/owners/operator/earnings", headers=admin).json()
    st = httpx.get(f"{fog.url}/v1/owners/operator/statement", headers=admin).json()
    assert earned["total"] > 0
    assert st["earned"] == earned["total"] == sum(x["earned"] for x in st["lines"])
    assert st["paid_out"] == 0 and st["balance"] == st["earned"]
    # a device's own statement, through the CLI, on the device
    res = fogwheel(fog, "earnings", "--statement", "--json", "--data-dir", str(fog.dir / "node-0"))
    assert res.returncode == 0, res.stderr
    mine = json.loads(res.stdout)
    device = next(d for d in earned["devices"] if d["node_id"] == mine["node_id"])
    assert mine["earned"] == device["balance"] == sum(x["earned"] for x in mine["lines"])
    shown = fogwheel(fog, "earnings", "--statement", "--data-dir", str(fog.dir / "node-0"))
    assert "payouts: none yet" in shown.stdout and "job " in shown.stdout
    # an owner's, with its owner key (a new owner: no devices, nothing earned yet)
    key = fogwheel(fog, "owners", "create", "bob-home").stdout.strip()
    res = fogwheel(fog, "earnings", "--owner", "--statement", "--json", key=key)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["earned"] == 0
    assert "no earnings yet" in fogwheel(fog, "earnings", "--owner", "--statement", key=key).stdout
