"""Every placement policy on one scenario, side by side: the figures, a table, a plot.

The scenario (fleet, churn, job mix, the verifier's draws) is drawn once from the seed and
replayed under each policy, so the columns differ only by what the policy decided.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fogwheel.core import scheduler
from fogwheel.sim.engine import Outcome, simulate
from fogwheel.sim.model import Scenario, build_fleet, build_jobs

POLICIES = tuple(p.value for p in scheduler.Policy)


def run_policies(
    sc: Scenario,
    policies: Sequence[str] = POLICIES,
    progress: Callable[[str, int, float], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Simulate `sc` under each policy; the outcomes and the whole wall time (with set-up)."""
    started = time.perf_counter()
    fleet = build_fleet(sc)
    jobs = build_jobs(sc)
    out = []
    for name in policies:
        placement = scheduler.Placement(scheduler.Policy(name), sc.seed)
        tick = None if progress is None else _tick(progress, name)
        out.append(simulate(sc, placement, fleet, jobs, tick))
    return out, time.perf_counter() - started


def _tick(progress: Callable[[str, int, float], None], name: str) -> Callable[[int, float], None]:
    return lambda settled, now: progress(name, settled, now)


def peak_mb() -> float:
    """The process's peak resident memory (getrusage: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def summary(sc: Scenario, outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """The figures as one JSON object: the issue's keys first, then each policy's."""
    by = {o.policy: o for o in outcomes}
    placement_s = sum(o.decisions / o.decisions_per_s for o in outcomes if o.decisions_per_s)
    decisions = sum(o.decisions for o in outcomes)
    best = min(outcomes, key=lambda o: o.makespan_s)
    ratio = None
    if "random" in by and by["random"].makespan_s > 0:
        ratio = round(best.makespan_s / by["random"].makespan_s, 4)
    return {
        "devices": sc.devices,
        "tasks": sc.tasks,
        "seed": sc.seed,
        "faulty": sc.faulty,
        "colluding": sc.colluding,
        "wall_s": round(wall_s, 2),
        "wall_s_per_policy": {o.policy: round(o.wall_s, 2) for o in outcomes},
        "decisions_per_s": round(decisions / placement_s) if placement_s else 0,
        "peak_mb": round(peak_mb(), 1),
        "best_policy": best.policy,
        "makespan_ratio_vs_random": ratio,
        "policies": {
            o.policy: {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in dataclasses.asdict(o).items()
                if k not in ("policy", "curve")
            }
            for o in outcomes
        },
    }


def table(outcomes: Sequence[Outcome]) -> Any:
    """A Rich table, one column per policy."""
    from rich.table import Table

    t = Table(title="placement policies under churn (same fleet, same jobs)")
    t.add_column("")
    for o in outcomes:
        t.add_column(o.policy, justify="right")
    rows: list[tuple[str, Callable[[Outcome], str]]] = [
        ("makespan", lambda o: f"{o.makespan_s / 3600:.2f} h"),
        ("utilisation", lambda o: f"{o.utilisation:.1%}"),
        ("work lost to churn", lambda o: f"{o.lost_to_churn:.1%}"),
        ("replication overhead", lambda o: f"{o.replication_overhead:.3f}"),
        ("deadlines met", lambda o: f"{o.deadlines_met:.0%}"),
        ("tasks failed", lambda o: f"{o.failed:,}"),
        ("wrong results accepted", lambda o: f"{o.wrong_accepted:,}"),
        ("devices quarantined", lambda o: f"{o.quarantined:,}"),
        ("check copies / backups", lambda o: f"{o.replicas:,} / {o.backups:,}"),
        ("placement decisions", lambda o: f"{o.decisions:,}"),
        ("decisions per second", lambda o: f"{o.decisions_per_s:,.0f}"),
        ("wall time", lambda o: f"{o.wall_s:.1f} s"),
    ]
    for label, cell in rows:
        t.add_row(label, *(cell(o) for o in outcomes))
    return t


def plot(outcomes: Sequence[Outcome], path: Path, title: str) -> None:
    """A PNG: tasks settled over time per policy, and the headline figures as bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # matplotlib is in the [ml] extra
        raise RuntimeError(
            "--plot needs matplotlib: pip install matplotlib (or fogwheel[ml])"
        ) from e
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    ax = axes[0]
    for o in outcomes:
        ax.plot([t / 3600 for t, _ in o.curve], [n for _, n in o.curve], label=o.policy)
    ax.set_xlabel("hours")
    ax.set_ylabel("tasks settled")
    ax.legend()
    names = [o.policy for o in outcomes]
    bars = [
        ("makespan (h)", [o.makespan_s / 3600 for o in outcomes]),
        ("work lost to churn (%)", [100 * o.lost_to_churn for o in outcomes]),
        ("replication overhead", [o.replication_overhead for o in outcomes]),
    ]
    for ax, (label, values) in zip(axes[1:], bars, strict=True):
        ax.bar(names, values, color=["C0", "C1", "C2", "C3"][: len(names)])
        ax.set_title(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
