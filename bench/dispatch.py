"""Dispatch overhead: no-op tasks per second through fogwheel and through Dask distributed.

Measures what the platform itself costs per task, with the task doing nothing: 10,000 calls
of `noop(x)` go through fogwheel's full HTTP path (SDK -> coordinator -> two local node
agents -> their worker processes -> back) and, in the same run, through a Dask distributed
`LocalCluster` of two single-threaded worker processes. Each is timed from submission to the
last result received; every result is checked against its input. The runs alternate between
the two, and the medians are reported, because a small shared machine is noisy. At the end
the idle node agents' resident memory is measured, alone and with their worker processes.

    python bench/dispatch.py                    # 10,000 tasks, 3 runs each
    python bench/dispatch.py --tasks 2000 --runs 5 --json
    python bench/dispatch.py --executor dask    # also: a Dask bag on fogwheel.Executor
    python bench/dispatch.py --console --tasks 3000 --runs 3   # what watching costs

With `--executor dask` the same run also computes a Dask bag of `--tasks` partitions (one
small task each, then Dask's tree reduction of their sum) with `dask.compute(...,
scheduler=fogwheel.Executor)` and on the Dask cluster, alternating, every sum checked, and
reports `dask_on_fogwheel_ratio`: the median time on Dask's LocalCluster(2) divided by the
median time on fogwheel (above 1.0: fogwheel ran Dask's graph faster). The Executor's client
checks nothing by default here (`--executor-replicas 1`), as Dask's cluster checks nothing;
with `adaptive`, results picked for a check on this one machine wait for a device of another
network that never comes, and the figure measures that wait.

With `--console`, fogwheel alone runs `--runs` times without anyone watching and as often
with the operator's console open in Chromium (Playwright, /usr/bin/chromium, the Jobs tab
polling /v1) and /metrics scraped every second, alternating, and reports `console_ratio`:
median tasks/s with the console over median without (goal: at least 0.95).

Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from typing import Any

import psutil

from fogwheel.client import Client
from fogwheel.executor import Executor
from fogwheel.localfog import LocalFog

MB = 1024 * 1024


def noop(x: Any) -> Any:
    """The task: returns its input, so that only the dispatch path is measured."""
    return x


class BenchmarkFailed(Exception):
    """A result was wrong, missing or late: the figures would be meaningless."""


def progress(message: str) -> None:
    """Status for the person watching; stderr, so that stdout ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


# -- the two systems under test ------------------------------------------------------------


def fogwheel_run(client: Client, n: int, timeout: float) -> float:
    """Seconds to run `n` no-op tasks through the fog, every result checked."""
    calls = [((i,), {}) for i in range(n)]
    t0 = time.perf_counter()
    futures = client.submit_many(noop, calls, name="bench-noop")
    _, missing = wait(futures, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if missing:
        raise BenchmarkFailed(f"fogwheel: {len(missing)} of {n} results late after {timeout:g} s")
    failed = [f for f in futures if f.exception() is not None]
    if failed:
        raise BenchmarkFailed(
            f"fogwheel: {len(failed)} of {n} tasks failed; first: {failed[0].exception()!r}"
        )
    check("fogwheel", [f.result() for f in futures], n)
    return elapsed


def dask_run(client: Any, n: int, timeout: float) -> float:
    """Seconds to run `n` no-op tasks through Dask distributed, every result checked."""
    from dask.distributed import wait as dask_wait

    t0 = time.perf_counter()
    futures = client.map(noop, range(n), pure=False)
    try:
        dask_wait(futures, timeout=timeout)  # local: only so that a hang fails, not blocks
    except TimeoutError as e:
        raise BenchmarkFailed(f"dask: results missing after {timeout:g} s") from e
    try:
        results = client.gather(futures)
    except Exception as e:
        raise BenchmarkFailed(f"dask: a task failed: {e!r}") from e
    elapsed = time.perf_counter() - t0
    client.cancel(futures)
    check("dask", results, n)
    return elapsed


def add_one(x: int) -> int:
    """A Dask bag's task: small, so that only running Dask's graph is measured."""
    return x + 1


def bag_run(scheduler: Any, n: int, timeout: float) -> float:
    """Seconds to compute a Dask bag of `n` one-item partitions, mapped and summed, on
    `scheduler` (a fogwheel Executor or a Dask distributed client); the sum is checked."""
    import dask
    import dask.bag as db

    total = db.from_sequence(range(n), npartitions=n).map(add_one).sum()
    t0 = time.perf_counter()
    try:
        (got,) = dask.compute(total, scheduler=scheduler)
    except Exception as e:
        raise BenchmarkFailed(f"dask bag on {type(scheduler).__name__}: {e!r}") from e
    elapsed = time.perf_counter() - t0
    if got != n * (n + 1) // 2:
        raise BenchmarkFailed(f"dask bag on {type(scheduler).__name__}: sum {got}, wrong")
    if elapsed > timeout:
        raise BenchmarkFailed(f"dask bag: {elapsed:.0f} s, over the {timeout:g} s allowed")
    return elapsed


def check(system: str, results: list[Any], n: int) -> None:
    """Every task `i` must have returned `i`; anything else fails the benchmark."""
    if len(results) != n:
        raise BenchmarkFailed(f"{system}: {len(results)} results for {n} tasks")
    wrong = [(i, r) for i, r in enumerate(results) if r != i]
    if wrong:
        i, r = wrong[0]
        raise BenchmarkFailed(f"{system}: {len(wrong)} wrong results; task {i} returned {r!r}")


# -- memory ---------------------------------------------------------------------------------


def agent_memory(pids: list[int]) -> tuple[float, float]:
    """(largest agent RSS, largest agent-plus-workers RSS) in MB over the given agent pids."""
    if not pids:
        raise BenchmarkFailed("no node agent is alive to measure")
    own, tree = [], []
    for pid in pids:
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss
        children = 0
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                children += child.memory_info().rss
        own.append(rss / MB)
        tree.append((rss + children) / MB)
    return max(own), max(tree)


def _worker_rss() -> int:
    """Runs inside each Dask worker: its own resident memory in bytes."""
    return psutil.Process().memory_info().rss


# -- the benchmark --------------------------------------------------------------------------


@contextlib.contextmanager
def clusters(n_nodes: int) -> Iterator[tuple[LocalFog, Client, Any]]:
    """Both systems started and ready: the fog with its SDK client, and the Dask client."""
    from dask.distributed import Client as DaskClient
    from dask.distributed import LocalCluster

    with contextlib.ExitStack() as stack:
        progress(f"starting fogwheel: a coordinator and {n_nodes} node agents")
        fog = stack.enter_context(LocalFog(nodes=n_nodes, cores_per_node=1))
        fog_client = stack.enter_context(Client(fog.url, fog.api_key))
        progress(f"starting dask: LocalCluster of {n_nodes} worker processes")
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=n_nodes,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
        )
        dask_client = stack.enter_context(DaskClient(cluster))
        yield fog, fog_client, dask_client


def measure(
    tasks: int,
    runs: int,
    warmup: int,
    timeout: float,
    executor: str | None = None,
    executor_replicas: str = "1",
) -> dict[str, Any]:
    """Warm both systems up, time `runs` alternating runs of each, then read idle memory.
    With `executor="dask"`, a Dask bag on fogwheel's Executor and on Dask's cluster too."""
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with clusters(2) as (fog, fog_client, dask_client):
        systems: dict[str, Callable[[int], float]] = {
            "fogwheel": lambda n: fogwheel_run(fog_client, n, timeout),
            "dask": lambda n: dask_run(dask_client, n, timeout),
        }
        if executor == "dask":
            replicas = int(executor_replicas) if executor_replicas.isdigit() else executor_replicas
            fog_executor = Executor(fog.url, fog.api_key, replicas=replicas)
            systems["dask_bag_on_fogwheel"] = lambda n: bag_run(fog_executor, n, timeout)
            systems["dask_bag_on_dask"] = lambda n: bag_run(dask_client, n, timeout)
        for name, run in systems.items():
            seconds = run(warmup)
            progress(f"warm-up {name}: {warmup} tasks in {seconds:.2f} s")
        rates: dict[str, list[float]] = {name: [] for name in systems}
        times: dict[str, list[float]] = {name: [] for name in systems}
        order = list(systems)
        for r in range(runs):
            for name in order:
                seconds = systems[name](tasks)
                rates[name].append(tasks / seconds)
                times[name].append(seconds)
                progress(
                    f"run {r + 1}/{runs} {name}: {tasks} tasks in {seconds:.2f} s "
                    f"= {tasks / seconds:,.0f} tasks/s"
                )
            order.reverse()  # alternate who goes first, so neither always meets a warmer machine
        time.sleep(2.0)  # let the agents go idle before reading their memory
        pids = [p.pid for p in fog.nodes if p is not None and p.poll() is None]
        agent_rss, agent_tree_rss = agent_memory(pids)
        dask_rss = max(dask_client.run(_worker_rss).values()) / MB
        if executor == "dask":
            fog_executor.shutdown()
    fog_rate = statistics.median(rates["fogwheel"])
    dask_rate = statistics.median(rates["dask"])
    bag: dict[str, Any] = {}
    if executor == "dask":
        on_fog = statistics.median(times["dask_bag_on_fogwheel"])
        on_dask = statistics.median(times["dask_bag_on_dask"])
        bag = {
            "executor_replicas": executor_replicas,
            "dask_bag_on_fogwheel_s": round(on_fog, 3),
            "dask_bag_on_dask_s": round(on_dask, 3),
            "dask_on_fogwheel_ratio": round(on_dask / on_fog, 3),
            "dask_bag_on_fogwheel_runs_s": [round(x, 3) for x in times["dask_bag_on_fogwheel"]],
            "dask_bag_on_dask_runs_s": [round(x, 3) for x in times["dask_bag_on_dask"]],
        }
    return {
        "fogwheel_tasks_per_s": round(fog_rate, 1),
        "dask_tasks_per_s": round(dask_rate, 1),
        "ratio": round(fog_rate / dask_rate, 3),
        "fogwheel_us_per_task": round(1e6 / fog_rate, 1),
        "dask_us_per_task": round(1e6 / dask_rate, 1),
        "agent_rss_mb": round(agent_rss, 1),
        "agent_tree_rss_mb": round(agent_tree_rss, 1),
        "dask_worker_rss_mb": round(dask_rss, 1),
        "tasks": tasks,
        "runs": runs,
        "fogwheel_runs": [round(x, 1) for x in rates["fogwheel"]],
        "dask_runs": [round(x, 1) for x in rates["dask"]],
        **bag,
    }


def measure_console(tasks: int, runs: int, warmup: int, timeout: float) -> dict[str, Any]:
    """The same fogwheel runs, alternately with nobody watching and with the console open in
    Chromium and /metrics scraped every second (bench/console_load.py); `console_ratio` is
    the median tasks/s with the console over the median without (goal: at least 0.95).
    Dask is left out here: the question is what watching costs fogwheel itself."""
    from console_load import ConsoleLoad

    with LocalFog(nodes=2, cores_per_node=1) as fog, Client(fog.url, fog.api_key) as client:
        seconds = fogwheel_run(client, warmup, timeout)
        progress(f"warm-up: {warmup} tasks in {seconds:.2f} s")
        rates: dict[str, list[float]] = {"without": [], "with": []}
        scrapes = polls = 0
        order = ["without", "with"]
        for r in range(runs):
            for mode in order:
                if mode == "without":
                    seconds = fogwheel_run(client, tasks, timeout)
                else:
                    with ConsoleLoad(fog.url, fog.admin_key) as load:
                        load.pump(2.5)  # signed in, polling, a few scrapes in
                        seconds = fogwheel_run(client, tasks, timeout)
                        load.pump(0.2)
                        if load.problem:
                            raise BenchmarkFailed(f"console: {load.problem}")
                        scrapes += load.scrapes
                        polls += load.polls
                rates[mode].append(tasks / seconds)
                progress(
                    f"run {r + 1}/{runs} {mode} the console: {tasks} tasks in {seconds:.2f} s "
                    f"= {tasks / seconds:,.0f} tasks/s"
                )
            order.reverse()
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    return {
        "console_ratio": round(with_ / without, 3),
        "tasks_per_s_without_console": round(without, 1),
        "tasks_per_s_with_console": round(with_, 1),
        "runs_without": [round(x, 1) for x in rates["without"]],
        "runs_with": [round(x, 1) for x in rates["with"]],
        "metrics_scrapes": scrapes,
        "console_requests": polls,
        "tasks": tasks,
        "runs": runs,
    }


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Dispatch of {figures['tasks']:,} no-op tasks, median of {figures['runs']} runs"
    )
    table.add_column("measure")
    table.add_column("fogwheel", justify="right")
    table.add_column("dask", justify="right")
    table.add_row(
        "tasks/s", f"{figures['fogwheel_tasks_per_s']:,.0f}", f"{figures['dask_tasks_per_s']:,.0f}"
    )
    table.add_row(
        "overhead µs/task",
        f"{figures['fogwheel_us_per_task']:,.0f}",
        f"{figures['dask_us_per_task']:,.0f}",
    )
    table.add_row(
        "runs (tasks/s)",
        ", ".join(f"{x:,.0f}" for x in figures["fogwheel_runs"]),
        ", ".join(f"{x:,.0f}" for x in figures["dask_runs"]),
    )
    table.add_row("ratio fogwheel/dask", f"{figures['ratio']:.3f}", "")
    table.add_row(
        "idle agent RSS MB (own / with workers)",
        f"{figures['agent_rss_mb']:.1f} / {figures['agent_tree_rss_mb']:.1f}",
        f"worker {figures['dask_worker_rss_mb']:.1f}",
    )
    if "dask_on_fogwheel_ratio" in figures:
        table.add_row(
            f"Dask bag of {figures['tasks']:,} partitions, s",
            f"{figures['dask_bag_on_fogwheel_s']:.2f} (Executor)",
            f"{figures['dask_bag_on_dask_s']:.2f} (LocalCluster)",
        )
        table.add_row("dask_on_fogwheel_ratio", f"{figures['dask_on_fogwheel_ratio']:.3f}", "")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per run (10000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each system (3)")
    parser.add_argument("--warmup", type=int, default=200, help="tasks in the warm-up batch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--executor",
        choices=["dask"],
        default=None,
        help="also run a Dask bag of --tasks partitions on fogwheel.Executor and on Dask's "
        "LocalCluster(2): dask_on_fogwheel_ratio",
    )
    parser.add_argument(
        "--executor-replicas",
        default="1",
        help="replicas of the Executor's tasks: 1 (no checks, as Dask; the default) or adaptive",
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="fogwheel alone, alternately with the console open in Chromium and /metrics "
        "scraped every second, and without: console_ratio (goal >= 0.95)",
    )
    args = parser.parse_args(argv)
    if args.console:
        try:
            figures = measure_console(args.tasks, args.runs, args.warmup, args.timeout)
        except BenchmarkFailed as e:
            progress(f"BENCHMARK FAILED: {e}")
            return 1
        print(json.dumps(figures), flush=True)
        return 0
    try:
        figures = measure(
            args.tasks,
            args.runs,
            args.warmup,
            args.timeout,
            args.executor,
            args.executor_replicas,
        )
    except BenchmarkFailed as e:
        progress(f"BENCHMARK FAILED: {e}")
        return 1
    if not args.json:
        print_table(figures)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
