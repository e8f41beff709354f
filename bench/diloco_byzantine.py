"""DiLoCo with 10 % of its devices poisoning, against the same run with none: loss, detection.

Two runs of `workloads.diloco.Trainer` on two fresh local fogs of D single-slot devices and D
workers (D = 10 by default), one worker a device (`TrainConfig.pin`: device i starts worker i,
so the poisoners run workers 0..P-1 from the first round), with the library's Byzantine
defences as they are by default (the robust aggregate, the held-out check of every update,
audits recomputed under the coordinator's quorum; docs/training.md): one in which
`--poisoners` of the devices run with `FOGWHEEL_FAULT=poison:ATTACK` (node/faults.py), one in
which every device is honest. Both start from bench/diloco.py's warm start (`--warm-start`,
150 steps of one-process AdamW, as its other DiLoCo arms do).

    byzantine_loss_ratio   final validation loss, poisoned run / clean run (goal <= 1.03)
    byzantine_detected     poisoning devices the coordinator quarantined (a count; of
                           byzantine_poisoners); byzantine_false_accusations the honest ones

bench/diloco.py runs this as its `--byzantine` section (on by default) with its own model,
H and steps; alone:

    python bench/diloco_byzantine.py                  # D=10, H=50, 750 steps: long on 2 cores
    python bench/diloco_byzantine.py --steps 100 --h 50 --devices 10

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.node.faults import POISONS
from fogwheel.workloads import diloco, transformer

MODEL = transformer.ModelConfig(context=64, d_model=64, n_layers=2, n_heads=4, d_ff=256)
# One worker a device: device i advertises the capability PIN + i and worker i's first task
# needs it; its kept state keeps it there. Without it a fast device took a second worker in
# round 1 and kept it, and on 2026-12-02 the poisoner of a 10-device run ran no task at all.
PIN = "diloco-w"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_arm(
    settings: dict[str, Any],
    devices: int,
    poisoners: int,
    attack: str,
    work: Path,
    initial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run on a fresh fog: `poisoners` of the `devices` poison with `attack` (0: clean),
    from the weights `initial` (a warm start) or the seed's."""
    name = f"{attack} x{poisoners}" if poisoners else "clean"
    t0 = time.perf_counter()
    with LocalFog(0, cores_per_node=1, workdir=work / name.replace(" ", "-")) as fog:
        liars = set()
        for i in range(devices):  # device i runs worker i (TrainConfig.pin)
            env = {"FOGWHEEL_FAULT": f"poison:{attack}"} if i < poisoners else None
            node = fog.add_node("--capability", f"{PIN}{i}", env=env)
            if env:
                liars.add(f"local-{node}")
        fog.wait_for_nodes(devices)
        with Client(fog.url, fog.api_key, replicas=1) as client:
            config = diloco.TrainConfig(**{**settings, "workers": devices, "pin": PIN})
            run_dir = work / f"run-{name.replace(' ', '-')}"
            trainer = diloco.Trainer.start(client, config, run_dir, initial=initial)

            def report(record: diloco.RoundRecord, run: diloco.Run) -> None:
                progress(
                    f"  byzantine {name} round {record.round}/{config.rounds}: val "
                    f"{record.val_loss:.4f}, {record.audited} audited, {record.suspected} "
                    f"suspected, {record.undone} undone, {record.seconds:.1f} s"
                )

            run = trainer.train(report)
            nodes = client.nodes()
    caught = {n["name"] for n in nodes if n["state"] == "quarantined"}
    history = run.history
    return {
        "loss": round(history[-1].val_loss, 4),
        "detected": len(caught & liars),
        "false_accusations": len(caught - liars),
        "audited": sum(h.audited for h in history),
        "suspected": sum(h.suspected for h in history),
        "undone": sum(h.undone for h in history),
        "dropped": sum(h.dropped for h in history),
        "rounds": len(history),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def measure(
    settings: dict[str, Any],
    devices: int = 10,
    poisoners: int = 1,
    attack: str = "sign-flip",
    initial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The byzantine figures: the poisoned run against the clean one, same settings and the
    same starting weights."""
    work = Path(tempfile.mkdtemp(prefix="fogwheel-bench-byzantine-"))
    try:
        progress(f"[byzantine] {devices} devices, {poisoners} poisoning ({attack})")
        poisoned = train_arm(settings, devices, poisoners, attack, work, initial)
        progress(f"[byzantine] {devices} devices, all honest")
        clean = train_arm(settings, devices, 0, attack, work, initial)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "byzantine_loss_ratio": round(poisoned["loss"] / clean["loss"], 4),
        "byzantine_detected": poisoned["detected"],
        "byzantine_poisoners": poisoners,
        "byzantine_false_accusations": poisoned["false_accusations"] + clean["false_accusations"],
        "byzantine": {
            "attack": attack,
            "devices": devices,
            "aggregate": settings.get("aggregate", diloco.TrainConfig.aggregate),
            "poisoned": poisoned,
            "clean": clean,
        },
    }


def bench_section(
    args: argparse.Namespace,
    model: transformer.ModelConfig,
    initial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """bench/diloco.py's byzantine section: its model, its largest H, its steps and rates,
    from its warm start (`initial`) like every other DiLoCo arm."""
    h = max(args.h)
    settings = {
        "model": model.to_dict(),
        "rounds": args.steps // h,
        "inner_steps": h,
        "batch": args.batch,
        "inner_lr": args.lr,
        "weight_decay": 0.1,
        "outer_lr": args.outer_lr,
        "outer_momentum": args.outer_momentum,
        "seed": args.seed,
        "val_windows": args.val_windows,
        "round_timeout": 600.0,
    }
    return measure(settings, args.byzantine_devices, 1, args.byzantine_attack, initial)


def warm_weights(steps: int, seed: int) -> dict[str, Any] | None:
    """bench/diloco.py's warm start (its K = 4, batch 16, lr 3e-3): `steps` of one-process
    AdamW from the seed's weights, the checkpoint its DiLoCo arms start from; None for 0."""
    if steps <= 0:
        return None
    bench = importlib.import_module("diloco")  # bench/diloco.py, beside this file
    from fogwheel.workloads import corpus

    shards, _ = corpus.split_corpus(corpus.load_corpus(), 4)
    options = argparse.Namespace(warm_start=steps, lr=3e-3, workers=4, batch=16)
    progress(f"[byzantine] warm start: {steps} steps of one-process AdamW")
    warm = bench.warm_start(options, seed, b"".join(shards))
    return None if warm is None else warm[0]


def goal_met(figures: dict[str, Any]) -> bool:
    """byzantine_loss_ratio <= 1.03 with every poisoner detected and nobody else accused."""
    return (
        figures["byzantine_loss_ratio"] <= 1.03
        and figures["byzantine_detected"] == figures["byzantine_poisoners"]
        and figures["byzantine_false_accusations"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10, help="D, devices and workers (10)")
    parser.add_argument("--poisoners", type=int, default=1, help="of them poisoning (1)")
    parser.add_argument("--attack", choices=POISONS, default="sign-flip", help="(sign-flip)")
    parser.add_argument("--steps", type=int, default=750, help="inner steps a worker (750)")
    parser.add_argument("--h", type=int, default=50, help="inner steps a round (50)")
    parser.add_argument("--batch", type=int, default=16, help="(16)")
    parser.add_argument("--aggregate", default="centered-clip", help="(centered-clip)")
    parser.add_argument("--seed", type=int, default=0, help="(0)")
    parser.add_argument("--model", choices=["bench", "tiny"], default="bench", help="(bench)")
    parser.add_argument(
        "--warm-start", type=int, default=150,
        help="steps of bench/diloco.py's warm start both runs begin from (150; bench model only)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    model = MODEL if args.model == "bench" else transformer.ModelConfig.tiny()
    settings = {
        "model": model.to_dict(),
        "rounds": args.steps // args.h,
        "inner_steps": args.h,
        "batch": args.batch,
        "inner_lr": 3e-3,
        "weight_decay": 0.1,
        "outer_lr": 0.7,
        "outer_momentum": 0.8,
        "seed": args.seed,
        "val_windows": 256,
        "aggregate": args.aggregate,
        "round_timeout": 600.0,
    }
    t0 = time.perf_counter()
    initial = warm_weights(args.warm_start, args.seed) if args.model == "bench" else None
    figures = measure(settings, args.devices, args.poisoners, args.attack, initial)
    figures |= {"steps": args.steps, "h": args.h, "model": args.model}
    figures["warm_start"] = args.warm_start if initial is not None else 0
    figures["goal_met"] = goal_met(figures)
    figures["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
