"""The store under concurrency (issue 12): many devices, reapers, cancels and polls at once,
on two coordinators that share one PostgreSQL database, then the database's invariants.

Each test hammers the real store (or two real coordinator processes over HTTP) with the
node's round trip, short leases so that expiry races the reports, and checks afterwards:
every task finished once (its `finish_seq` unique, 1..finished per job), the job counters
equal to the terminal rows, no finished task ever seen open again, each (task, attempt)
leased to one node, and no exception (no deadlock, nothing a 500 would come from).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from fogwheel.coordinator.syncpace import SyncPace
from fogwheel.protocol import JobIn, Limits, NodeJoin, SyncIn, TaskIn, TaskReport, Value
from fogwheel.store import Store
from fogwheel.store.base import CONFLICTS
from fogwheel.store.fleet import PROCESS_FORGET_S, PROCESS_GONE_S
from tests.conftest import PG_URL, _pg_available

TERMINAL = ("done", "failed", "cancelled")
FN = {"sha": hashlib.sha256(b"fn").hexdigest(), "size": 2, "data": base64.b64encode(b"fn").decode()}


def inline(data: bytes) -> Value:
    return Value(
        sha=hashlib.sha256(data).hexdigest(), size=len(data), data=base64.b64encode(data).decode()
    )


def job(n: int, replicas: int | str, name: str) -> JobIn:
    return JobIn(
        name=name,
        kind="python",
        fn=Value(**FN),
        tasks=[TaskIn(args=inline(f"{name}-{i}".encode())) for i in range(n)],
        limits=Limits(),
        max_attempts=4,
        replicas=replicas,  # type: ignore[arg-type]
    )


def need_pg() -> None:
    why = _pg_available()
    if why:
        if os.environ.get("FOGWHEEL_REQUIRE_POSTGRES"):
            pytest.fail(why)
        pytest.skip(why)


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test database, dropped afterwards."""
    import psycopg

    need_pg()
    schema = "fwrace_" + secrets.token_hex(6)
    raw = PG_URL.replace("+psycopg", "")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A database of its own (for coordinator processes, which use its default schema)."""
    import psycopg

    need_pg()
    name = "fwrace_" + secrets.token_hex(6)
    with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield PG_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


# -- what the threads saw ---------------------------------------------------------------------


@dataclass
class Seen:
    """Everything observed while the load ran, shared by all threads."""

    errors: list[str] = field(default_factory=list)
    # (task, attempt) -> the node holding it; a hand-back gives the attempt back (it used
    # none up: core/tasks.py), so the next holder may get the same number
    leases: dict[tuple[int, int], str] = field(default_factory=dict)
    twice: list[str] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)  # rows once seen terminal
    reopened: list[str] = field(default_factory=list)
    polled: dict[int, list[int]] = field(default_factory=dict)  # job -> task ids in seq order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def leased(self, node: str, task: int, attempt: int) -> None:
        with self.lock:
            other = self.leases.setdefault((task, attempt), node)
            if other != node:
                self.twice.append(f"task {task} attempt {attempt}: {other} and {node}")

    def released(self, node: str, task: int, attempt: int) -> None:
        with self.lock:
            if self.leases.get((task, attempt)) == node:
                del self.leases[(task, attempt)]

    def guard(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Run `fn`, keeping any exception as a finding rather than losing it in a thread."""

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # every escape is a finding
                with self.lock:
                    self.errors.append(f"{what}: {type(e).__name__}: {e}"[:2000])

        return run

    def observe(self, rows: list[tuple[int, str]]) -> None:
        with self.lock:
            for tid, state in rows:
                if state in TERMINAL:
                    self.finished.add(tid)
                elif tid in self.finished:
                    self.reopened.append(f"task {tid} was finished and is {state} again")


class Device:
    """A simulated node over the store API: it reports, crashes, hands back, renews, goes
    silent (its leases expire, and it may report late), and asks for more."""

    def __init__(self, node_id: str, seed: int) -> None:
        self.node_id = node_id
        self.rng = random.Random(seed)
        self.held: dict[int, tuple[int, bytes]] = {}  # task -> (attempt, its answer)

    def round(self, drain: bool, seen: Seen) -> SyncIn:
        results: list[TaskReport] = []
        renew: list[int] = []
        release: list[int] = []
        for tid, (att, answer) in list(self.held.items()):
            x = 0.0 if drain else self.rng.random()
            if x < 0.55:
                results.append(TaskReport(task_id=tid, attempt=att, ok=True, value=inline(answer)))
            elif x < 0.62:
                results.append(
                    TaskReport(task_id=tid, attempt=att, ok=False, error={"kind": "crash"})
                )
            elif x < 0.67:
                release.append(tid)
                seen.released(self.node_id, tid, att)  # before the sync: then another may get it
            elif x < 0.75:
                continue  # silent: the lease may run out, and a late report may follow
            else:
                renew.append(tid)
                continue
            del self.held[tid]
        want = self.rng.randint(0, 4) if len(self.held) < 6 else 0
        return SyncIn(results=results, renew=renew, release=release, want=want, slots_free=2)

    def answered(self, leases: list[dict[str, Any]], lost: list[int], seen: Seen) -> None:
        for tid in lost:
            self.held.pop(tid, None)
        for t in leases:
            seen.leased(self.node_id, t["task_id"], t["attempt"])
            # replicas of one task carry the same arguments: honest devices agree on them
            answer = base64.b64decode(t["args"]["data"]) if t["args"] else b""
            self.held[t["task_id"]] = (t["attempt"], answer)


# -- the invariants ---------------------------------------------------------------------------


def check_database(conn: Any, seen: Seen, *, all_done: bool) -> None:
    """The database's invariants after the load, and what the threads saw during it."""
    assert not seen.errors, "exceptions escaped:\n" + "\n".join(seen.errors[:10])
    assert not seen.twice, f"leased twice: {seen.twice[:5]}"
    assert not seen.reopened, f"finished tasks reopened: {seen.reopened[:5]}"
    twice = conn.execute(
        text(
            "SELECT task_id, n FROM attempts WHERE coalesce(outcome, '') <> 'released'"
            " GROUP BY task_id, n HAVING count(*) > 1"
        )
    ).all()
    assert not twice, f"attempts recorded twice: {twice[:5]}"
    for job_id, total, finished, failed in conn.execute(
        text("SELECT id, total, finished, failed FROM jobs ORDER BY id")
    ).all():
        heads = conn.execute(
            text(
                "SELECT id, state, finish_seq FROM tasks"
                " WHERE job_id = :j AND replica_of IS NULL ORDER BY id"
            ),
            {"j": job_id},
        ).all()
        assert len(heads) == total
        ended = [h for h in heads if h.state in TERMINAL]
        assert finished == len(ended), f"job {job_id}: finished {finished}, {len(ended)} rows"
        assert failed == sum(h.state != "done" for h in ended), f"job {job_id}: failed {failed}"
        seqs = sorted(h.finish_seq for h in ended)
        assert seqs == list(range(1, finished + 1)), f"job {job_id}: finish_seq not 1..finished"
        assert all(h.finish_seq is None for h in heads if h.state not in TERMINAL)
        if all_done:
            assert finished == total, f"job {job_id}: {finished} of {total} finished"
        # what the customer polled: each finished task once, in seq order, none missed
        polled = seen.polled.get(job_id)
        if polled is not None:
            assert len(polled) == len(set(polled)), f"job {job_id}: a result polled twice"
            by_seq = [h.id for h in sorted(ended, key=lambda h: h.finish_seq)]
            assert polled == by_seq[: len(polled)], f"job {job_id}: the polls missed a result"


# -- the store under load: two Store objects on one schema -------------------------------------


def hammer_store(stores: list[Store], seconds: float, devices: int, seed: int) -> Seen:
    """Devices, reapers, a canceller and a poller on `stores` at once; then a drain until
    every job is finished. Returns what was seen."""
    seen = Seen()
    now = time.time()
    a = stores[0]
    jobs = [
        a.create_job("c1", job(150, 1, "plain"), now),
        a.create_job("c1", job(60, 2, "checked"), now),
        a.create_job("c1", job(60, "adaptive", "adaptive"), now),
        a.create_job("c1", job(60, 1, "cancelled"), now),
    ]
    nodes = []
    for i in range(devices):
        info = NodeJoin(token="x" * 8, name=f"d{i}", cores=2, memory_mb=512, disk_mb=1000)
        nodes.append(stores[i % len(stores)].join_node(info, now, quota=4096)[0])
    stop = threading.Event()
    drain = threading.Event()

    def device(i: int) -> None:
        dev = Device(nodes[i], seed * 1000 + i)
        while not stop.is_set():
            store = stores[(i + dev.rng.randint(0, 1)) % len(stores)]  # either coordinator
            req = dev.round(drain.is_set(), seen)
            out = store.sync(dev.node_id, req, time.time())
            dev.answered(out.tasks, out.lost, seen)
            time.sleep(dev.rng.uniform(0.0, 0.03))

    def reaper(store: Store) -> None:
        while not stop.is_set():
            store.expire_leases(time.time())
            time.sleep(0.02)

    def canceller() -> None:
        time.sleep(seconds / 3)
        stores[-1].cancel_task("c1", jobs[1], 3, time.time())
        stores[-1].cancel_job("c1", jobs[3], time.time())

    def poller(store: Store) -> None:
        cursors = dict.fromkeys(jobs, 0)
        while not stop.is_set() or any(cursors[j] < _finished(store, j) for j in jobs):
            for j in jobs:
                page = store.results_since("c1", j, cursors[j])
                assert page is not None
                for r in page["results"]:
                    assert r["seq"] == cursors[j] + 1, f"job {j}: seq {r['seq']} after {cursors[j]}"
                    assert r["state"] in TERMINAL, r
                    cursors[j] = r["seq"]
                    seen.polled.setdefault(j, []).append(r["task_id"])
            time.sleep(0.01)

    def observer() -> None:
        while not stop.is_set():
            with a.read() as c:
                seen.observe(
                    [(r.id, r.state) for r in c.execute(text("SELECT id, state FROM tasks"))]
                )
            time.sleep(0.02)

    threads = [
        threading.Thread(target=seen.guard(f"device {i}", lambda i=i: device(i)))
        for i in range(devices)
    ]
    threads += [
        threading.Thread(target=seen.guard("reaper", lambda s=s: reaper(s))) for s in stores
    ]
    threads += [
        threading.Thread(target=seen.guard("canceller", canceller)),
        threading.Thread(target=seen.guard("poller", lambda: poller(stores[-1]))),
        threading.Thread(target=seen.guard("observer", observer)),
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    drain.set()  # now every device reports what it holds, so that every job can finish
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and seen.errors == []:
        if all(_finished(a, j) >= _total(a, j) for j in jobs):
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    return seen


def _finished(store: Store, job_id: int) -> int:
    with store.read() as c:
        return int(
            c.execute(text("SELECT finished FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
        )


def _total(store: Store, job_id: int) -> int:
    with store.read() as c:
        return int(
            c.execute(text("SELECT total FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
        )


def test_two_coordinators_on_one_postgresql_keep_every_invariant_under_load() -> None:
    with pg_schema() as schema:
        stores = [Store(PG_URL, lease_seconds=0.4, schema=schema) for _ in range(2)]
        stores[0].create_schema()
        before = dict(CONFLICTS)
        try:
            seen = hammer_store(stores, seconds=5.0, devices=16, seed=12)
            with stores[0].read() as c:
                check_database(c, seen, all_done=True)
                leases = c.execute(text("SELECT count(*) FROM attempts")).scalar_one()
        finally:
            for s in stores:
                s.close()
    retried = {k: v - before.get(k, 0) for k, v in CONFLICTS.items()}
    print(f"\n{leases} leases; transactions tried again: {retried or 'none'}")
    assert leases > 330  # the load really ran: more leases than tasks (retries, replicas)


def test_one_sqlite_store_keeps_the_same_invariants_under_threads(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fog.db'}", lease_seconds=0.4)
    store.create_schema()
    try:
        seen = hammer_store([store], seconds=2.5, devices=6, seed=7)
        with store.read() as c:
            check_database(c, seen, all_done=True)
    finally:
        store.close()


def test_lease_expiry_runs_in_one_coordinator_at_a_time() -> None:
    with pg_schema() as schema:
        a, b = (Store(PG_URL, lease_seconds=1.0, schema=schema) for _ in range(2))
        a.create_schema()
        try:
            info = NodeJoin(token="x" * 8, name="d", cores=1, memory_mb=512, disk_mb=1000)
            node, _ = a.join_node(info, 0.0, quota=4096)
            a.create_job("c1", job(2, 1, "j"), 0.0)
            assert len(a.sync(node, SyncIn(want=2, slots_free=1), 0.0).tasks) == 2
            with a.duty("lease expiry") as leader:
                assert leader is not None  # a holds the duty: b skips its round
                assert b.expire_leases(10.0) == []
            assert len(b.expire_leases(10.0)) == 2  # a's transaction ended: b's turn
        finally:
            a.close()
            b.close()


def test_the_coordinator_processes_on_one_database_pace_the_fleet_by_their_budgets_together() -> (
    None
):
    # Each process has its budget of syncs a second; the fleet's syncs are spread over all
    # of them, so two live processes ask each node to come twice as often as one would.
    with pg_schema() as schema:
        a, b = (Store(PG_URL, schema=schema) for _ in range(2))
        a.create_schema()
        try:
            now = time.time()
            for i in range(200):
                info = NodeJoin(token="x" * 8, name=f"d{i}", cores=1, memory_mb=512, disk_mb=1000)
                a.join_node(info, now, quota=4096)
            assert b.processes_live == 1  # before any stamp: itself
            assert a.process_seen("proc-a", now) == 1
            assert b.process_seen("proc-b", now) == 2
            assert a.process_seen("proc-a", now + 1) == 2  # a stamp again is not a third
            pace = SyncPace(b, budget=10.0)  # 200 idle nodes over half of 2 x 10 a second
            waits = [pace.answer(False, False).next_sync_s for _ in range(50)]
            assert all(15.0 <= w <= 25.0 for w in waits), waits  # 20 s, jittered ±25 %
            # a silent for PROCESS_GONE_S: b counts itself alone and paces for one process
            assert b.process_seen("proc-b", now + 1 + PROCESS_GONE_S + 0.5) == 1
            waits = [pace.answer(False, False).next_sync_s for _ in range(50)]
            assert all(30.0 <= w <= 50.0 for w in waits), waits  # 40 s, jittered ±25 %
            # the rows of processes long gone are deleted, the live one's kept
            b.process_seen("proc-b", now + PROCESS_FORGET_S + 10)
            with b.read() as c:
                ids = c.execute(text("SELECT id FROM coordinator_processes")).scalars().all()
            assert ids == ["proc-b"]
        finally:
            a.close()
            b.close()


def test_two_fogs_in_two_schemas_of_one_database_never_take_each_others_duty() -> None:
    with pg_schema() as one, pg_schema() as two:
        a, b = Store(PG_URL, schema=one), Store(PG_URL, schema=two)
        a2 = Store(PG_URL, schema=one)
        try:
            with a.duty("lease expiry") as leader:
                assert leader is not None
                with b.duty("lease expiry") as other:
                    assert other is not None  # another fog: its own turn
                with a2.duty("lease expiry") as same:
                    assert same is None  # the same fog's other coordinator waits its turn
        finally:
            for s in (a, b, a2):
                s.close()


def test_a_numbered_row_that_is_not_terminal_is_never_answered_as_a_result(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fog.db'}", lease_seconds=1.0)
    store.create_schema()
    try:
        job_id = store.create_job("c1", job(2, 1, "j"), 0.0)
        with store.tx() as c:  # what a lost race used to leave behind (issue 12)
            c.execute(
                text("UPDATE tasks SET state = 'verifying', finish_seq = 1 WHERE job_id = :j"),
                {"j": job_id},
            )
        page = store.results_since("c1", job_id, 0)
        assert page is not None and page["results"] == []
    finally:
        store.close()


# -- over HTTP: two coordinator processes, fake devices on the real node protocol ---------------


@dataclass
class Coordinator:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_coordinator(data_dir: Path, work: Path, name: str, env: dict[str, str]) -> Coordinator:
    ready = work / f"{name}.ready"
    log = work / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "fogwheel",
        "coordinator",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--lease-seconds",
        "1.5",
        "--ready-file",
        str(ready),
        "--quiet",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, "the coordinator did not start"
        time.sleep(0.05)
    url = json.loads(ready.read_text())["url"]
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return Coordinator(proc, url, log)
        assert time.monotonic() < deadline, "the coordinator does not answer /v1/health"
        time.sleep(0.05)


def test_two_coordinator_processes_serve_fake_devices_without_a_5xx(tmp_path: Path) -> None:
    keys = {
        "FOGWHEEL_JOIN_TOKEN": "fwj_" + secrets.token_urlsafe(24),
        "FOGWHEEL_API_KEY": "fwc_" + secrets.token_urlsafe(24),
        "FOGWHEEL_ADMIN_KEY": "fwa_" + secrets.token_urlsafe(24),
    }
    customer = {"authorization": f"Bearer {keys['FOGWHEEL_API_KEY']}"}
    with pg_database() as db, contextlib.ExitStack() as stack:
        env = {**keys, "FOGWHEEL_DB": db}
        data = tmp_path / "shared-data"  # one signing key and blob store for both processes
        coords = []
        for name in ("c1", "c2"):
            coords.append(start_coordinator(data, tmp_path, name, env))
            stack.callback(_stop, coords[-1])
        urls = [c.url for c in coords]
        job_ids = []
        for name, n, replicas in (("plain", 80, 1), ("checked", 20, 2)):
            body = {
                "name": name,
                "kind": "python",
                "fn": FN,
                "tasks": [{"args": inline(f"{name}-{i}".encode()).model_dump()} for i in range(n)],
                "replicas": replicas,
                "max_attempts": 4,
            }
            r = httpx.post(f"{urls[0]}/v1/jobs", json=body, headers=customer, timeout=30)
            assert r.status_code == 201, r.text
            job_ids.append(r.json()["id"])
        seen = Seen()
        statuses: dict[int, int] = {}
        stop = threading.Event()

        def device(i: int) -> None:
            rng = random.Random(i)
            with httpx.Client(timeout=30) as http:
                join = {
                    "token": keys["FOGWHEEL_JOIN_TOKEN"],
                    "name": f"fake{i}",
                    "cores": 2,
                    "memory_mb": 512,
                    "disk_mb": 1000,
                }
                r = http.post(f"{urls[i % 2]}/v1/nodes/join", json=join)
                assert r.status_code == 201, r.text
                joined = r.json()
                dev = Device(joined["node_id"], i)
                auth = {"authorization": f"Bearer {joined['credential']}"}
                while not stop.is_set():
                    req = dev.round(i % 4 != 0, seen)  # a quarter of them misbehave
                    url = urls[rng.randint(0, 1)]  # any coordinator answers any device
                    r = http.post(
                        f"{url}/v1/nodes/me/sync", json=req.model_dump(mode="json"), headers=auth
                    )
                    with seen.lock:
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code >= 500:
                        seen.errors.append(f"sync {r.status_code}: {r.text[:300]}")
                        continue
                    assert r.status_code == 200, r.text
                    out = r.json()
                    dev.answered(out["tasks"], out["lost"], seen)
                    time.sleep(rng.uniform(0.01, 0.05))

        def poller() -> None:
            cursors = {str(j): 0 for j in job_ids}
            with httpx.Client(timeout=30, headers=customer) as http:
                while not stop.is_set():
                    url = urls[random.randint(0, 1)]
                    r = http.post(f"{url}/v1/results/poll", json={"jobs": cursors, "wait": 0.2})
                    if r.status_code >= 500:
                        seen.errors.append(f"poll {r.status_code}: {r.text[:300]}")
                        continue
                    assert r.status_code == 200, r.text
                    for page in r.json()["jobs"]:
                        for res in page["results"]:
                            seen.polled.setdefault(page["job_id"], []).append(res["task_id"])
                        cursors[str(page["job_id"])] = page["cursor"]

        threads = [
            threading.Thread(target=seen.guard(f"device {i}", lambda i=i: device(i)))
            for i in range(24)
        ]
        threads.append(threading.Thread(target=seen.guard("poller", poller)))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 45
        done = False
        while time.monotonic() < deadline and not seen.errors and not done:
            time.sleep(0.5)
            jobs = [
                httpx.get(f"{urls[1]}/v1/jobs/{j}", headers=customer, timeout=30).json()
                for j in job_ids
            ]
            done = all(j["state"] == "done" for j in jobs)
        time.sleep(1.0)  # the poller takes the last results
        stop.set()
        for t in threads:
            t.join(60)
        store = Store(db)
        try:
            with store.read() as c:
                check_database(c, seen, all_done=True)
        finally:
            store.close()
        assert not any(s >= 500 for s in statuses), statuses
        for c in coords:
            log = c.log.read_text(errors="replace")
            assert "Traceback" not in log, log[-4000:]
        print(f"\nsync answers by status: {statuses}")


def _stop(c: Coordinator) -> None:
    c.proc.terminate()
    try:
        c.proc.wait(20)
    except subprocess.TimeoutExpired:
        c.proc.kill()
