"""The simulator as a specification: it decides what the live coordinator decides, it is
reproducible from its seed, its churn follows the distributions it cites, and its CLI runs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core import scheduler
from fogwheel.core.tasks import TaskState
from fogwheel.protocol import JobIn, Limits, NodeJoin, SyncIn, TaskIn, TaskReport, Value
from fogwheel.sim import Scenario, World, build_fleet, build_jobs, simulate
from fogwheel.sim.churn import CLUSTERS, Gamma, LogNormal, Weibull
from fogwheel.sim.queue import PendingQueue
from fogwheel.sim.timeline import Timeline
from fogwheel.sim.world import RIGHT
from fogwheel.store import Store

T0 = 1_000_000.0
FN = Value(sha="a" * 64, size=10)
POLICIES = [scheduler.Placement(p, seed=7) for p in scheduler.Policy]


def value(data: bytes) -> Value:
    return Value(
        sha=hashlib.sha256(data).hexdigest(), size=len(data), data=base64.b64encode(data).decode()
    )


def job(n: int) -> JobIn:
    """An unchecked job without backups: placement is what is compared, not verification."""
    return JobIn(
        name="t",
        kind="python",
        fn=FN,
        tasks=[TaskIn(args=value(str(i).encode())) for i in range(n)],
        limits=Limits(),
        replicas=1,
        backups=False,
    )


def ok(task_id: int, attempt: int) -> TaskReport:
    return TaskReport(task_id=task_id, attempt=attempt, ok=True, value=value(b"r"))


# Each step: (seconds after T0, node index, tasks wanted, slots it reports free, report?).
# Nodes: a 4-core proven device, a 2-core new one (in-flight quota 2), a 1-core one, an
# 8-core one. Between steps 4 and 5 every lease but the first node's expires: the others
# lose their tasks, fall under 0.5 reliability and the lost tasks must go elsewhere.
CORES = [4, 2, 1, 8]
QUOTAS = [4096, 2, 4096, 4096]
STEPS = [
    (1, 0, 4, 4, False),
    (2, 1, 4, 2, False),
    (3, 2, 1, 1, False),
    (4, 3, 8, 8, False),
    (16, 0, 4, 0, True),  # reports its four, asks again; the others' leases expired at 12-14
    (17, 1, 2, 2, False),
    (18, 3, 8, 8, False),
    (19, 2, 1, 1, False),
    (20, 0, 4, 0, True),
    (21, 3, 8, 0, True),
]


@pytest.mark.parametrize("placement", POLICIES, ids=lambda p: p.policy.value)
def test_the_simulator_places_exactly_what_the_live_coordinator_leases(
    store: Store, placement: scheduler.Placement
) -> None:
    # Given a real store and the simulator's world over the same devices and jobs
    store.placement = placement
    names = []
    for i, (cores, quota) in enumerate(zip(CORES, QUOTAS, strict=True)):
        info = NodeJoin(token="x" * 8, name=f"n{i}", cores=cores, memory_mb=512, disk_mb=1000)
        names.append(store.join_node(info, T0, quota=quota)[0])
    world = World(names, CORES, placement=placement, lease_s=store.lease_seconds, quota=QUOTAS)
    for customer, n in (("alice", 14), ("bob", 9), ("carol", 5)):
        store.create_job(customer, job(n), T0)
        world.add_job(customer, n, T0, backups=False, unchecked=True)
    held: dict[int, dict[int, int]] = {i: {} for i in range(len(names))}  # task -> attempt
    decided = []
    # When each node syncs in turn, reporting what it holds or letting leases expire
    for dt, i, want, free, report in STEPS:
        now = T0 + dt
        expired = store.expire_leases(now)
        for t in sorted(expired):
            world.expire(t, now)
        for h in held.values():
            for t in expired:
                h.pop(t, None)
        results = [ok(t, a) for t, a in held[i].items()] if report else []
        for t in held[i] if report else ():
            world.report(i, t, RIGHT, now, now - T0)
        if report:
            held[i] = {}
        out = store.sync(names[i], SyncIn(want=want, slots_free=free, results=results), now)
        live = [lease["task_id"] for lease in out.tasks]
        for lease in out.tasks:
            held[i][lease["task_id"]] = lease["attempt"]
        # Then the simulator's placement step leases the same tasks, in the same order
        sim = world.sync(i, want, free, now)
        assert sim == live, f"step at +{dt} s, node {i}: sim {sim} vs live {live}"
        decided.append(live)
    # ... over a script that exercised quota, fair shares, retries after loss and probation
    assert len(decided[1]) == 2  # the new device holds its quota, not its want
    assert any(dev.lost for dev in world.devices), (
        "no lease was lost: the retry rules went untested"
    )
    assert sum(map(len, decided)) > 20
    rows = {t: world.state[t].state for t in range(1, len(world.state))}
    assert TaskState.DONE in rows.values()


def outcome_without_timings(o: object) -> dict[str, object]:
    d = dataclasses.asdict(o)  # type: ignore[call-overload]
    for k in ("wall_s", "decisions_per_s"):
        d.pop(k)
    return d


SMALL = Scenario(devices=150, tasks=1_200, seed=11, tasks_per_job=300)


@pytest.mark.parametrize("policy", list(scheduler.Policy), ids=lambda p: p.value)
def test_a_seed_gives_the_same_run_every_time_and_another_seed_another(
    policy: scheduler.Policy,
) -> None:
    def run(sc: Scenario) -> dict[str, object]:
        placement = scheduler.Placement(policy, sc.seed)
        return outcome_without_timings(simulate(sc, placement, build_fleet(sc), build_jobs(sc)))

    first, again = run(SMALL), run(SMALL)
    assert first == again
    other = run(dataclasses.replace(SMALL, seed=12))
    assert other["makespan_s"] != first["makespan_s"]
    assert first["settled"] + first["failed"] == SMALL.tasks


def test_faulty_devices_are_caught_and_churn_loses_work() -> None:
    sc = dataclasses.replace(SMALL, faulty=0.1, colluding=0.0)
    o = simulate(sc, scheduler.FAIR, build_fleet(sc), build_jobs(sc))
    assert o.quarantined > 0
    assert o.wrong_accepted == 0  # a new device's every result is checked (core/trust.py)
    assert o.replication_overhead > 1.0
    assert 0 < o.lost_to_churn < 1
    assert 0 < o.utilisation <= 1


@pytest.mark.parametrize("cluster", CLUSTERS, ids=lambda c: c.name)
@pytest.mark.parametrize("side", ["up", "down"])
def test_churn_draws_follow_the_clusters_distributions(cluster: object, side: str) -> None:
    dist = getattr(cluster, side)
    x = dist.draw(np.random.default_rng(5), 40_000)
    logs = np.log(x)
    # The sample median is the distribution's (the gamma's only approximately known)...
    tolerance = 0.05 if isinstance(dist, Gamma) else 0.03
    assert np.median(x) == pytest.approx(dist.median_s(), rel=tolerance)
    # ... and so is its shape.
    if isinstance(dist, Weibull):  # sd of ln X = pi / (k sqrt 6)
        assert logs.std() == pytest.approx(math.pi / (dist.shape * math.sqrt(6)), rel=0.03)
    elif isinstance(dist, LogNormal):
        assert logs.std() == pytest.approx(dist.sigma, rel=0.03)
    else:  # gamma: mean k theta, squared coefficient of variation 1 / k
        assert x.mean() == pytest.approx(dist.mean_s(), rel=0.03)
        assert x.var() / x.mean() ** 2 == pytest.approx(1 / dist.shape, rel=0.1)


def test_the_fleet_starts_up_in_proportion_to_each_clusters_availability() -> None:
    fleet = build_fleet(Scenario(devices=30_000, tasks=1))
    up = np.array(fleet.up_at_start)
    for i, cl in enumerate(CLUSTERS):
        assert up[fleet.cluster == i].mean() == pytest.approx(cl.availability(), abs=0.02)
    assert set(fleet.cores) <= set(range(1, 9))
    assert min(fleet.uplink_mbps) >= 2.0 and max(fleet.uplink_mbps) > 8.0


def test_fogwheel_sim_prints_a_table_and_a_last_line_of_json(tmp_path) -> None:
    plot = tmp_path / "sim.png"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogwheel",
            "sim",
            "--devices",
            "200",
            "--tasks",
            "2000",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "makespan" in res.stdout and "reliability" in res.stdout
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("devices", "tasks", "wall_s", "decisions_per_s", "peak_mb"):
        assert figures[key] > 0
    assert set(figures["policies"]) == {p.value for p in scheduler.Policy}
    assert 0 < figures["makespan_ratio_vs_random"] <= 1
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_fogwheel_sim_json_alone_and_a_wrong_policy_named() -> None:
    cmd = [sys.executable, "-m", "fogwheel", "sim", "--devices", "200", "--tasks", "2000"]
    res = subprocess.run([*cmd, "--json", "--policy", "fair"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    [line] = res.stdout.strip().splitlines()
    assert json.loads(line)["tasks"] == 2000
    bad = subprocess.run([*cmd, "--policy", "fastest"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "fastest" in bad.stderr and "reliability" in bad.stderr


class UncutWorld(World):
    """The simulator's world without its shortcut: every lease orders the whole window."""

    def _prefix(self, node: str, window: list[int], want: int) -> list[scheduler.Candidate]:
        return [self._cands.get(key) or self._candidate(key) for key in window]


def leases_under(world_type: type[World], placement: scheduler.Placement) -> list[object]:
    """A seeded script of syncs, results (some wrong), lost leases and devices going away over
    several customers' jobs, and what each sync was leased; the script reacts to the leases."""
    rng = np.random.default_rng(5)
    draws = np.random.default_rng(6)
    n = 10
    world = world_type(
        [f"n{i}" for i in range(n)],
        [int(c) for c in rng.choice([1, 2, 4, 8], size=n)],
        placement=placement,
        draw=lambda: float(draws.random()),
        window=16,  # several jobs and check copies in one window, with few tasks
    )
    held: list[list[int]] = [[] for _ in range(n)]
    world.on_cancel = lambda d, t: held[d].remove(t)
    seen: list[object] = []
    now = 0.0
    for step in range(600):
        now += 1.0
        if step % 60 == 0:
            world.add_job(f"c{step % 3}", int(rng.integers(5, 30)), now, deadline=now + step)
        d = int(rng.integers(n))
        if rng.random() < 0.05:
            for t in held[d]:
                world.expire(t, now + 15.0)
            held[d] = []
            world.set_live(d, bool(rng.random() < 0.5))
            continue
        world.set_live(d, True)
        if held[d] and rng.random() < 0.7:
            t = held[d].pop(0)
            world.report(d, t, RIGHT if rng.random() < 0.9 else "bad", now, float(rng.random()))
        free = world.devices[d].cores - len(held[d])
        got = world.sync(d, free, free, now)
        held[d] += got
        seen.append((d, got))
    return seen


@pytest.mark.parametrize(
    "policy", [p for p in scheduler.Policy if p is not scheduler.Policy.RANDOM], ids=str
)  # `random` orders the whole window: it is never cut
def test_the_window_cut_per_job_leases_what_the_whole_window_leases(
    policy: scheduler.Policy,
) -> None:
    # Given the same script of syncs, results and losses over several customers' jobs
    placement = scheduler.Placement(policy, seed=3)
    # When the simulator orders only each job's head of the window, and when it orders all
    cut, whole = leases_under(World, placement), leases_under(UncutWorld, placement)
    # Then every sync is leased the same tasks, in the same order
    assert sum(len(got) for _, got in whole) > 200  # type: ignore[arg-type]
    assert cut == whole


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 5_000.0), min_size=1, max_size=30),
    st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.25, 1.0, 7.5, 15.0, 3_600.0]))),
    st.sampled_from([0.5, 1.0, 60.0]),
)
def test_the_timeline_takes_events_in_the_one_heaps_order(
    first: list[float], steps: list[tuple[bool, float]], width: float
) -> None:
    # Given the timeline and one binary heap, fed the same pushes: some at once, the rest
    # later, as the engine pushes (never before the event being handled; ties in time too)
    timeline, heap, seq = Timeline(width), [], 0

    def push(at: float) -> None:
        nonlocal seq
        seq += 1
        timeline.push(at, 0, seq)
        heapq.heappush(heap, (at, seq, 0, seq, 0, 0))

    for at in first:
        push(at)
    # When events are taken and new ones pushed after each, then the same one comes each time
    for take, after in steps:
        if take and heap:
            now = heapq.heappop(heap)[0]
            assert timeline.pop()[0] == now
            push(now + after)
    while heap:
        assert timeline.pop() == heapq.heappop(heap)
    assert not timeline
    with pytest.raises(IndexError):
        timeline.pop()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 5_000.0), min_size=1, max_size=30),
    st.lists(st.sampled_from([0.0, 0.25, 1.0, 7.5, 15.0, 3_600.0]), max_size=60),
    st.sampled_from([0.5, 1.0, 60.0]),
)
def test_a_loop_over_the_timeline_takes_the_one_heaps_order_while_events_are_pushed(
    first: list[float], after: list[float], width: float
) -> None:
    # Given the timeline and one binary heap, fed the same first pushes
    timeline, heap, seq = Timeline(width), [], 0

    def push(at: float) -> None:
        nonlocal seq
        seq += 1
        timeline.push(at, 0, seq)
        heapq.heappush(heap, (at, seq, 0, seq, 0, 0))

    for at in first:
        push(at)
    # When the engine's loop takes events and pushes one later event after each, at first
    taken, later = [], iter(after)
    for event in timeline:
        taken.append(event)
        step = next(later, None)
        if step is not None:
            push(event[0] + step)
    # Then it took every event, each in the order one heap gives them
    assert taken == [heapq.heappop(heap) for _ in range(len(heap))]
    assert len(taken) == len(first) + len(after) and not timeline


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("xadf"), st.integers(0, 400), st.integers(1, 40))))
def test_the_pending_queue_reads_the_smallest_keys_in_order_whatever_is_taken_out(
    ops: list[tuple[str, int, int]],
) -> None:
    # Given the queue and a plain set of its keys, fed the same extends, adds and discards
    queue, model, top = PendingQueue(), set(), 10_000
    for op, key, k in ops:
        if op == "x":  # new tasks: keys above all before (some later taken out of order)
            queue.extend(range(top, top + k))
            model.update(range(top, top + k))
            top += k
        elif op == "a" and key not in model:  # a task queued again, or a check copy
            queue.add(key)
            model.add(key)
        elif op == "d":  # leased: a new task's key (out of order too) or one queued again
            for gone in (key, top - 1 - key):
                if gone in model:
                    queue.discard(gone)
                    model.discard(gone)
        # Then every read is the model's k smallest keys, however many holes were stepped over
        assert queue.first(k) == sorted(model)[:k]
        assert len(queue) == len(model)


def test_the_pending_queue_steps_over_holes_once_and_keeps_every_key() -> None:
    # Given new tasks of which all but the first ten and the last hundred were leased
    queue = PendingQueue()
    queue.extend(range(1_000))
    for key in range(10, 900):
        queue.discard(key)
    left = [*range(10), *range(900, 1_000)]
    # When the head is read again and again (the first read steps over the 890 holes)
    for _ in range(5):
        assert queue.first(20) == left[:20]
    # Then nothing queued is lost when the first ten go and new tasks come
    for key in range(10):
        queue.discard(key)
    queue.extend(range(1_000, 1_005))
    queue.add(5)
    assert queue.first(200) == [5, *range(900, 1_005)]
    assert len(queue) == 106
