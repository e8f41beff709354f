"""`fogwheel sim`: the discrete-event simulator, with a progress bar, a table and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fogwheel.sim.report import POLICIES, plot, run_policies, summary, table


def sim(
    devices: Annotated[
        int, typer.Option(min=1, max=10_000_000, help="Simulated devices.")
    ] = 100_000,
    tasks: Annotated[
        int, typer.Option(min=1, max=100_000_000, help="Tasks in the job mix.")
    ] = 1_000_000,
    seed: Annotated[
        int, typer.Option(help="Seed of every draw: the same seed gives the same run.")
    ] = 1,
    policy: Annotated[
        str,
        typer.Option(
            help="Placement policy to simulate: all, or one of "
            + ", ".join(POLICIES)
            + " (the coordinator's --placement).",
        ),
    ] = "all",
    faulty: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of devices that return a wrong result for every task."
        ),
    ] = 0.02,
    colluding: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of devices that all return the same wrong result."
        ),
    ] = 0.01,
    plot_file: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            dir_okay=False,
            help="Write a PNG: tasks settled over time and the headline figures per policy "
            "(needs matplotlib).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the JSON line, no table.")
    ] = False,
) -> None:
    """Simulate a fog under churn and compare placement policies side by side.

    The simulator drives the coordinator's own core/ (placement, task lifecycle, quota,
    verification) over a fleet whose availability follows SETI@home-shaped traces; it prints a
    table, and as its last line one JSON object (devices, tasks, wall_s, decisions_per_s,
    peak_mb, makespan_ratio_vs_random, and each policy's figures). The default size takes
    minutes per policy on one core; see docs/sim.md for measured figures.

    Examples:

        fogwheel sim --devices 2000 --tasks 20000

        fogwheel sim --policy reliability --faulty 0.05 --plot sim.png
    """
    from fogwheel.sim.model import Scenario

    if policy != "all" and policy not in POLICIES:
        raise typer.BadParameter(
            f"{policy!r} is not a policy: use all or one of {', '.join(POLICIES)}",
            param_hint="--policy",
        )
    if faulty + colluding > 1.0:
        raise typer.BadParameter("--faulty and --colluding add up to more than 1")
    chosen = POLICIES if policy == "all" else (policy,)
    sc = Scenario(devices=devices, tasks=tasks, seed=seed, faulty=faulty, colluding=colluding)
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tasks settled"),
        TextColumn("sim {task.fields[hours]:.1f} h"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json,
    ) as bar:
        ids = {p: bar.add_task(p, total=tasks, hours=0.0) for p in chosen}

        def progress(name: str, settled: int, now: float) -> None:
            bar.update(ids[name], completed=settled, hours=now / 3600)

        outcomes, wall = run_policies(sc, chosen, progress)
    figures = summary(sc, outcomes, wall)
    if not as_json:
        Console().print(table(outcomes))
    if plot_file is not None:
        plot(outcomes, plot_file, f"fogwheel sim: {devices:,} devices, {tasks:,} tasks")
        if not as_json:
            Console().print(f"plot written to {plot_file}")
    print(json.dumps(figures))


def register(app: typer.Typer) -> None:
    """Add `sim` to the `fogwheel` app."""
    app.command()(sim)
