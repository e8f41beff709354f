"""Python environments: what a job pays for bringing numpy and scipy with it (docs/envs.md).

On one local fog of 2 nodes (1 slot each), in the same run:
- `preinstalled`: 200 tasks that import numpy and scipy from the nodes' own Python (the peer),
- `env cold`: the same 200 tasks with `Env(pip=["numpy==X", "scipy==Y"])` (this machine's
  installed versions) on nodes that have never seen it: each node fetches the wheels from the
  coordinator and unpacks them before its first task,
- `env warm`: the same job again, the environment built on both nodes,
- `preinstalled` again (the peer is the mean of its two runs).

Figures: `cold_start_s` (the cold job's time less the warm one's: what the first tasks paid),
`warm_overhead_ms` (per task, warm env job against the peer), `env_disk_mb` (one node's
environment on disk), `installs_per_node` (from each node's envs/stats.json; goal 1),
`first_result_cold_s` / `first_result_pre_s`. The wheels are resolved once and cached
(~/.cache/fogwheel/envs), so a rerun downloads nothing. Progress on stderr; the last line of
stdout is one JSON object.

    python bench/envs.py            # 200 tasks
    python bench/envs.py --tasks 50
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fogwheel import Env
from fogwheel.client import Client
from fogwheel.localfog import LocalFog

err = Console(stderr=True)


def task(i: int) -> float:
    import numpy as np
    import scipy.special

    return float(scipy.special.erf(np.float64(i) / 200.0))


def run_job(
    client: Client, n: int, env: Env | None, label: str, bar: Progress
) -> tuple[float, float]:
    """(seconds for the whole job, seconds to its first result)."""
    tid = bar.add_task(label, total=n)
    t0 = time.monotonic()
    first = None
    for _ in client.map(task, range(n), env=env, timeout=1800):
        if first is None:
            first = time.monotonic() - t0
        bar.advance(tid)
    return time.monotonic() - t0, first or 0.0


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=200)
    args = ap.parse_args()
    env = Env(pip=[f"numpy=={version('numpy')}", f"scipy=={version('scipy')}"])
    with (
        tempfile.TemporaryDirectory(prefix="fogwheel-bench-envs-") as tmp,
        LocalFog(2, workdir=Path(tmp) / "fog") as fog,
        Client(fog.url, fog.api_key, replicas=1) as client,
    ):
        with err.status("resolving the environment (pip, cached after the first run)…"):
            t0 = time.monotonic()
            client.env_lock(env)
            resolve_s = time.monotonic() - t0
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err) as bar:
            run_job(client, 4, None, "warm-up (workers start)", bar)
            pre1, first_pre = run_job(client, args.tasks, None, "preinstalled", bar)
            cold, first_cold = run_job(client, args.tasks, env, "env, cold", bar)
            warm, _ = run_job(client, args.tasks, env, "env, warm", bar)
            pre2, _ = run_job(client, args.tasks, None, "preinstalled again", bar)
        stats = []
        for i in range(2):
            p = fog.dir / f"node-{i}" / "envs" / "stats.json"
            stats.append(json.loads(p.read_text()) if p.exists() else {})
        sizes = [
            disk_mb(d)
            for i in range(2)
            for d in (fog.dir / f"node-{i}" / "envs").iterdir()
            if d.is_dir() and len(d.name) == 64
        ]
    pre = (pre1 + pre2) / 2
    figures: dict[str, Any] = {
        "tasks": args.tasks,
        "nodes": 2,
        "numpy": version("numpy"),
        "scipy": version("scipy"),
        "resolve_and_upload_s": round(resolve_s, 2),
        "preinstalled_s": [round(pre1, 3), round(pre2, 3)],
        "env_cold_s": round(cold, 3),
        "env_warm_s": round(warm, 3),
        "cold_start_s": round(cold - warm, 3),
        "first_result_cold_s": round(first_cold, 3),
        "first_result_pre_s": round(first_pre, 3),
        "warm_overhead_ms": round((warm - pre) / args.tasks * 1000, 2),
        "env_disk_mb": round(max(sizes, default=0.0), 1),
        "installs_per_node": [s.get("installs", 0) for s in stats],
    }
    err.print(figures)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    sys.exit(main())
