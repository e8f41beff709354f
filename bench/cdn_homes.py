"""The peer-assisted CDN served from devices behind home NAT: `python bench/cdn.py --homes`.

Issue #16's benchmark. tests/homes.py builds 10 homes in network namespaces, each a NAT router
with an 8 Mbit/s uplink (tc tbf) and one device running a real node agent: 3 port-restricted
NATs whose router speaks UPnP-IGD (miniupnpd), 2 full-cone NATs, 2 port-restricted NATs and
3 symmetric NATs, none of these with UPnP. The coordinator and the customers sit on the
"public" network. A random object is published with k=4 of n=8 and the benchmark waits until
every share is stored; then 20 clients (threads of one process on the public network) fetch it
at once with `cdn.client.fetch`, for `--rounds` rounds, while 30 % of the devices are killed
(SIGKILL), one after another during the first round, and replaced by a fresh agent on the same
device. The same clients then fetch it from the origin alone. The origin's uplink is a token
bucket of `--origin-mbit` in front of the clients' origin reads (the coordinator shares the
public network with them, where tc has no link to shape). Every fetched file is compared byte
by byte with the original.

The last line of stdout is JSON: `offload` (share bytes from devices / all share bytes),
`direct_share` (shares from devices without the relay / all shares from devices),
`wrong_bytes`, `p95_ratio_vs_origin`, with the shares and bytes of each path (direct, punch,
relay). Object sizes are scaled down (8 MiB by default) so one run stays under 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from homes import Home, HomeFog, Homes, unavailable

MB = 1 << 20


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def homes_of(n: int, uplink_mbit: float) -> list[Home]:
    """n homes of mixed NAT: 30 % UPnP, 20 % full cone, 20 % port-restricted, 30 % symmetric."""
    kinds = [("port_restricted", True)] * 3 + [("full", False)] * 2
    kinds += [("port_restricted", False)] * 2 + [("symmetric", False)] * 3
    return [
        Home(kinds[i % 10][0], upnp=kinds[i % 10][1], uplink_mbit=uplink_mbit) for i in range(n)
    ]


# -- the customers' side: run inside the public namespace -----------------------------------


def drive(args: argparse.Namespace) -> None:
    """Publish, wait for placement, say READY, wait for GO; fetch; print the figures."""
    from fogwheel.cdn.client import fetch, plan, publish
    from fogwheel.cdn.fetch import Fetcher
    from fogwheel.client import Blob, Client
    from fogwheel.node.chunks import UplinkShaper

    work = Path(args.work)
    shaper = UplinkShaper(args.origin_mbit * 1e6)

    class ShapedClient(Client):
        def fetch(self, blob: Blob) -> bytes:  # type: ignore[override]
            data = super().fetch(blob)
            shaper.take(len(data))
            return data

    rng = random.Random(args.seed)
    original = rng.randbytes(int(args.mb * MB))
    src = work / "object.bin"
    src.write_bytes(original)
    with Client() as c:
        cid = publish(c, src, k=args.k, n=args.n)
        deadline = time.monotonic() + 120
        while True:
            p = plan(c, cid)
            shas = [s for seg in p["manifest"]["segments"] for s in seg["shares"]]
            if all(p["holders"].get(s) for s in shas):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the shares were not all placed in 120 s")
            time.sleep(0.5)
    print("READY", flush=True)
    sys.stdin.readline()

    results: list[dict[str, Any]] = []

    def one(i: int, origin_only: bool) -> dict[str, Any]:
        out = work / f"out-{i}-{origin_only}.bin"
        t0 = time.perf_counter()
        with ShapedClient() as c:
            try:
                if origin_only:
                    the_plan = {**plan(c, cid), "holders": {}}
                    sizes = {
                        sha: seg["share_size"]
                        for seg in the_plan["manifest"]["segments"]
                        for sha in seg["shares"]
                    }
                    with Fetcher(the_plan, lambda s: c.fetch(Blob(s, sizes[s]))) as f:
                        data = b"".join(f.segments())
                    st = f.stats
                else:
                    st = fetch(c, cid, out)
                    data = out.read_bytes()
            except Exception as e:
                return {"error": repr(e)[:300], "seconds": time.perf_counter() - t0}
        out.unlink(missing_ok=True)
        wrong = abs(len(data) - len(original)) + sum(
            a != b for a, b in zip(data, original, strict=False)
        )
        return {
            "seconds": time.perf_counter() - t0,
            "origin_only": origin_only,
            "peers": st.from_peers,
            "origin": st.from_origin,
            "paths": st.paths,
            "wrong": wrong,
        }

    rounds = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results += list(pool.map(lambda i: one(i, False), range(args.clients)))
        rounds.append(time.perf_counter() - t0)
        print(f"ROUND {r}", flush=True)
    with ThreadPoolExecutor(args.clients) as pool:
        results += list(pool.map(lambda i: one(i, True), range(args.clients)))
    print(json.dumps({"cid": cid, "results": results, "rounds": rounds}), flush=True)


# -- the orchestrator: builds the homes, kills and replaces devices -------------------------


def p95(times: list[float]) -> float:
    times = sorted(times)
    return times[max(0, math.ceil(0.95 * len(times)) - 1)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fogwheel-homes-"))
    specs = homes_of(args.n_homes, args.uplink_mbit)
    t_start = time.monotonic()
    try:
        with Homes(specs, prefix="fwb", workdir=work) as homes:
            progress(f"built {len(specs)} homes in namespaces fwb-*: " + ", ".join(
                f"{h.nat}{'+upnp' if h.upnp else ''}" for h in specs))  # fmt: skip
            time.sleep(3.5)  # miniupnpd asks the STUN server first
            fog = HomeFog(homes).start()
            fog.wait_for_reach(len(specs))  # every device probed before anything is placed
            devices = [h.devices[0] for h in homes.homes]
            driver = subprocess.Popen(
                ["ip", "netns", "exec", homes.pub, sys.executable, __file__, "--drive",
                 "--work", str(work), "--mb", str(args.mb), "--clients", str(args.clients),
                 "--rounds", str(args.rounds), "--origin-mbit", str(args.origin_mbit),
                 "-k", str(args.k), "-n", str(args.n), "--seed", str(args.seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, **fog.env},
            )  # fmt: skip
            assert driver.stdin is not None and driver.stdout is not None
            line = driver.stdout.readline()
            if line.strip() != "READY":
                raise SystemExit(f"the customers' side failed before fetching: {line!r}")
            progress(f"published {args.mb:g} MiB (k={args.k}, n={args.n}), every share stored")
            victims = random.Random(args.seed).sample(
                range(len(devices)), round(0.3 * len(devices))
            )
            replaced: list[str] = []

            def churn() -> None:
                for i in victims:
                    time.sleep(args.kill_every)
                    ns, addr = devices[i]
                    homes.kill(fog.nodes[ns])
                    progress(f"killed the agent on {ns} ({specs[i].nat}); replacing it")
                    fog.start_node(ns, addr)
                    replaced.append(ns)

            driver.stdin.write("GO\n")
            driver.stdin.flush()
            killer = threading.Thread(target=churn, daemon=True)
            killer.start()
            out = ""
            for line in driver.stdout:
                if line.startswith("ROUND"):
                    progress(f"round {line.split()[1]} done")
                else:
                    out = line
            driver.wait(60)
            killer.join(30)
            if driver.returncode != 0 or not out:
                raise SystemExit(f"the customers' side failed (rc {driver.returncode})")
            data = json.loads(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peers = [r for r in data["results"] if not r.get("origin_only")]
    origin = [r for r in data["results"] if r.get("origin_only")]
    ok = [r for r in peers if "error" not in r]
    from_peers = sum(r["peers"] for r in ok)
    from_origin = sum(r["origin"] for r in ok)
    paths: dict[str, list[int]] = {}
    for r in ok:
        for p, (n, b) in r["paths"].items():
            got = paths.setdefault(p, [0, 0])
            got[0] += n
            got[1] += b
    from fogwheel.core.reach import direct_share

    kinds = [f"{h.nat}{'+upnp' if h.upnp else ''}" for h in specs]
    origin_ok = [r for r in origin if "error" not in r]
    peer_p95 = p95([r["seconds"] for r in ok]) if ok else float("nan")
    origin_p95 = p95([r["seconds"] for r in origin_ok]) if origin_ok else float("nan")
    return {
        "offload": round(from_peers / (from_peers + from_origin), 4) if ok else None,
        "direct_share": round(direct_share({p: n for p, (n, _) in paths.items()}), 4),
        "wrong_bytes": sum(r.get("wrong", 0) for r in data["results"]),
        "p95_ratio_vs_origin": round(peer_p95 / origin_p95, 3),
        "paths": {p: {"shares": n, "mib": round(b / MB, 2)} for p, (n, b) in paths.items()},
        "homes": args.n_homes,
        "nat": {k: kinds.count(k) for k in sorted(set(kinds))},
        "clients": args.clients,
        "mb": args.mb,
        "k": args.k,
        "n": args.n,
        "uplink_mbit": args.uplink_mbit,
        "origin_mbit": args.origin_mbit,
        "rounds": args.rounds,
        "devices_replaced": len(victims),
        "fetches": len(peers),
        "failed_fetches": len(peers) - len(ok),
        "p95_s": round(peer_p95, 2),
        "origin_p95_s": round(origin_p95, 2),
        "round_s": [round(x, 1) for x in data["rounds"]],
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-homes", type=int, default=10, help="homes, one device each (10)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    parser.add_argument("--mb", type=float, default=8, help="object size in MiB (8)")
    parser.add_argument("--rounds", type=int, default=2, help="peer-assisted rounds (2)")
    parser.add_argument("-k", type=int, default=4, help="shares needed (4)")
    parser.add_argument("-n", type=int, default=8, help="shares made (8)")
    parser.add_argument("--uplink-mbit", type=float, default=8, help="each home's uplink (8)")
    parser.add_argument("--origin-mbit", type=float, default=100, help="the origin's (100)")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        drive(args)
        return 0
    why = unavailable() or (None if shutil.which("miniupnpd") else "miniupnpd is not installed")
    if why:
        print(f"cannot build the homes: {why}", file=sys.stderr)
        return 2
    figures = run(args)
    if not args.json:
        for key, value in figures.items():
            progress(f"{key:>22}  {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
