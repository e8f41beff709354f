"""The simulator at the issue's size: 100,000 devices, 1,000,000 tasks, every placement policy.

    python bench/sim.py                          # 100,000 devices, 1,000,000 tasks, all policies
    python bench/sim.py --devices 10000 --tasks 100000 --policy fair --policy random
    python bench/sim.py --plot sim.png

Each policy replays the same seeded scenario (docs/sim.md). Reported, per the issue: `wall_s`
(goal <= 60 s on one core), `decisions_per_s` (placement decisions per second of wall time
spent placing; goal >= 5,000), `peak_mb` (the process's peak RSS), and
`makespan_ratio_vs_random` (the best policy's makespan / random placement's, under churn).
Progress and each policy's figures go to stderr as they finish; the last line of stdout is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console

from fogwheel.core import scheduler
from fogwheel.sim.engine import simulate
from fogwheel.sim.model import Scenario, build_fleet, build_jobs
from fogwheel.sim.report import POLICIES, plot, summary, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", action="append", choices=POLICIES, help="repeatable; default all")
    ap.add_argument("--plot", help="write a PNG here")
    args = ap.parse_args()
    sc = Scenario(devices=args.devices, tasks=args.tasks, seed=args.seed)
    err = Console(stderr=True)
    started = time.perf_counter()
    fleet, jobs = build_fleet(sc), build_jobs(sc)
    err.print(f"scenario built in {time.perf_counter() - started:.1f} s")
    outcomes = []
    for name in args.policy or POLICIES:
        o = simulate(sc, scheduler.Placement(scheduler.Policy(name), sc.seed), fleet, jobs)
        outcomes.append(o)
        err.print(f"{name}: {json.dumps(summary(sc, [o], o.wall_s)['policies'][name])}")
    wall = time.perf_counter() - started
    err.print(table(outcomes))
    if args.plot:
        plot(outcomes, args.plot, f"fogwheel sim: {sc.devices:,} devices, {sc.tasks:,} tasks")
    print(json.dumps(summary(sc, outcomes, wall)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
