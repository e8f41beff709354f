"""Verification at scale: wrong results accepted, replication overhead, time to quarantine.

The byzantine scenario, larger: 10 local node agents, one of which (10 %) returns a wrong
result for every task (test-only fault injection, set in that node's own environment). A
warm-up job lets reputations settle; then a job of 2,000 deterministic tasks is measured:
- wrong results accepted (goal 0): every answer is checked against a local computation;
- replication overhead = task runs that produced a result ÷ tasks (goal ≤ 1.15), with BOINC's
  fixed quorum of 2 measured in the same run for comparison (it costs ≥ 2.0);
- time from the first job's start until the faulty node is quarantined.

Then two attacks on a fog of owners (docs/owners.md), each on a fresh coordinator:
- collusion: 10 % of the devices belong to one owner (joined with that owner's own token) and
  all return the same wrong answer (FOGWHEEL_FAULT=collude); reported are the wrong answers
  accepted (`collusion_wrong_accepted`, goal 0) and the replication overhead of a measured job
  after a warm-up (`collusion_overhead`, goal <= 1.15);
- Sybils: an attacker joins 1,000 devices from one token made with `tokens create`'s
  defaults (`sybil_admitted`: how many the token let in), and the admitted ones lease work
  and return one shared wrong answer while a job runs (`sybil_wrong_accepted`, goal 0).

    python bench/trust.py                   # 10 nodes, 1 faulty, 2,000 measured tasks
    python bench/trust.py --tasks 500 --warmup 500 --json
    python bench/trust.py --tasks 400 --warmup 300 --boinc-tasks 100 \
        --collusion-nodes 20 --collusion-warmup 300 --collusion-tasks 400 --sybil-tasks 100

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import pickle
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


def admin_call(fog: LocalFog, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = httpx.request(
        method,
        f"{fog.url}{path}",
        headers={"authorization": f"Bearer {fog.admin_key}"},
        timeout=60,
        **kw,
    )
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer


def owner_token(fog: LocalFog, name: str, **limits: Any) -> tuple[str, str]:
    """A new owner and a join token of its own: (owner id, join string)."""
    owner = admin_call(fog, "POST", "/v1/owners", json={"name": name})["owner_id"]
    tok = admin_call(fog, "POST", "/v1/tokens", json={"owner_id": owner, **limits})
    return owner, tok["join_string"]


def collusion_run(args: argparse.Namespace) -> dict[str, Any]:
    """10 % of the devices, of one owner, return one shared wrong answer."""
    colluders = max(2, round(args.collusion_nodes * 0.1))
    honest = args.collusion_nodes - colluders
    say(f"collusion: {honest} honest nodes, {colluders} of one owner returning one wrong answer…")
    with LocalFog(0, lease_seconds=5.0) as fog:
        owner, join = owner_token(fog, "cartel")
        for _ in range(honest):
            fog.add_node()
        for _ in range(colluders):
            fog.add_node("--token", join, env={"FOGWHEEL_FAULT": "collude:cartel"})
        fog.wait_for_nodes(args.collusion_nodes)
        with Client(fog.url, fog.api_key) as client:
            wrong_w, _, sec_w = run_job(client, args.collusion_warmup, 0, "adaptive")
            say(f"  warm-up {args.collusion_warmup} tasks: {sec_w:.1f} s")
            wrong_m, job_m, sec_m = run_job(
                client, args.collusion_tasks, args.collusion_warmup, "adaptive"
            )
            runs, tasks = runs_per_task(fog, job_m)
            say(f"  measured {tasks} tasks: {sec_m:.1f} s, {runs} runs")
            nodes = client.nodes()
    caught = [n for n in nodes if n["owner_id"] == owner and n["state"] == "quarantined"]
    return {
        "collusion_wrong_accepted": wrong_w + wrong_m,
        "collusion_overhead": round(runs / tasks, 4),
        "collusion_colluders": colluders,
        "collusion_quarantined": len(caught),
        "collusion_honest_quarantined": sum(
            n["state"] == "quarantined" for n in nodes if n["owner_id"] != owner
        ),
    }


def sybil_run(args: argparse.Namespace) -> dict[str, Any]:
    """1,000 joins from one token; the admitted Sybils lie in unison while a job runs."""
    say(f"Sybils: 1,000 joins from one token, {args.sybil_honest} honest nodes…")
    with LocalFog(0, lease_seconds=5.0) as fog:
        for _ in range(args.sybil_honest):
            fog.add_node()
        fog.wait_for_nodes(args.sybil_honest)
        _, join = owner_token(fog, "sybil-farm")  # `fogwheel tokens create` defaults
        token = join.split("#", 1)[0]
        statuses: dict[int, int] = {}
        credentials = []
        t0 = time.perf_counter()
        with httpx.Client(base_url=fog.url, timeout=60) as http:
            for i in range(1000):
                r = http.post(
                    "/v1/nodes/join",
                    json={
                        "token": token,
                        "name": f"sybil-{i}",
                        "cores": 1024,
                        "memory_mb": 1 << 24,
                        "disk_mb": 16 << 20,
                        "platform": "Linux-sybil",
                        "capabilities": [],
                    },
                )
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 201:
                    credentials.append(r.json()["credential"])
        join_s = time.perf_counter() - t0
        say(f"  answers {statuses} in {join_s:.1f} s")
        stop = threading.Event()
        lied = [0]

        def lie() -> None:
            bad = pickle.dumps("the sybil answer")
            value = {
                "sha": hashlib.sha256(bad).hexdigest(),
                "size": len(bad),
                "data": base64.b64encode(bad).decode(),
            }
            clients = [
                httpx.Client(base_url=fog.url, headers={"authorization": f"Bearer {c}"}, timeout=60)
                for c in credentials
            ]
            while not stop.is_set():
                for h in clients:
                    r = h.post("/v1/nodes/me/sync", json={"want": 4, "slots_free": 4})
                    if r.status_code != 200 or not r.json()["tasks"]:
                        continue
                    reports = [
                        {
                            "task_id": t["task_id"],
                            "attempt": t["attempt"],
                            "ok": True,
                            "value": value,
                        }
                        for t in r.json()["tasks"]
                    ]
                    h.post("/v1/nodes/me/sync", json={"results": reports})
                    lied[0] += len(reports)
                stop.wait(0.05)
            for h in clients:
                h.close()

        liar = threading.Thread(target=lie, daemon=True)
        liar.start()
        try:
            with Client(fog.url, fog.api_key) as client:
                wrong, _, sec = run_job(client, args.sybil_tasks, 0, "adaptive")
        finally:
            stop.set()
            liar.join()
        say(f"  {args.sybil_tasks} tasks in {sec:.1f} s; the Sybils returned {lied[0]} lies")
    return {
        "sybil_admitted": statuses.get(201, 0),
        "sybil_refused": {str(k): v for k, v in sorted(statuses.items()) if k != 201},
        "sybil_join_seconds": round(join_s, 2),
        "sybil_lies": lied[0],
        "sybil_wrong_accepted": wrong,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--faulty", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=2000, help="tasks in the measured job")
    ap.add_argument("--warmup", type=int, default=1000, help="tasks that let reputations settle")
    ap.add_argument("--boinc-tasks", type=int, default=300, help="tasks run with a fixed quorum")
    ap.add_argument("--collusion-nodes", type=int, default=20, help="fleet of the collusion run")
    ap.add_argument("--collusion-warmup", type=int, default=1000)
    ap.add_argument("--collusion-tasks", type=int, default=2000)
    ap.add_argument("--sybil-honest", type=int, default=4, help="honest nodes of the Sybil run")
    ap.add_argument("--sybil-tasks", type=int, default=200)
    ap.add_argument("--skip-owners", action="store_true", help="no collusion and Sybil runs")
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
    if not args.skip_owners:
        result.update(collusion_run(args))
        result.update(sybil_run(args))
    if not args.json:
        print(f"wrong results accepted:       {result['wrong_accepted']} (goal 0)")
        print(f"replication overhead:         {overhead:.3f} runs/task (goal <= 1.15)")
        print(f"fixed 2-replica quorum:       {boinc:.3f} runs/task (BOINC's default)")
        print(f"ratio fixed / adaptive:       {boinc / overhead:.2f}x the work")
        print(f"faulty nodes quarantined:     {result['quarantined']} of {args.faulty}")
        print(f"honest nodes quarantined:     {result['honest_quarantined']}")
        print(f"time to quarantine:           {result['seconds_to_quarantine']} s")
        if not args.skip_owners:
            print(f"collusion: wrong accepted     {result['collusion_wrong_accepted']} (goal 0)")
            print(f"collusion: overhead           {result['collusion_overhead']} (goal <= 1.15)")
            print(f"Sybils admitted of 1,000:     {result['sybil_admitted']}")
            print(f"Sybils: wrong accepted        {result['sybil_wrong_accepted']} (goal 0)")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
