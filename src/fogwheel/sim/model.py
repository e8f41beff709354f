"""The simulated fog: devices (cores, speed, uplink, availability, honesty) and the job mix.

Everything random is drawn here, with numpy, from one seed, before the run: the same scenario
is then replayed under each placement policy, so that policies differ only in what they decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fogwheel.sim.churn import CLUSTERS, assign_clusters, draw_intervals

CYCLES = 24  # up/down intervals drawn per device; a device that runs out reuses them in turn
CORES = np.array([1, 2, 3, 4, 6, 8])
CORE_WEIGHTS = np.array([0.10, 0.30, 0.10, 0.30, 0.10, 0.10])  # a fleet of small boxes


@dataclass(frozen=True, slots=True)
class Scenario:
    """The knobs of one run; the defaults are the benchmark's mix."""

    devices: int = 100_000
    tasks: int = 1_000_000
    seed: int = 1
    faulty: float = 0.02  # share of devices that return a wrong result for every task
    colluding: float = 0.01  # share that all return the same wrong result
    customers: int = 4
    tasks_per_job: int = 5_000
    long_share: float = 0.3  # share of jobs whose tasks are long
    short_s: float = 120.0  # median work of a short task on a speed-1 core, seconds
    long_s: float = 1_800.0  # ... of a long one
    arrival_s: float = 1_800.0  # jobs arrive over this long from the start
    lease_s: float = 15.0  # = the coordinator's --lease-seconds default
    fast_uplink: float = 0.03  # share of devices with a fast (20-100 Mbit/s) uplink


@dataclass(slots=True)
class Fleet:
    cores: list[int]
    speed: list[float]  # work seconds per second on one core
    uplink_mbps: list[float]
    cluster: np.ndarray
    faulty: list[bool]
    colluding: list[bool]
    up_at_start: list[bool]
    first_s: list[float]  # the first state change, seconds from the start
    up_s: np.ndarray  # (devices, CYCLES) up intervals
    down_s: np.ndarray  # (devices, CYCLES) down intervals


@dataclass(slots=True)
class JobSpec:
    customer: str
    arrives: float
    deadline: float
    long: bool
    work: np.ndarray  # per task, seconds on a speed-1 core
    input_mb: float


def build_fleet(sc: Scenario) -> Fleet:
    rng = np.random.default_rng([sc.seed, 1])
    n = sc.devices
    cluster = assign_clusters(rng, n)
    cores = rng.choice(CORES, size=n, p=CORE_WEIGHTS)
    speed = rng.lognormal(0.0, 0.3, n)  # old laptops to new boxes
    uplink = rng.uniform(2.0, 8.0, n)
    fast = rng.random(n) < sc.fast_uplink
    uplink[fast] = rng.uniform(20.0, 100.0, int(fast.sum()))
    honesty = rng.random(n)
    faulty = honesty < sc.faulty
    colluding = (honesty >= sc.faulty) & (honesty < sc.faulty + sc.colluding)
    up, down = draw_intervals(rng, cluster, CYCLES)
    # Start in the stationary state: up with the cluster's availability, part-way through
    # the current interval (a uniform share of it: a simple stand-in for the residual life).
    avail = np.array([c.availability() for c in CLUSTERS])[cluster]
    up_now = rng.random(n) < avail
    first = np.where(up_now, up[:, 0], down[:, 0]) * rng.random(n)
    return Fleet(
        cores.tolist(),
        speed.tolist(),
        uplink.tolist(),
        cluster,
        faulty.tolist(),
        colluding.tolist(),
        up_now.tolist(),
        first.tolist(),
        up,
        down,
    )


def build_jobs(sc: Scenario) -> list[JobSpec]:
    """The job mix: short and long jobs from a few customers, arriving over `arrival_s`."""
    rng = np.random.default_rng([sc.seed, 2])
    n_jobs = max(1, -(-sc.tasks // sc.tasks_per_job))
    sizes = np.full(n_jobs, sc.tasks // n_jobs)
    sizes[: sc.tasks - int(sizes.sum())] += 1
    arrives = np.sort(rng.uniform(0.0, sc.arrival_s, n_jobs))
    arrives[0] = 0.0
    jobs = []
    for j in range(n_jobs):
        long = bool(rng.random() < sc.long_share)
        median = sc.long_s if long else sc.short_s
        work = rng.lognormal(np.log(median), 0.5, int(sizes[j]))
        # A deadline a few typical task lengths after the queue ahead of it could drain.
        slack = rng.uniform(2.0, 8.0) * (3_600.0 if long else 1_800.0)
        jobs.append(
            JobSpec(
                customer=f"c{j % sc.customers}",
                arrives=float(arrives[j]),
                deadline=float(arrives[j] + slack),
                long=long,
                work=work,
                input_mb=20.0 if long else 2.0,
            )
        )
    return jobs
