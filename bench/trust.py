"""Verification at scale: wrong results accepted, replication overhead, time to quarantine.

The byzantine scenario, larger: 10 local node agents, one of which (10 %) returns a wrong
result for every task (test-only fault injection, set in that node's own environment). A
warm-up job lets reputations settle; then a job of 2,000 deterministic tasks is measured:
- wrong results accepted (goal 0): every answer is checked against a local computation;
- replication overhead = task runs that produced a result ÷ tasks (goal ≤ 1.15), with BOINC's
  fixed quorum of 2 measured in the same run for comparison (it costs ≥ 2.0);
- time from the first job's start until the faulty node is quarantined.

    python bench/trust.py                   # 10 nodes, 1 faulty, 2,000 measured tasks
    python bench/trust.py --tasks 500 --warmup 500 --json

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import httpx

from fogwheel.client import Client
from fogwheel.localfog import LocalFog

RAN = {"reported", "agreed", "accepted", "disputed", "superseded", "unsettled"}


def work(x: int) -> int:
    """A deterministic task of about a millisecond."""
    acc = 0
    for k in range(2_000):
        acc = (acc * 31 + k + x) % 1_000_003
    return acc


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def runs_per_task(fog: LocalFog, job_id: int) -> tuple[int, int]:
    """(result-producing runs, tasks) of a job, from each task's history (replicas included)."""
    runs = tasks = 0
    offset = 0
    while True:
        page = httpx.get(
            f"{fog.url}/v1/jobs/{job_id}/tasks",
            params={"limit": 1000, "offset": offset},
            headers=fog.headers,
            timeout=60,
        ).json()["tasks"]
        for t in page:
            tasks += 1
            runs += sum(h["outcome"] in RAN for h in t["history"])
        if len(page) < 1000:
            return runs, tasks
        offset += 1000


def run_job(client: Client, n: int, offset: int, replicas: str | int) -> tuple[int, int, float]:
    """Submit n tasks, wait, and return (wrong answers, job id, seconds)."""
    client.replicas = replicas
    t0 = time.perf_counter()
    futures = client.submit_many(work, [((offset + i,), {}) for i in range(n)], name="bench")
    wrong = sum(f.result(timeout=1800) != work(offset + f.index) for f in futures)
    return wrong, futures[0].job_id, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--faulty", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=2000, help="tasks in the measured job")
    ap.add_argument("--warmup", type=int, default=1000, help="tasks that let reputations settle")
    ap.add_argument("--boinc-tasks", type=int, default=300, help="tasks run with a fixed quorum")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()

    say(f"starting {args.nodes} nodes, {args.faulty} of them returning wrong results…")
    with LocalFog(0, lease_seconds=5.0) as fog:
        for _ in range(args.nodes - args.faulty):
            fog.add_node()
        faulty = [fog.add_node(env={"FOGWHEEL_FAULT": "wrong-results"}) for _ in range(args.faulty)]
        fog.wait_for_nodes(args.nodes)
        faulty_names = {f"local-{i}" for i in faulty}
        quarantined_at: dict[str, float] = {}
        stop = threading.Event()
        t_start = time.perf_counter()

        def watch() -> None:
            while not stop.is_set():
                try:
                    nodes = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers, timeout=10)
                    for n in nodes.json()["nodes"]:
                        if n["state"] == "quarantined" and n["name"] not in quarantined_at:
                            quarantined_at[n["name"]] = time.perf_counter() - t_start
                except httpx.HTTPError:
                    pass
                stop.wait(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with Client(fog.url, fog.api_key) as client:
            say(f"warm-up: {args.warmup} tasks, adaptive replication…")
            wrong_w, _, sec_w = run_job(client, args.warmup, 0, "adaptive")
            say(f"  {sec_w:.1f} s")
            say(f"measured: {args.tasks} tasks, adaptive replication…")
            wrong_m, job_m, sec_m = run_job(client, args.tasks, args.warmup, "adaptive")
            runs_m, tasks_m = runs_per_task(fog, job_m)
            say(f"  {sec_m:.1f} s, {runs_m} runs for {tasks_m} tasks")
            say(f"BOINC-style fixed quorum: {args.boinc_tasks} tasks on 2 nodes each…")
            wrong_b, job_b, _ = run_job(client, args.boinc_tasks, args.warmup + args.tasks, 2)
            runs_b, tasks_b = runs_per_task(fog, job_b)
            nodes = client.nodes()
        stop.set()
        watcher.join()

    quarantined = sorted(n["name"] for n in nodes if n["state"] == "quarantined")
    overhead = runs_m / tasks_m
    boinc = runs_b / tasks_b
    q_times = [quarantined_at[n] for n in faulty_names if n in quarantined_at]
    result: dict[str, Any] = {
        "wrong_accepted": wrong_w + wrong_m + wrong_b,
        "overhead": round(overhead, 4),
        "boinc_fixed_quorum_overhead": round(boinc, 4),
        "quarantined": len([n for n in quarantined if n in faulty_names]),
        "honest_quarantined": len([n for n in quarantined if n not in faulty_names]),
        "faulty": args.faulty,
        "seconds_to_quarantine": round(max(q_times), 2) if q_times else None,
        "tasks": tasks_m,
        "runs": runs_m,
        "warmup_tasks": args.warmup,
        "nodes": args.nodes,
        "measured_job_seconds": round(sec_m, 2),
    }
    if not args.json:
        print(f"wrong results accepted:       {result['wrong_accepted']} (goal 0)")
        print(f"replication overhead:         {overhead:.3f} runs/task (goal <= 1.15)")
        print(f"fixed 2-replica quorum:       {boinc:.3f} runs/task (BOINC's default)")
        print(f"ratio fixed / adaptive:       {boinc / overhead:.2f}x the work")
        print(f"faulty nodes quarantined:     {result['quarantined']} of {args.faulty}")
        print(f"honest nodes quarantined:     {result['honest_quarantined']}")
        print(f"time to quarantine:           {result['seconds_to_quarantine']} s")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
