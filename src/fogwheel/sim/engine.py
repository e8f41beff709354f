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
from fogwheel.sim.world import RIGHT, Device, World

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


class Host:
    """What the simulated device itself is and does (the coordinator's view of it is its
    `Device`, `dev`), in one object."""

    __slots__ = (
        "cores",
        "cycle",
        "d",
        "dev",
        "digest",
        "gen",
        "idle",
        "mbit",
        "running",
        "speed",
        "up",
        "up_count",
        "up_seen",
        "up_since",
    )

    def __init__(self, dev: Device, cores: int, speed: float, mbit: float, digest: str) -> None:
        self.dev = dev
        self.d = 0  # its index
        self.cores = cores
        self.speed = speed  # work seconds per second on one core
        self.mbit = mbit  # uplink, Mbit/s
        self.digest = digest  # what it answers
        self.running: dict[int, float] = {}  # task -> started
        self.gen = 0  # bumped when the device goes down: its FINISH events are void
        self.cycle = 0  # up/down intervals used
        self.up = False
        self.up_since = 0.0
        self.up_seen = 0.0  # seconds up, in completed intervals
        self.up_count = 0  # completed up intervals
        self.idle = False  # waiting in `idle` for work to be queued


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
    up_s, down_s = fleet.up_s, fleet.down_s
    hosts = [
        Host(dev, cores, speed, mbit, "cartel" if colluding else f"bad-{d}" if bad else RIGHT)
        for d, (dev, cores, speed, mbit, bad, colluding) in enumerate(
            zip(
                world.devices,
                fleet.cores,
                fleet.speed,
                fleet.uplink_mbps,
                fleet.faulty,
                fleet.colluding,
                strict=True,
            )
        )
    ]
    first_task: list[int] = []  # the first task id of each job
    work: list[list[float]] = []  # of each job that arrived, each task's work
    input_mbit = [spec.input_mb * 8.0 for spec in jobs]
    job_of, group_of = world.job_of, world.group_of
    idle: deque[Host] = deque()
    events = Timeline()
    push = events.push
    busy = lost = avail = 0.0
    total = sum(len(j.work) for j in jobs)
    world_sync, report = world.sync, world.report

    def sync(h: Host, now: float) -> None:
        run = h.running
        free = h.cores - len(run)
        if free <= 0:
            return
        leased = world_sync(h.d, free, free, now)
        if leased:
            g, mbit, speed_d = h.gen, h.mbit, h.speed
            for t in leased:
                j = job_of[t]
                took = input_mbit[j] / mbit + work[j][group_of[t] - first_task[j]] / speed_d
                run[t] = now
                push(now + took, FINISH, h, t, g)
        elif not h.idle:
            h.idle = True
            idle.append(h)

    def wake(now: float, k: int) -> None:
        """Let up to `k` idle devices ask again (new work was queued)."""
        while k > 0 and idle and queue.size:
            h = idle.popleft()
            h.idle = False
            if h.dev.live:
                k -= 1
                sync(h, now)

    cancelled: list[int] = []

    def on_cancel(d: int, t: int) -> None:
        nonlocal busy
        began = hosts[d].running.pop(t, None)
        if began is not None:
            busy += now - began
            cancelled.append(d)

    world.on_cancel = on_cancel
    for d, h in enumerate(hosts):
        h.d = d
        h.up = fleet.up_at_start[d]
        world.set_live(d, h.up)
        push(fleet.first_s[d], DOWN if h.up else UP, h)
    for j, spec in enumerate(jobs):
        push(spec.arrives, ARRIVE, t=j)
    push(SWEEP_S, SWEEP)
    now = 0.0
    handled = 0
    curve: list[tuple[float, int]] = [(0.0, 0)]
    c = world.counters
    lease_s = sc.lease_s
    # An event names its device's Host (ties in time are broken by the order pushed, so the
    # Host is never compared).
    for now, _, kind, h, t, g in events if total > 0 else ():
        handled += 1
        if kind == FINISH:
            began = h.running.pop(t, None) if g == h.gen else None
            if began is None:
                continue  # the device went down, or the copy was cancelled
            busy += now - began
            queued = queue.size
            report(h.d, t, h.digest, now, now - began)
            sync(h, now)
            added = queue.size - queued
            if added > 0:
                wake(now, added + 2)
        elif kind == UP:
            d = h.d
            h.up_since = now
            h.up = True
            world.set_live(d, True)
            push(now + float(up_s[d, h.cycle % CYCLES]), DOWN, h)
            sync(h, now)
        elif kind == DOWN:
            d = h.d
            h.gen += 1
            for t2, began in h.running.items():
                busy += now - began
                lost += now - began
                push(now + lease_s, EXPIRE, h, t2)
            h.running.clear()
            h.up = False
            world.set_live(d, False)
            avail += (now - h.up_since) * h.cores
            h.up_seen += now - h.up_since
            h.up_count += 1
            h.dev.up_s = uptime.expected_up_s(h.up_seen, h.up_count)
            push(now + float(down_s[d, h.cycle % CYCLES]), UP, h)
            h.cycle += 1
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
            sync(hosts[cancelled.pop()], now)
        if handled % 16_384 == 0:
            curve.append((now, c.settled_ok + c.failed))
            if progress is not None:
                progress(c.settled_ok + c.failed, now)
        if c.settled_ok + c.failed >= total:
            break
    makespan = now
    curve.append((now, c.settled_ok + c.failed))
    for h in hosts:
        if h.up:
            avail += (makespan - h.up_since) * h.cores
        for began in h.running.values():
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
