"""`fogwheel demo`: a real job on a throwaway local fog, with a node killed halfway.

The job counts the primes below N by trial division, split into ranges, one task per range.
Halfway through, one node that holds work is killed with SIGKILL; its leases expire, its
tasks run again elsewhere, and the total is checked against a local sieve of Eratosthenes.
Every new node's results are checked on a second node until it has earned trust.
"""

from __future__ import annotations

import math
import signal
import time
from concurrent.futures import as_completed
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fogwheel.client import Client
from fogwheel.localfog import LocalFog


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi) by trial division: deliberately plain, so that a task takes a while."""
    n = 0
    for k in range(max(lo, 2), hi):
        if k < 4:
            n += 1
            continue
        if k % 2 == 0 or k % 3 == 0:
            continue
        d, prime = 5, True
        while d * d <= k:
            if k % d == 0 or k % (d + 2) == 0:
                prime = False
                break
            d += 6
        n += prime
    return n


def sieve_count(n: int) -> int:
    """Primes below n by the sieve of Eratosthenes: the independent local check."""
    if n < 3:
        return 0
    is_p = bytearray([1]) * n
    is_p[0] = is_p[1] = 0
    for i in range(2, math.isqrt(n - 1) + 1):
        if is_p[i]:
            is_p[i * i :: i] = bytes(len(range(i * i, n, i)))
    return sum(is_p)


def run_demo(
    nodes: int = 4,
    tasks: int = 400,
    span: int = 4000,
    kill: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    limit = tasks * span
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"ok": False, "nodes": nodes, "tasks": tasks, "node_killed": None}
    with console.status(f"starting a coordinator and {nodes} node agents…"):
        fog = LocalFog(nodes, lease_seconds=3.0)
        fog.start()
    try:
        console.print(f"[bold]fog up[/] at {fog.url} with {nodes} nodes (SQLite in {fog.dir})")
        summary["sandboxed"] = fog.sandboxed
        if not fog.sandboxed:
            console.print(
                "[bold yellow]warning:[/] no usable bubblewrap here, so the local nodes run "
                "the demo's code unconfined; `apt-get install bubblewrap` sandboxes them"
            )
        with Client(fog.url, fog.api_key) as client:
            calls = [((i * span, (i + 1) * span), {}) for i in range(tasks)]
            futures = client.submit_many(count_primes, calls, name="count primes")
            index = {f: f.index for f in futures}
            counts: dict[int, int] = {}
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as bar:
                job = bar.add_task(f"π({limit:,})", total=tasks)
                for fut in as_completed(futures):
                    counts[index[fut]] = fut.result()
                    bar.advance(job)
                    if kill and summary["node_killed"] is None and len(counts) >= tasks // 2:
                        summary["node_killed"] = _kill_busy_node(fog, client)
                        if summary["node_killed"]:
                            bar.console.print(
                                f"[red]killed node {summary['node_killed']} with SIGKILL[/] "
                                "at 50%: its tasks will run elsewhere"
                            )
            total = sum(counts.values())
            expected = sieve_count(limit)
            retried, checked = _task_stats(client, futures[0].job_id)
    finally:
        with console.status("stopping the fog…"):
            fog.stop()
    seconds = time.perf_counter() - t0
    summary.update(
        tasks_done=len(counts),
        tasks_lost=tasks - len(counts),
        tasks_retried=retried,
        results_checked=checked,
        result=total,
        expected=expected,
        result_correct=total == expected,
        seconds=round(seconds, 2),
    )
    summary["ok"] = summary["result_correct"] and summary["tasks_lost"] == 0
    _print_summary(console, summary, limit)
    return summary


def _kill_busy_node(fog: LocalFog, client: Client) -> str | None:
    """SIGKILL a node that holds tasks right now, so the kill lands mid-task."""
    live = {f"local-{i}": i for i, p in enumerate(fog.nodes) if p is not None and p.poll() is None}
    busy = [n for n in client.nodes() if n["held"] > 0 and n["name"] in live]
    if not busy:
        return None
    victim = max(busy, key=lambda n: n["held"])
    fog.kill_node(live[victim["name"]], signal.SIGKILL)
    return str(victim["id"])


def _task_stats(client: Client, job_id: int) -> tuple[int, int]:
    """(tasks run again after a lost attempt, tasks whose result another node checked)."""
    retried = checked = offset = 0
    while True:
        page = client.tasks(job_id, limit=1000, offset=offset)
        for t in page:
            outcomes = [h["outcome"] for h in t["history"]]
            retried += "lost" in outcomes
            checked += outcomes.count("agreed") >= 2
        if len(page) < 1000:
            return retried, checked
        offset += 1000


def _print_summary(console: Console, s: dict[str, Any], limit: int) -> None:
    table = Table(title="fogwheel demo", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("nodes", str(s["nodes"]))
    table.add_row("tasks", f"{s['tasks_done']} of {s['tasks']} done, {s['tasks_lost']} lost")
    table.add_row("node killed", s["node_killed"] or "none")
    table.add_row("tasks run again", f"{s['tasks_retried']} (their node was killed)")
    table.add_row(
        "results checked", f"{s['results_checked']} on a second node (new nodes earn trust)"
    )
    table.add_row(f"primes below {limit:,}", f"{s['result']:,} (local sieve: {s['expected']:,})")
    verdict = "[green]correct[/]" if s["result_correct"] else "[red]WRONG[/]"
    table.add_row("result", verdict)
    table.add_row("time", f"{s['seconds']:.1f} s")
    console.print(table)
