"""The books: prices and balanced transactions (pure), the ledger table on SQLite and PostgreSQL,
and the usage / earnings / totals API and CLI on a real local fog."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc, text

import fogwheel.store.ledger
from fogwheel.core.ledger import (
    DEFAULT_PRICE,
    PLATFORM_FEES,
    Entry,
    Price,
    balances,
    charge_for_task,
    check_transaction,
    correction,
    format_credits,
    is_balanced,
)
from fogwheel.store import Store
from fogwheel.store.base import StoreBase
from fogwheel.store.ledger import LedgerStore

T0 = 1_000_000.0
PRICE = Price(per_cpu_second=1_000, fee_bps=1_000, min_charge=1)  # the defaults, pinned here


def spin(n: int) -> int:
    """A task that burns real CPU, so that its node earns more than the minimum charge."""
    return sum(i * i for i in range(n)) % 7


def charge(txn: str, customer: str, *runs: tuple[str, float], price: Price = PRICE) -> list[Entry]:
    return charge_for_task(txn, customer, list(runs), price=price)


def amounts(entries: list[Entry]) -> dict[str, int]:
    return {e.account: e.amount for e in entries}


# -- the pure core: prices, charges, corrections ------------------------------------------------


def test_the_default_price_is_a_thousandth_of_a_credit_per_cpu_second_and_a_tenth_fee() -> None:
    assert DEFAULT_PRICE == PRICE  # the store tests below rely on it


def test_a_charge_debits_the_customer_and_credits_the_node_and_the_platform_fee() -> None:
    entries = charge("task-1", "c1", ("n1", 10.0))
    assert amounts(entries) == {"customer:c1": -10_000, "node:n1": 9_000, PLATFORM_FEES: 1_000}
    assert {e.txn for e in entries} == {"task-1"}
    assert sum(e.amount for e in entries) == 0


@pytest.mark.parametrize(
    ("fee_bps", "node", "platform"),
    [(0, 10_000, None), (250, 9_750, 250), (1_000, 9_000, 1_000), (10_000, None, 10_000)],
)
def test_the_platform_keeps_its_fee_in_basis_points_and_zero_entries_are_left_out(
    fee_bps: int, node: int | None, platform: int | None
) -> None:
    entries = charge("t", "c1", ("n1", 10.0), price=Price(1_000, fee_bps))
    got = amounts(entries)
    assert got.get("node:n1") == node and got.get(PLATFORM_FEES) == platform
    assert got["customer:c1"] == -10_000


def test_rounding_never_overpays_an_owner_and_the_remainder_goes_to_the_platform() -> None:
    price = Price(per_cpu_second=7, fee_bps=1_000)  # 7 µcr per CPU-second: shares are fractional
    entries = charge("t", "c1", ("n1", 1.0), ("n2", 3.0), price=price)
    got = amounts(entries)
    assert got["customer:c1"] == -(7 + 21)
    assert got["node:n1"] == 6 and got["node:n2"] == 18  # floor(6.3), floor(18.9)
    assert got[PLATFORM_FEES] == 28 - 24
    assert is_balanced(entries)


@pytest.mark.parametrize(
    ("cpu_s", "cost"),
    [(0.0, 1), (1e-9, 1), (0.0004, 1), (0.0011, 2), (1.0, 1_000), (3600.0, 3_600_000)],
)
def test_cpu_seconds_are_priced_rounded_up_with_a_minimum_charge_of_one_micro_credit(
    cpu_s: float, cost: int
) -> None:
    assert PRICE.for_cpu(cpu_s) == cost


def test_a_run_of_no_measured_cpu_still_costs_the_minimum_which_the_platform_keeps() -> None:
    entries = charge("t", "c1", ("n1", 0.0))
    assert amounts(entries) == {"customer:c1": -1, PLATFORM_FEES: 1}  # the owner's 0 is left out


def test_several_runs_on_one_node_make_one_entry_for_that_node() -> None:
    entries = charge("t", "c1", ("n1", 1.0), ("n2", 1.0), ("n1", 2.0))
    assert [e.account for e in entries] == ["customer:c1", "node:n1", "node:n2", PLATFORM_FEES]
    assert amounts(entries)["node:n1"] == 900 + 1_800


def test_a_transaction_of_no_runs_has_no_entries() -> None:
    assert charge("t", "c1") == []


@pytest.mark.parametrize("cpu_s", [-1.0, float("nan"), float("inf")])
def test_impossible_cpu_seconds_are_refused(cpu_s: float) -> None:
    with pytest.raises(ValueError, match="CPU-seconds"):
        charge("t", "c1", ("n1", cpu_s))


@pytest.mark.parametrize(
    "price", [{"per_cpu_second": -1}, {"fee_bps": -1}, {"fee_bps": 10_001}, {"min_charge": -1}]
)
def test_a_price_cannot_be_negative_nor_the_fee_over_100_percent(price: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Price(**price)


def test_a_correction_reverses_every_entry_in_a_new_transaction_and_cites_the_original() -> None:
    original = charge("task-9", "c1", ("n1", 5.0), ("n2", 1.0))
    fix = correction(original, "node n1 was caught lying")
    assert {e.txn for e in fix} == {"task-9/reversal"}
    assert [(e.account, e.amount) for e in fix] == [(e.account, -e.amount) for e in original]
    assert all("reverses task-9: node n1 was caught lying" in e.memo for e in fix)
    assert balances(original + fix) == dict.fromkeys(amounts(original), 0)


def test_a_correction_reverses_exactly_one_transaction() -> None:
    two = charge("a", "c1", ("n1", 1.0)) + charge("b", "c1", ("n1", 1.0))
    with pytest.raises(ValueError, match="one transaction"):
        correction(two, "oops")
    with pytest.raises(ValueError, match="one transaction"):
        correction([], "nothing")


@pytest.mark.parametrize(
    ("entries", "phrase"),
    [
        ([], "at least one entry"),
        ([Entry("t", "customer:c1", -5), Entry("t", "node:n1", 4)], "unbalanced"),
        ([Entry("t", "customer:c1", -5), Entry("u", "node:n1", 5)], "one txn id"),
        ([Entry("t", "node:n1", -5), Entry("t", "node:n1", 5)], "one entry per account"),
        ([Entry("t", "bank:x", -5), Entry("t", "node:n1", 5)], "is not an account"),
        ([Entry("t", "customer:c1", -0.5), Entry("t", "node:n1", 0.5)], "whole micro-credits"),  # type: ignore[arg-type]
    ],
)
def test_what_is_not_one_balanced_transaction_is_refused_with_the_reason(
    entries: list[Entry], phrase: str
) -> None:
    with pytest.raises(ValueError, match=phrase):
        check_transaction(entries)


@pytest.mark.parametrize(
    ("micro", "shown"),
    [
        (0, "0.000000 credits"),
        (1, "0.000001 credits"),
        (12_345_678, "12.345678 credits"),
        (-1_500_000, "-1.500000 credits"),
        (10**15 + 7, "1000000000.000007 credits"),
    ],
)
def test_credits_are_shown_exactly_with_six_decimals(micro: int, shown: str) -> None:
    assert format_credits(micro) == shown


# -- the property: random workloads keep the books balanced ------------------------------------

CPU = st.one_of(st.sampled_from([0.0, 1e-7, 0.5, 1.0]), st.floats(0, 1e5, allow_nan=False))
CHARGE = st.tuples(
    st.just("charge"),
    st.integers(0, 3),  # which customer
    st.lists(st.tuples(st.integers(0, 4), CPU), min_size=1, max_size=4),  # (which node, cpu_s)
)
CORRECT = st.tuples(st.just("correct"), st.integers(0, 1_000))  # which earlier charge
WORKLOAD = st.lists(st.one_of(CHARGE, CORRECT), max_size=30)
PRICES = st.builds(Price, st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 5))


def expected_balances(workload: list[Any], price: Price, prefix: str = "") -> dict[str, int]:
    """Balances computed run by run from the price alone, not from charge_for_task's entries."""
    want: dict[str, int] = defaultdict(int)
    charges: list[dict[str, int]] = []
    reversed_: set[int] = set()
    for step in workload:
        if step[0] == "charge":
            _, c, runs = step
            delta: dict[str, int] = defaultdict(int)
            for n, cpu in runs:
                cost = price.for_cpu(cpu)
                delta[f"customer:{prefix}c{c}"] -= cost
                delta[f"node:{prefix}n{n}"] += price.owner_share(cost)
                delta[PLATFORM_FEES] += cost - price.owner_share(cost)
            charges.append(delta)
        elif charges and step[1] % len(charges) not in reversed_:
            i = step[1] % len(charges)
            reversed_.add(i)
            delta = {a: -v for a, v in charges[i].items()}
        else:
            continue
        for a, v in delta.items():
            want[a] += v
    return dict(want)


def post_workload(workload: list[Any], price: Price, prefix: str = "") -> list[Entry]:
    books: list[Entry] = []
    charges: list[list[Entry]] = []
    reversed_: set[int] = set()
    for k, step in enumerate(workload):
        if step[0] == "charge":
            _, c, runs = step
            runs = [(f"{prefix}n{n}", cpu) for n, cpu in runs]
            entries = charge_for_task(f"{prefix}t{k}", f"{prefix}c{c}", runs, price=price)
            charges.append(entries)
        elif charges and step[1] % len(charges) not in reversed_:
            reversed_.add(step[1] % len(charges))
            original = charges[step[1] % len(charges)]  # empty when the price was all zeros
            entries = correction(original, "a property test's whim") if original else []
        else:
            continue
        assert sum(e.amount for e in entries) == 0
        books.extend(entries)
    return books


@settings(max_examples=300, deadline=None)
@given(workload=WORKLOAD, price=PRICES)
def test_after_any_workload_each_balance_is_its_entries_and_all_balances_sum_to_zero(
    workload: list[Any], price: Price
) -> None:
    books = post_workload(workload, price)
    got = balances(books)
    assert is_balanced(books)
    assert sum(got.values()) == 0
    for account, balance in got.items():
        assert balance == sum(e.amount for e in books if e.account == account)
    want = expected_balances(workload, price)
    assert {a: v for a, v in got.items() if v} == {a: v for a, v in want.items() if v}
    assert all(v <= 0 for a, v in got.items() if a.startswith("customer:"))
    assert all(v >= 0 for a, v in got.items() if not a.startswith("customer:"))


_example = itertools.count()
_task_ids = itertools.count(1)  # task ids unique across examples: a task is paid for once


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(workload=WORKLOAD)
def test_the_database_agrees_with_the_core_after_any_workload(
    store: Store, workload: list[Any]
) -> None:
    prefix = f"x{next(_example)}"  # each example its own customers and nodes in the one store
    fees_before = store.balance(PLATFORM_FEES)
    post_workload_in(store, workload, prefix)
    want = expected_balances(workload, PRICE, prefix)
    for account, balance in want.items():
        if account == PLATFORM_FEES:
            assert store.balance(account) - fees_before == balance
        else:
            assert store.balance(account) == balance
            assert sum(h["amount"] for h in store.history(account, 1000)) == balance
    total, _ = store.check()
    assert total == 0 and sum(store.totals().values()) == 0


def post_workload_in(store: Store, workload: list[Any], prefix: str) -> list[Entry]:
    """The same workload through the store: charges as verified tasks, corrections as reversals."""
    posted: list[Entry] = []
    charged: list[str] = []
    reversed_: set[int] = set()
    for k, step in enumerate(workload):
        if step[0] == "charge":
            _, c, runs = step
            task_id = next(_task_ids)
            with store.tx() as conn:
                entries = store.credit_verified_work(
                    conn,
                    task_id=task_id,
                    customer_id=f"{prefix}c{c}",
                    runs=[(f"{prefix}n{n}", cpu) for n, cpu in runs],
                    now=T0 + k,
                )
            charged.append(f"task-{task_id}")
        elif charged and step[1] % len(charged) not in reversed_:
            reversed_.add(step[1] % len(charged))
            entries = store.reverse(charged[step[1] % len(charged)], "whim", T0 + k)
        else:
            continue
        posted.extend(entries)
    return posted


# -- the store, on SQLite and PostgreSQL ---------------------------------------------------------


def test_post_refuses_an_unbalanced_transaction_and_writes_nothing(store: Store) -> None:
    with pytest.raises(ValueError, match="unbalanced"), store.tx() as c:
        store.post(c, [Entry("t", "customer:c1", -5), Entry("t", "node:n1", 4)], T0)
    assert store.check() == (0, 0)


def test_post_refuses_a_transaction_id_that_is_already_in_the_books(store: Store) -> None:
    store.record(charge("t1", "c1", ("n1", 1.0)), T0)
    with pytest.raises(ValueError, match="already in the books"):
        store.record(charge("t1", "c2", ("n2", 1.0)), T0 + 1)
    assert store.balance("customer:c2") == 0


def test_verified_work_charges_the_customer_and_pays_the_node_and_the_platform(
    store: Store,
) -> None:
    with store.tx() as c:
        posted = store.credit_verified_work(
            c, task_id=7, customer_id="c1", runs=[("n1", 2.5)], now=T0
        )
    assert amounts(posted) == {"customer:c1": -2_500, "node:n1": 2_250, PLATFORM_FEES: 250}
    assert store.balance("customer:c1") == -2_500
    assert store.balance("node:n1") == 2_250
    assert store.totals() == {"customer:c1": -2_500, "node:n1": 2_250, PLATFORM_FEES: 250}
    [entry] = store.history("node:n1")
    assert (entry["txn"], entry["amount"], entry["task_id"]) == ("task-7", 2_250, 7)
    assert entry["memo"] == "task 7: 1 verified run, 2.500 CPU-s" and entry["created_at"] == T0
    assert store.check() == (0, 3)


def test_verified_work_is_paid_once_per_task(store: Store) -> None:
    for k in range(2):
        with store.tx() as c:
            posted = store.credit_verified_work(
                c, task_id=7, customer_id="c1", runs=[("n1", 1.0)], now=T0 + k
            )
        assert bool(posted) == (k == 0)
    assert store.balance("customer:c1") == -1_000


def test_the_payment_commits_or_rolls_back_with_the_callers_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError), store.tx() as c:
        store.credit_verified_work(c, task_id=1, customer_id="c1", runs=[("n1", 1.0)], now=T0)
        raise RuntimeError("the verification failed after all")
    assert store.check() == (0, 0)


def test_a_reversal_is_new_entries_beside_the_original_and_cannot_be_posted_twice(
    store: Store,
) -> None:
    store.record(charge("task-3", "c1", ("n1", 4.0)), T0, task_id=3)
    fix = store.reverse("task-3", "result was wrong", T0 + 1)
    assert {e.txn for e in fix} == {"task-3/reversal"}
    assert store.balance("customer:c1") == 0 and store.balance("node:n1") == 0
    history = store.history("node:n1")
    assert [(h["txn"], h["amount"], h["task_id"]) for h in history] == [
        ("task-3/reversal", -3_600, 3),
        ("task-3", 3_600, 3),
    ]
    assert store.entries("task-3") == charge("task-3", "c1", ("n1", 4.0))
    with pytest.raises(ValueError, match="already in the books"):
        store.reverse("task-3", "again", T0 + 2)
    with pytest.raises(KeyError):
        store.reverse("no-such-txn", "nothing", T0 + 2)
    assert store.check() == (0, 6)


def test_history_is_newest_first_and_pages_backwards_with_before_id(store: Store) -> None:
    for k in range(5):
        store.record(charge(f"t{k}", "c1", ("n1", float(k + 1))), T0 + k)
    page1 = store.history("customer:c1", limit=2)
    page2 = store.history("customer:c1", limit=2, before_id=page1[-1]["id"])
    page3 = store.history("customer:c1", limit=2, before_id=page2[-1]["id"])
    assert [h["txn"] for h in page1 + page2 + page3] == ["t4", "t3", "t2", "t1", "t0"]


def test_an_account_never_used_has_balance_zero_and_no_history(store: Store) -> None:
    assert store.balance("customer:nobody") == 0
    assert store.history("customer:nobody") == []
    assert store.totals() == {} and store.check() == (0, 0)


def test_amounts_beyond_32_bits_are_kept_exactly(store: Store) -> None:
    big = 2**53 + 1  # past a double's exact integers, too
    store.record([Entry("big", "customer:c1", -big), Entry("big", "node:n1", big)], T0)
    assert store.balance("node:n1") == big and store.history("customer:c1")[0]["amount"] == -big


@pytest.mark.parametrize(
    "statement",
    ["UPDATE ledger SET amount = amount + 1", "DELETE FROM ledger", "UPDATE ledger SET memo = ''"],
)
def test_the_database_itself_refuses_to_change_or_remove_an_entry(
    store: Store, statement: str
) -> None:
    store.record(charge("t", "c1", ("n1", 1.0)), T0)
    with pytest.raises(exc.DBAPIError, match="append-only"), store.tx() as c:
        c.execute(text(statement))
    assert store.entries("t") == charge("t", "c1", ("n1", 1.0))


def test_no_method_of_the_ledger_store_can_change_an_entry() -> None:
    public = {n for n, _ in inspect.getmembers(LedgerStore, inspect.isfunction)}
    public = {n for n in public if not n.startswith("_")} - set(dir(StoreBase))
    assert public == {
        "post",
        "credit_verified_work",
        "credit_verified_batch",
        "record",
        "reverse",
        "balance",
        "history",
        "entries",
        "totals",
        "check",
        # costs (issue 11): they read the books; set_credit_limit writes credit_limits only
        "price_sheet",
        "credit_limit",
        "set_credit_limit",
        "job_refusal",
        "job_costs",
        "statement",
        "node_statement",
        "owner_statement",
    }
    source = inspect.getsource(fogwheel.store.ledger)
    assert not re.search(r"\b(update|delete)\(|\.(update|delete)\b", source)


# -- the API and the CLI on a real local fog -----------------------------------------------------


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def fogwheel_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def paid_fog(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fog of two nodes that ran three tasks for alice, and bob's key made by the CLI.

    Besides what verification pays for alice's tasks, the fixture posts known transactions
    straight into the coordinator's database: alice pays node 0 alone, then both nodes; bob
    pays a node elsewhere.
    """
    from fogwheel.client import Client
    from fogwheel.localfog import LocalFog

    fog = LocalFog(2, workdir=tmp_path_factory.mktemp("ledgerfog"))
    fog.start()
    try:
        with Client(fog.url, fog.api_key) as client:
            assert len(list(client.map(spin, [300_000] * 3, timeout=120))) == 3
            [job] = client.jobs()
            task_ids = [t["id"] for t in client.tasks(job["id"])]
        made = fogwheel_cli(
            "keys", "create", "--name", "bob", "-c", fog.url, "--json",
            env={"FOGWHEEL_ADMIN_KEY": fog.admin_key},
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        bob = json.loads(made.stdout)
        nodes = [json.loads((fog.dir / f"node-{i}" / "node.json").read_text()) for i in (0, 1)]
        n0, n1 = (n["node_id"] for n in nodes)
        alice = httpx.get(f"{fog.url}/v1/whoami", headers=bearer(fog.api_key)).json()
        store = Store(f"sqlite:///{fog.dir / 'coordinator' / 'fogwheel.db'}")
        now = time.time()
        store.record(charge("fixture-a1", alice["id"], (n0, 0.05)), now)
        store.record(charge("fixture-a2", alice["id"], (n0, 0.05), (n1, 0.06)), now)
        store.record(charge("bob-1", bob["customer_id"], ("n-elsewhere", 2.0)), now)
        yield {
            "fog": fog,
            "store": store,
            "alice": alice,
            "bob": bob,
            "nodes": nodes,
            "task_ids": task_ids,
        }
        store.close()
    finally:
        fog.stop()


def get(paid_fog: dict[str, Any], path: str, secret: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{paid_fog['fog'].url}{path}", headers=bearer(secret), params=params)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_a_customer_sees_its_own_account_and_nothing_else(paid_fog: dict[str, Any]) -> None:
    store = paid_fog["store"]
    alice = get(paid_fog, "/v1/usage", paid_fog["fog"].api_key)
    assert alice["account"] == f"customer:{paid_fog['alice']['id']}"
    assert alice["balance"] == store.balance(alice["account"]) < 0
    assert alice["balance_text"] == format_credits(alice["balance"])
    assert [h["id"] for h in alice["history"]] == [h["id"] for h in store.history(alice["account"])]
    txns = {h["txn"]: h["amount"] for h in alice["history"]}
    assert txns["fixture-a1"] == -50 and txns["fixture-a2"] == -110 and "bob-1" not in txns
    bob = get(paid_fog, "/v1/usage", paid_fog["bob"]["api_key"])
    assert bob["account"] == f"customer:{paid_fog['bob']['customer_id']}"
    assert [(h["txn"], h["amount"]) for h in bob["history"]] == [("bob-1", -2_000)]
    assert bob["balance"] == -2_000 and bob["next_before"] is None


def test_a_node_sees_its_own_earnings_and_nothing_else(paid_fog: dict[str, Any]) -> None:
    store = paid_fog["store"]
    seen = []
    for node, fixture_pay in zip(
        paid_fog["nodes"], [{"fixture-a1": 45, "fixture-a2": 45}, {"fixture-a2": 54}], strict=True
    ):
        earned = get(paid_fog, "/v1/nodes/me/earnings", node["credential"])
        assert earned["account"] == f"node:{node['node_id']}"
        assert earned["balance"] == store.balance(earned["account"]) > 0
        assert [h["id"] for h in earned["history"]] == [
            h["id"] for h in store.history(earned["account"])
        ]
        txns = {h["txn"]: h["amount"] for h in earned["history"]}
        assert {t: a for t, a in txns.items() if t.startswith("fixture")} == fixture_pay
        seen.append({h["id"] for h in earned["history"]})
    assert not seen[0] & seen[1]


def test_the_tasks_verified_on_the_fog_are_paid_once_each(paid_fog: dict[str, Any]) -> None:
    store = paid_fog["store"]
    charged = {h["txn"] for h in store.history(f"customer:{paid_fog['alice']['id']}", 1000)}
    if not any(t.startswith("task-") for t in charged):
        pytest.skip("credit_verified_work is not called by verification yet")
    assert {f"task-{i}" for i in paid_fog["task_ids"]} <= charged
    for i in paid_fog["task_ids"]:
        assert is_balanced(store.entries(f"task-{i}"))


def test_history_pages_over_the_api(paid_fog: dict[str, Any]) -> None:
    key = paid_fog["fog"].api_key
    ids: list[int] = []
    page = get(paid_fog, "/v1/usage", key, limit=1)
    while True:
        ids += [h["id"] for h in page["history"]]
        if page["next_before"] is None:
            break
        assert len(page["history"]) == 1
        page = get(paid_fog, "/v1/usage", key, limit=1, before=page["next_before"])
    account = f"customer:{paid_fog['alice']['id']}"
    assert ids == [h["id"] for h in paid_fog["store"].history(account, 1000)] and len(ids) >= 2


def test_the_operator_sees_every_account_and_a_grand_total_of_zero(
    paid_fog: dict[str, Any],
) -> None:
    store = paid_fog["store"]
    books = get(paid_fog, "/v1/ledger", paid_fog["fog"].admin_key)
    assert books["total"] == 0 and books["balanced"] is True
    assert books["accounts"] == store.totals() and books["entries"] == store.check()[1]
    assert books["accounts"]["customer:" + paid_fog["bob"]["customer_id"]] == -2_000
    assert books["accounts"][PLATFORM_FEES] > 0


@pytest.mark.parametrize(
    ("path", "who", "status", "phrase"),
    [
        ("/v1/usage", None, 401, "missing credentials"),
        ("/v1/usage", "node", 403, "for customer keys"),
        ("/v1/usage", "admin", 403, "for customer keys"),
        ("/v1/nodes/me/earnings", "customer", 403, "for node keys"),
        ("/v1/nodes/me/earnings", "bogus", 401, "unknown or revoked key"),
        ("/v1/ledger", "customer", 403, "for admin keys"),
        ("/v1/ledger", "node", 403, "for admin keys"),
        ("/v1/usage?limit=0", "customer", 422, "limit"),
        ("/v1/usage?before=abc", "customer", 422, "before"),
    ],
)
def test_the_ledger_routes_refuse_the_wrong_credentials_with_one_sentence(
    paid_fog: dict[str, Any], path: str, who: str | None, status: int, phrase: str
) -> None:
    fog = paid_fog["fog"]
    secret = {
        "customer": fog.api_key,
        "node": paid_fog["nodes"][0]["credential"],
        "admin": fog.admin_key,
        "bogus": "fwc_not-a-key",
    }.get(who or "")
    r = httpx.get(f"{fog.url}{path}", headers=bearer(secret) if secret else {})
    assert r.status_code == status and phrase in r.json()["error"], r.text


def test_fogwheel_usage_and_earnings_show_balances_in_credits(paid_fog: dict[str, Any]) -> None:
    fog, node, store = paid_fog["fog"], paid_fog["nodes"][0], paid_fog["store"]
    used = fogwheel_cli("usage", "-c", fog.url, "--api-key", fog.api_key)
    assert used.returncode == 0, used.stderr
    account = f"customer:{paid_fog['alice']['id']}"
    assert f"{account}: balance {format_credits(store.balance(account))}" in used.stdout
    assert "task-" in used.stdout
    earned = fogwheel_cli("earnings", "--data-dir", str(fog.dir / "node-0"), "--json")
    assert earned.returncode == 0, earned.stderr
    assert json.loads(earned.stdout)["account"] == f"node:{node['node_id']}"
    shown = fogwheel_cli("earnings", "--data-dir", str(fog.dir / "node-0"))
    assert "credits" in shown.stdout and node["node_id"] in shown.stdout


def test_keys_create_prints_a_working_key_once_and_needs_the_admin_key(
    paid_fog: dict[str, Any],
) -> None:
    fog = paid_fog["fog"]
    made = fogwheel_cli(
        "keys", "create", "--name", "carol", "-c", fog.url, "--admin-key", fog.admin_key
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("fwc_") and "carol" in made.stderr
    assert httpx.get(f"{fog.url}/v1/usage", headers=bearer(key)).json()["balance"] == 0
    as_customer = fogwheel_cli(
        "keys", "create", "--name", "x", "-c", fog.url, "--admin-key", fog.api_key
    )
    assert as_customer.returncode == 1
    assert "this takes the admin key (--admin-key / FOGWHEEL_ADMIN_KEY)" in as_customer.stderr
    no_key = fogwheel_cli("keys", "create", "--name", "x", "-c", fog.url)
    assert no_key.returncode == 1 and "FOGWHEEL_ADMIN_KEY" in no_key.stderr


def test_earnings_on_a_device_that_never_joined_says_what_to_do(tmp_path: Any) -> None:
    res = fogwheel_cli("earnings", "--data-dir", str(tmp_path))
    assert res.returncode == 1 and "fogwheel node" in res.stderr and "--data-dir" in res.stderr


def test_usage_without_a_coordinator_says_how_to_name_one() -> None:
    res = fogwheel_cli("usage")
    assert res.returncode == 1 and "FOGWHEEL_COORDINATOR" in res.stderr


@pytest.mark.parametrize("command", [["usage"], ["earnings"], ["keys", "create"], ["keys"]])
def test_the_ledger_commands_document_themselves(command: list[str]) -> None:
    res = fogwheel_cli(*command, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout and "--help" in res.stdout


def test_crediting_a_batch_posts_the_same_entries_as_one_task_at_a_time(store) -> None:
    items = [(1, "c1", [("n1", 0.5)]), (2, "c1", [("n1", 0.25), ("n2", 0.25)])]
    with store.tx() as c:
        posted = store.credit_verified_batch(c, items, 1.0)
        again = store.credit_verified_batch(c, items, 2.0)  # already paid: nothing more
    single = [e for tid, cust, runs in items for e in charge_for_task(f"task-{tid}", cust, runs)]
    assert posted == len(single) and again == 0
    assert store.totals() == {
        a: sum(e.amount for e in single if e.account == a) for a in {e.account for e in single}
    }
