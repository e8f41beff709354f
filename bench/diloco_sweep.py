"""DiLoCo's settings swept in process, with the fog's own code: what each costs against B.

bench/diloco.py runs DiLoCo on a real fog (a coordinator, node agents, one job a round), which
takes minutes a config; this runs the same rounds in one process so that a sweep of settings
fits in half an hour of one core. Nothing of the arithmetic is copied: each worker's round is
the node's own task function (`diloco.inner_task`, or `diloco_fragments.streaming_task` with
fragments) run in that worker's directory, whose `keep/` stays there between rounds (AdamW's
moments, the error feedback, the streaming local weights) as a node keeps them; the spec is
the driver's (`diloco.task_spec`), the pseudo-gradient is decoded and checked as the driver
does (`diloco_compress.decode`, `diloco_math.check_norm`), and the guard's decisions are the
driver's: audits planned by `diloco_guard.plan_audits` (an audited worker's task runs `fresh`
in a directory of its own: AdamW from zero, no error feedback, as on the fog, while the
worker's keep/ is left as it was for its next round; its copy is taken as verified), the
held-out check by `diloco_guard.held_out_suspects` (suspects left out and audited next round),
the step by `diloco_guard.outer_step` (the robust aggregate, then `OuterOptimizer` or
`FragmentedOuter`). What the fog adds and this leaves out: placement (every worker keeps its
state: no restarts), churn, the quorum's comparison of audit copies and the undo (no liar here).

B is bench/diloco.py's `train_sync` and the warm start its `warm_start`, with bench/diloco.py's
model (115,008 parameters), K = 4, batch 16, AdamW lr 3e-3.

A point is a comma-separated list of `key=value` (unset keys: bench/diloco.py's defaults of
its C arm): h, steps, olr (outer lr), mom (outer momentum), nest (1/0: Nesterov), agg
(mean|centered-clip|trimmed-mean|median), audit (rate), gw (held-out windows, 0: no check),
warm (warm-start steps, shared with B), wu (inner warm-up steps), comp (codec), frag, lr
(inner lr), seed.

    python bench/diloco_sweep.py --points "h=50,agg=mean,audit=0,gw=0" "h=50"
    python bench/diloco_sweep.py --stage separate      # the regression's causes, ~15 minutes

Progress goes to stderr, one line a point; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import diloco as bench  # bench/diloco.py, beside this file
from fogwheel.workloads import (
    corpus,
    diloco,
    diloco_compress,
    diloco_fragments,
    diloco_guard,
    diloco_math,
    transformer,
)

MODEL = bench.MODEL
GUARD_OFF = "agg=mean,audit=0,gw=0"
STAGES = {
    # the regression: the guard's parts, the warm start, each alone, at H=50
    "separate": [
        "h=50,warm=150",
        f"h=50,warm=150,{GUARD_OFF}",
        "h=50,warm=0",
        f"h=50,warm=0,{GUARD_OFF}",
        "h=50,warm=150,audit=0,gw=0",  # centered-clip alone
        "h=50,warm=150,agg=mean,gw=0",  # audits alone
        "h=50,warm=150,agg=mean,audit=0",  # the held-out check alone
    ],
}
DEFAULTS: dict[str, Any] = {
    "h": 50,
    "steps": 750,
    "olr": 0.7,
    "mom": 0.8,
    "nest": 1,
    "agg": "centered-clip",
    "audit": 0.1,
    "gw": 32,
    "warm": 0,
    "wu": 0,
    "comp": "fp16",
    "frag": 1,
    "lr": 3e-3,
    "seed": 0,
}


def parse_point(text: str) -> dict[str, Any]:
    point = dict(DEFAULTS)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown key {key!r} in {text!r}: one of {', '.join(DEFAULTS)}")
        kind = type(DEFAULTS[key])
        point[key] = kind(value) if kind is not str else value
    return point


def config_of(point: dict[str, Any], workers: int, batch: int) -> diloco.TrainConfig:
    """The point as the driver's `TrainConfig` (rounds: steps / H, x F with fragments)."""
    return diloco.TrainConfig(
        model=MODEL.to_dict(),
        workers=workers,
        rounds=point["steps"] // point["h"] * point["frag"],
        inner_steps=point["h"],
        fragments=point["frag"],
        batch=batch,
        inner_lr=point["lr"],
        weight_decay=bench.WEIGHT_DECAY,
        warmup_steps=point["wu"],
        outer_lr=point["olr"],
        outer_momentum=point["mom"],
        outer_nesterov=bool(point["nest"]),
        compression=point["comp"],
        seed=point["seed"],
        val_windows=256,
        aggregate=point["agg"],
        audit_rate=point["audit"],
        gauntlet_windows=point["gw"],
    )


def simulate(
    cfg: diloco.TrainConfig,
    shards: list[bytes],
    val: bytes,
    initial: dict[str, torch.Tensor] | None,
    work: Path,
    probe: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A run's rounds in process: the validation loss after each, and the guard's counts.
    With `probe`, each round's held-out gains are appended to it (`_probe`)."""
    model = (
        transformer.build(MODEL, cfg.seed)
        if initial is None
        else transformer.from_state(MODEL, initial)
    )
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    groups = diloco_fragments.partition(shapes, cfg.fragments)
    outer: Any = (
        diloco_math.OuterOptimizer(
            model, lr=cfg.outer_lr, momentum=cfg.momentum, nesterov=cfg.outer_nesterov
        )
        if cfg.fragments == 1
        else diloco_fragments.FragmentedOuter(
            model, groups, lr=cfg.outer_lr, momentum=cfg.momentum, nesterov=cfg.outer_nesterov
        )
    )
    task = diloco.inner_task if cfg.fragments == 1 else diloco_fragments.streaming_task
    held_out = diloco_guard.held_out_split(val, MODEL.context) if cfg.gauntlet_windows else b""
    suspects: list[int] = []
    last_round: dict[int, int] = {}
    losses: list[float] = []
    counts = {"audited": 0, "suspected": 0, "rounds_without_step": 0, "bytes_max": 0}
    for r in range(cfg.rounds):
        present = cfg.present(r)
        audited = diloco_guard.plan_audits(cfg.seed, r, present, suspects, cfg.audit_rate)
        weights = transformer.state_to_bytes(model.state_dict())
        sent = groups[diloco_fragments.synced(r, cfg.fragments)]
        sent_shapes = {n: shapes[n] for n in sent}
        kept: list[tuple[int, dict[str, torch.Tensor], float]] = []
        for k in present:
            spec = diloco.task_spec(cfg, groups, r, k, last_round.get(k), audit=k in audited)
            # an audit runs apart, as on another device: the worker's keep/ stays as it was
            where = work / (f"audit-r{r}-w{k}" if k in audited else f"w{k}")
            where.mkdir(exist_ok=True)
            (where / "weights").write_bytes(weights)
            (where / "shard").write_bytes(shards[k])
            with contextlib.chdir(where):
                out = task(spec)
            raw = (where / "delta").read_bytes()
            counts["bytes_max"] = max(counts["bytes_max"], len(raw))
            delta = diloco_compress.decode(raw, sent_shapes, cfg.compression)
            diloco_math.check_norm(delta, diloco.MAX_DELTA_NORM)
            kept.append((k, delta, float(out["samples"])))
            if k in audited:
                shutil.rmtree(where)
            else:
                last_round[k] = r
        judged = (
            diloco_guard.held_out_suspects(
                model.state_dict(),
                MODEL,
                held_out,
                cfg.gauntlet_windows,
                [(k, d) for k, d, _ in kept if k not in audited],
            )
            if held_out
            else []
        )
        if probe is not None:
            text = diloco_guard.held_out_split(val, MODEL.context)
            probe.append(_probe(cfg, model.state_dict(), text, kept, shards[0], r))
        left_out = {s.worker for s in judged}
        suspects = sorted(left_out)
        deltas = [(d, w) for k, d, w in kept if k not in left_out]
        counts["audited"] += len(audited)
        counts["suspected"] += len(left_out)
        counts["rounds_without_step"] += 0 if deltas else 1
        diloco_guard.outer_step(outer, cfg.aggregate, deltas, shapes)
        loss = diloco_math.evaluate(model, MODEL, val, cfg.val_windows)
        if not loss == loss or loss > 20:
            raise bench.BenchmarkFailed(f"round {r + 1}: the validation loss is {loss}")
        losses.append(loss)
    return {"losses": losses, **counts}


ATTACKS = ("sign-flip", "scale", "random", "other-data")


def _probe(
    cfg: diloco.TrainConfig,
    state: dict[str, torch.Tensor],
    held_out: bytes,
    kept: list[tuple[int, dict[str, torch.Tensor], float]],
    shard: bytes,
    r: int,
) -> dict[str, Any]:
    """The round's held-out gains (base loss minus the loss with the update applied alone)
    of every honest update and of worker 0's poisoned by each attack (node/faults.py's
    poisons; other-data: the same inner steps on random bytes), none of which is used."""
    from fogwheel.node.faults import poison_delta

    windows = cfg.gauntlet_windows or 32
    honest = [(k, d) for k, d, _ in kept]
    d0 = kept[0][1]
    poisoned = [(i, poison_delta(d0, a, r)) for i, a in enumerate(ATTACKS[:3])]
    noise = torch.Generator().manual_seed(r)
    junk = bytes(torch.randint(0, 256, (len(shard),), generator=noise, dtype=torch.uint8).tolist())
    other = diloco_math.inner_steps(
        MODEL, state, junk, cfg.inner_steps // cfg.fragments, lr=cfg.inner_lr,
        weight_decay=cfg.weight_decay, batch=cfg.batch, seed=r,
    ).delta  # fmt: skip
    if set(other) != set(d0):
        other = {n: other[n] for n in d0}
    poisoned.append((3, other))
    base, losses = diloco_guard.held_out_losses(
        state, MODEL, held_out, windows, honest + [(100 + i, d) for i, d in poisoned]
    )
    gains = {k: round(base - loss, 5) for k, loss in losses}
    return {
        "base": round(base, 5),
        "honest": [gains[k] for k, _ in honest],
        **{a: gains[100 + i] for i, a in enumerate(ATTACKS)},
    }


def run_point(
    point: dict[str, Any],
    args: argparse.Namespace,
    shards: list[bytes],
    val: bytes,
    cache: dict[tuple[int, int, int], tuple[Any, float]],
) -> dict[str, Any]:
    """One point against B of the same warm start, steps and seed (B run once for each)."""
    train = b"".join(shards)
    key = (point["warm"], point["steps"], point["seed"])
    if key not in cache:
        ns = argparse.Namespace(
            workers=args.workers, batch=args.batch, lr=3e-3, steps=point["steps"],
            eval_every=50, val_windows=256, warm_start=point["warm"],
        )  # fmt: skip
        warm = bench.warm_start(ns, point["seed"], train)
        params = transformer.build(MODEL, point["seed"]).param_count()
        b = bench.train_sync(ns, point["seed"], shards, val, params, warm)
        cache[key] = (warm, b.loss)
        bench.progress(f"  B (warm {point['warm']}, {point['steps']} steps): {b.loss:.4f}")
    warm, b_loss = cache[key]
    cfg = config_of(point, args.workers, args.batch)
    work = Path(tempfile.mkdtemp(prefix="fogwheel-sweep-"))
    t0 = time.perf_counter()
    try:
        probe: list[dict[str, Any]] | None = [] if args.probe else None
        sim = simulate(cfg, shards, val, warm[0] if warm else None, work, probe)
        if probe is not None:
            sim["probe"] = probe
    except bench.BenchmarkFailed as e:
        return {"point": point, "failed": str(e), "b_loss": round(b_loss, 4)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = sim.pop("losses")
    return {
        "point": point,
        "loss": round(losses[-1], 4),
        "ratio": round(losses[-1] / b_loss, 4),
        "best": round(min(losses), 4),
        "b_loss": round(b_loss, 4),
        "curve": [round(x, 4) for x in losses],
        **sim,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def short(point: dict[str, Any]) -> str:
    """The keys that differ from DEFAULTS, as they were given."""
    return ",".join(f"{k}={v}" for k, v in point.items() if v != DEFAULTS[k]) or "(defaults)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="*", default=[], help="key=value,... (see above)")
    parser.add_argument("--stage", choices=sorted(STAGES), action="append", default=[])
    parser.add_argument(
        "--probe", action="store_true",
        help="record each round's held-out gains, honest and poisoned (none used)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=4, help="K (4)")
    parser.add_argument("--batch", type=int, default=16, help="a worker's batch (16)")
    args = parser.parse_args(argv)
    texts = [p for s in args.stage for p in STAGES[s]] + args.points
    if not texts:
        parser.error("give --points or --stage")
    torch.set_num_threads(1)
    shards, val = corpus.split_corpus(corpus.load_corpus(), args.workers)
    cache: dict[tuple[int, int, int], tuple[Any, float]] = {}
    results = []
    t0 = time.perf_counter()
    for text in texts:
        point = parse_point(text)
        res = run_point(point, args, shards, val, cache)
        results.append(res)
        if "failed" in res:
            bench.progress(f"{short(point):>60}: FAILED {res['failed']}")
            continue
        bench.progress(
            f"{short(point):>60}: {res['loss']:.4f} ({res['ratio']:.4f} of B), best "
            f"{res['best']:.4f}; audited {res['audited']}, suspected {res['suspected']}, "
            f"{res['rounds_without_step']} rounds without a step; {res['wall_s']:.0f} s"
        )
    print(json.dumps({"results": results, "bench_wall_s": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
