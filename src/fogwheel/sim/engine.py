"""The discrete-event loop: devices come and go, run what the coordinator (`World`) leases
them, and report; one timeline of timed events drives it all.

What a device does is modelled; what the coordinator decides is not: every decision is
`World`'s, which is core/'s. A device that comes up syncs and asks for as many tasks as it has
free cores; when a task finishes it reports and asks again; when it goes down its running
tasks are abandoned and their leases expire `lease_s` later (renewals are not simulated one by
one: a lease holds while its device is up). A device left without work waits, idle, until new
work is queued (the live agent's idle syncs, without simulating each empty one). The timed
events wait in a `Timeline`, taken in time order, ties in the order they were pushed.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fogwheel.core import scheduler, uptime
from fogwheel.sim.model import CYCLES, Fleet, JobSpec, Scenario
from fogwheel.sim.timeline import Timeline
from fogwheel.sim.world import RIGHT, World

UP, DOWN, FINISH, EXPIRE, ARRIVE, SWEEP = range(6)
SWEEP_S = 60.0  # how often idle devices are asked again, in case no event woke them


@dataclass(frozen=True, slots=True)
class Outcome:
    """One policy's run: what the issue asks the simulator to report, and how it ran."""

    policy: str
    makespan_s: float
    utilisation: float  # busy core-seconds / core-seconds devices were up, until the makespan
    lost_to_churn: float  # share of busy core-seconds thrown away when devices went down
    replication_overhead: float  # results computed per task settled
    settled: int
    failed: int
    wrong_accepted: int
    deadlines_met: float  # share of jobs finished by their deadline
    leases: int
    replicas: int
    backups: int
    quarantined: int
    decisions: int  # placement calls (plan_lease, plan_backups)
    decisions_per_s: float  # ... per second of wall time spent in the placement step
    events: int
    wall_s: float
    curve: tuple[tuple[float, int], ...] = ()  # (time, tasks settled) along the run


def simulate(
    sc: Scenario,
    placement: scheduler.Placement,
    fleet: Fleet,
    jobs: list[JobSpec],
    progress: Callable[[int, float], None] | None = None,
) -> Outcome:
    """Run the scenario under one placement policy; `progress(settled, now)` now and then.

    The cyclic garbage collector is paused for the run: the run builds millions of small
    containers that live long and form no cycles, and each of its full passes walks them all
    (a pause, not a switch: it is on again afterwards if it was on before)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _simulate(sc, placement, fleet, jobs, progress)
    finally:
        if collecting:
            gc.enable()


def _simulate(
    sc: Scenario,
    placement: scheduler.Placement,
    fleet: Fleet,
    jobs: list[JobSpec],
    progress: Callable[[int, float], None] | None,
) -> Outcome:
    started = time.perf_counter()
    n = len(fleet.cores)
    draws = _uniforms(np.random.default_rng([sc.seed, 3]))
    world = World(
        [f"d{i}" for i in range(n)],
        fleet.cores,
        placement=placement,
        lease_s=sc.lease_s,
        draw=lambda: next(draws),
    )
    queue = world.pending
    cores, speed, uplink = fleet.cores, fleet.speed, fleet.uplink_mbps
    up_s, down_s = fleet.up_s, fleet.down_s
    digest = [f"bad-{d}" if fleet.faulty[d] else RIGHT for d in range(n)]
    for d in range(n):
        if fleet.colluding[d]:
            digest[d] = "cartel"
    first_task: list[int] = []  # the first task id of each job
    work: list[list[float]] = []  # of each job that arrived, each task's work
    input_mbit = [spec.input_mb * 8.0 for spec in jobs]
    job_of, group_of = world.job_of, world.group_of
    running: list[dict[int, float]] = [{} for _ in range(n)]  # task -> started, on the device
    gen = [0] * n  # bumped when the device goes down: its FINISH events are void
    cycle = [0] * n
    up_since = [0.0] * n
    is_up = list(fleet.up_at_start)
    up_seen = [0.0] * n
    up_count = [0] * n
    idle: deque[int] = deque()
    is_idle = [False] * n
    events = Timeline()
    push = events.push
    busy = lost = avail = 0.0
    total = sum(len(j.work) for j in jobs)

    def sync(d: int, now: float) -> None:
        run = running[d]
        free = cores[d] - len(run)
        if free <= 0:
            return
        leased = world.sync(d, free, free, now)
        if leased:
            g, mbit, speed_d = gen[d], uplink[d], speed[d]
            for t in leased:
                j = job_of[t]
                took = input_mbit[j] / mbit + work[j][group_of[t] - first_task[j]] / speed_d
                run[t] = now
                push(now + took, FINISH, d, t, g)
        elif not is_idle[d]:
            is_idle[d] = True
            idle.append(d)

    def wake(now: float, k: int) -> None:
        """Let up to `k` idle devices ask again (new work was queued)."""
        while k > 0 and idle and queue.size:
            d = idle.popleft()
            is_idle[d] = False
            if world.live[d]:
                k -= 1
                sync(d, now)

    cancelled: list[int] = []

    def on_cancel(d: int, t: int) -> None:
        nonlocal busy
        began = running[d].pop(t, None)
        if began is not None:
            busy += now - began
            cancelled.append(d)

    world.on_cancel = on_cancel
    for d in range(n):
        world.set_live(d, fleet.up_at_start[d])
        push(fleet.first_s[d], DOWN if fleet.up_at_start[d] else UP, d)
    for j, spec in enumerate(jobs):
        push(spec.arrives, ARRIVE, t=j)
    push(SWEEP_S, SWEEP)
    now = 0.0
    handled = 0
    curve: list[tuple[float, int]] = [(0.0, 0)]
    c = world.counters
    for now, _, kind, d, t, g in events if total > 0 else ():
        handled += 1
        if kind == FINISH:
            began = running[d].pop(t, None) if g == gen[d] else None
            if began is None:
                continue  # the device went down, or the copy was cancelled
            busy += now - began
            queued = queue.size
            world.report(d, t, digest[d], now, now - began)
            sync(d, now)
            added = queue.size - queued
            if added > 0:
                wake(now, added + 2)
        elif kind == UP:
            up_since[d] = now
            is_up[d] = True
            world.set_live(d, True)
            push(now + float(up_s[d, cycle[d] % CYCLES]), DOWN, d)
            sync(d, now)
        elif kind == DOWN:
            gen[d] += 1
            for t2, began in running[d].items():
                busy += now - began
                lost += now - began
                push(now + sc.lease_s, EXPIRE, d, t2)
            running[d].clear()
            is_up[d] = False
            world.set_live(d, False)
            avail += (now - up_since[d]) * cores[d]
            up_seen[d] += now - up_since[d]
            up_count[d] += 1
            world.expected_up_s[d] = uptime.expected_up_s(up_seen[d], up_count[d])
            push(now + float(down_s[d, cycle[d] % CYCLES]), UP, d)
            cycle[d] += 1
        elif kind == EXPIRE:
            queued = queue.size
            world.expire(t, now)
            added = queue.size - queued
            if added > 0:
                wake(now, added + 2)
        elif kind == ARRIVE:
            spec = jobs[t]
            ids = world.add_job(
                spec.customer, len(spec.work), now, deadline=spec.deadline, backups=True
            )
            first_task.append(ids.start)
            work.append(spec.work.tolist())
            wake(now, len(ids))
        else:  # SWEEP
            wake(now, len(idle))
            push(now + SWEEP_S, SWEEP)
        while cancelled:
            sync(cancelled.pop(), now)
        if handled % 16_384 == 0:
            curve.append((now, c.settled_ok + c.failed))
            if progress is not None:
                progress(c.settled_ok + c.failed, now)
        if c.settled_ok + c.failed >= total:
            break
    makespan = now
    curve.append((now, c.settled_ok + c.failed))
    for d in range(n):
        if is_up[d]:
            avail += (makespan - up_since[d]) * cores[d]
        for began in running[d].values():
            busy += makespan - began
    wall = time.perf_counter() - started
    met = sum(
        j.finished_at is not None and j.finished_at <= s.deadline
        for j, s in zip(world.jobs, jobs, strict=False)
    )
    return Outcome(
        policy=placement.policy.value,
        makespan_s=makespan,
        utilisation=busy / avail if avail else 0.0,
        lost_to_churn=lost / busy if busy else 0.0,
        replication_overhead=c.results / max(1, c.settled_ok + c.failed),
        settled=c.settled_ok,
        failed=c.failed,
        wrong_accepted=c.wrong_accepted,
        deadlines_met=met / max(1, len(jobs)),
        leases=c.leases,
        replicas=c.replicas,
        backups=c.backups,
        quarantined=c.quarantined,
        decisions=c.decisions,
        decisions_per_s=c.decisions / c.placement_s if c.placement_s else 0.0,
        events=handled,
        wall_s=wall,
        curve=tuple(curve),
    )


def _uniforms(rng: np.random.Generator) -> Iterator[float]:
    """An endless stream of uniform draws, made 65,536 at a time."""
    while True:
        yield from rng.random(65_536).tolist()
