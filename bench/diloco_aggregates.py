"""The robust outer aggregates against each other, in process: DiLoCo, one worker poisoning.

For each aggregate (mean, centered-clip, trimmed-mean, median) and each attack (none,
sign-flip, scale x100, random of the honest norm, trained on other data: random bytes), one
DiLoCo run of K workers of which one poisons every round, with nothing else defending it: no
held-out check, no audits (those are `workloads/diloco_guard.py`'s; this measures what the
aggregate alone bounds). The inner steps are `diloco_math.inner_steps` itself, each worker's
AdamW state kept across rounds as on the fog; the outer step Nesterov SGD (lr 0.7, momentum
0.8, bench/diloco.py's). Same model, data, seeds and schedule for every cell.

The figure is the final validation loss of each cell over the clean run with the mean (plain
DiLoCo), and each aggregate's worst ratio over the attacks: the default is the aggregate whose
worst case is best (docs/training.md records the table).

    python bench/diloco_aggregates.py                # K=10, H=20, 8 rounds: ~10 minutes on 2 cores
    python bench/diloco_aggregates.py --workers 5 --rounds 4    # ~2 minutes

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import torch
from rich.progress import Progress

from fogwheel.node.faults import poison_delta
from fogwheel.workloads import corpus, diloco_guard, diloco_math, diloco_robust, transformer

MODELS = {
    "bench": transformer.ModelConfig(context=64, d_model=64, n_layers=2, n_heads=4, d_ff=256),
    "tiny": transformer.ModelConfig.tiny(),  # 24,736 parameters: the tests' model
}
MODEL = MODELS["bench"]
ATTACKS = ("none", "sign-flip", "scale", "random", "other-data")


def run_cell(
    args: argparse.Namespace, aggregate: str, attack: str, shards: list[bytes], val: bytes
) -> float:
    """One DiLoCo run; worker 0 poisons with `attack`. The final validation loss."""
    model = transformer.build(MODEL, args.seed)
    outer = diloco_math.OuterOptimizer(model, lr=0.7, momentum=0.8)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    states: list[bytes | None] = [None] * args.workers
    noise = random.Random(args.seed).randbytes(len(shards[0]))  # "other data"
    for r in range(args.rounds):
        global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        deltas = []
        for k in range(args.workers):
            liar = k == 0 and attack != "none"
            shard = noise if liar and attack == "other-data" else shards[k]
            result = diloco_math.inner_steps(
                MODEL, global_state, shard, args.h, lr=3e-3, weight_decay=0.1,
                batch=args.batch, seed=args.seed * 1009 + r * 31 + k, opt_state=states[k],
            )  # fmt: skip
            states[k] = result.opt_state
            delta = result.delta
            if liar and attack != "other-data":
                delta = poison_delta(delta, attack, args.seed * 7 + r)
            deltas.append(delta)
        agg = diloco_guard.robust_mean(aggregate, deltas, [1.0] * len(deltas), shapes)  # type: ignore[arg-type]
        outer.step([agg], [1.0])
    return diloco_math.evaluate(model, MODEL, val, args.val_windows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10, help="K, one of them poisoning (10)")
    parser.add_argument("--h", type=int, default=20, help="inner steps a round (20)")
    parser.add_argument("--rounds", type=int, default=8, help="outer steps (8)")
    parser.add_argument("--batch", type=int, default=16, help="a worker's batch (16)")
    parser.add_argument("--val-windows", type=int, default=256, help="validation windows")
    parser.add_argument("--seed", type=int, default=0, help="(0)")
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="bench", help="bench/diloco.py's (bench)"
    )
    parser.add_argument(
        "--aggregates", nargs="+", default=list(diloco_robust.AGGREGATES), help="(all four)"
    )
    args = parser.parse_args(argv)
    global MODEL
    MODEL = MODELS[args.model]
    torch.set_num_threads(1)
    shards, val = corpus.split_corpus(corpus.load_corpus(), args.workers)
    t0 = time.perf_counter()
    loss: dict[str, dict[str, float]] = {}
    with Progress(transient=True) as bar:
        task = bar.add_task("aggregate x attack", total=len(args.aggregates) * len(ATTACKS))
        for aggregate in args.aggregates:
            loss[aggregate] = {}
            for attack in ATTACKS:
                bar.update(task, description=f"{aggregate} / {attack}")
                loss[aggregate][attack] = round(run_cell(args, aggregate, attack, shards, val), 4)
                bar.advance(task)
                print(
                    f"{aggregate:>14} {attack:>10}: {loss[aggregate][attack]:.4f}", file=sys.stderr
                )
    clean = loss["mean"]["none"] if "mean" in loss else min(v["none"] for v in loss.values())
    ratio = {a: {k: round(v / clean, 4) for k, v in row.items()} for a, row in loss.items()}
    worst = {a: max(row.values()) for a, row in ratio.items()}
    figures: dict[str, Any] = {
        "loss": loss,
        "ratio_to_clean_mean": ratio,
        "worst_ratio": worst,
        "best_worst_case": min(worst, key=worst.__getitem__),
        "clean_mean_loss": clean,
        "workers": args.workers,
        "poisoners": 1,
        "h": args.h,
        "rounds": args.rounds,
        "params": transformer.build(MODEL, args.seed).param_count(),
        "model": args.model,
        "bench_wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
