"""DiLoCo on the fog against synchronous data-parallel training: loss, bytes, time to target.

One model, one seed and one number of training samples, trained five ways in one run:

  A  one process, synchronous AdamW, batch K x b per step (no communication at all);
  B  synchronous data-parallel, K simulated workers in this process: every step each worker
     computes the gradient of its own shard's batch of b, the K gradients are averaged (and
     clipped at 1.0, as DiLoCo's inner steps clip theirs), one AdamW step; each worker is
     counted as sending its full fp32 gradient every step, 4 bytes x params;
  C  DiLoCo with K workers on fogwheel (`workloads.diloco.Trainer` on a `LocalFog`), for each
     H given (10 and 50 by default), fp16 pseudo-gradients, rounds = B's steps / H, so that
     every worker takes as many inner steps of batch b as B takes steps;
  D  C at the largest H with int8 pseudo-gradients;
  E  C at the largest H with each worker absent from a round with probability 0.25
     (`TrainConfig.absent_rate`): simulated churn, so E sees about 3/4 of the samples;
  T  DiLoCo with top-k pseudo-gradients (`--topk`, default topk:0.05:2:0.9: 5 % of each
     chunk of 4096, 2 bits a value, Elias-Fano coded offsets, error feedback kept on the nodes
     and decayed by 0.9 a round) at H = `--topk-h` (15: 1,116x fewer bytes than B), outer SGD
     without momentum (SparseLoCo: the error feedback is the momentum), lr `--topk-outer-lr`
     (1.5); docs/training.md, "Top-k to the goal", has the sweep behind these;
  S  Streaming DiLoCo (`--fragments` F, default 2) at the largest H, fp16: each round runs
     H / F inner steps and sends one fragment, so the peak bytes of one sync fall by ~F.

With `--warm-start W` (default 150), every config starts from the same checkpoint: W steps of A's
single-process training (batch K x b) from the seed's weights, as DiLoCo (Douillard et al.
2023, section 3) starts every run from a pretrained model. B and A continue with that AdamW
state; DiLoCo's workers start AdamW afresh. The warm start's steps, samples and bytes are the
same for every config and are not counted in any figure.

The model is deliberately small, so that the default run takes 15-20 minutes on a 2-core
machine: `ModelConfig(context=64, d_model=64, n_layers=2, n_heads=4, d_ff=256)`, 115,008
parameters (the library's default of 820k parameters is ~0.3 s a step and would need hours).
The corpus is the library's (Python's pydoc topics, ~465 KB, the last 5 % held out); the
validation loss is `diloco_math.evaluate` over the same 256 fixed windows for every config.
A, B and DiLoCo's inner steps use the same AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.1
on matrices, grad clip 1.0, no warm-up). The outer step is Nesterov SGD with lr 0.7 and
momentum 0.8, not the paper's (and `TrainConfig`'s) 0.9: with only 15 outer steps, 0.9 ended
at 1.346 against 1.316 for 0.8 and 1.315 for 0.6 (lr 1.0: 1.367, 1.4: 1.88) in an in-process
sweep at the default size; B's lr 3e-3 beat 1e-3 (1.245 against 1.379).
Defaults: K = 4, b = 16, 750 steps (48,000 windows of 64 bytes per config).

Bytes per worker are B's modelled steps x 4 x params, and for DiLoCo `Run.bytes_per_worker`,
the pseudo-gradient files the workers actually sent (header included). Time to B's final
validation loss is modelled for a 5 Mbit/s uplink with 50 ms latency per synchronisation:
time = compute seconds per step x steps + syncs x (latency + bytes per sync / 625,000 B/s),
at the first evaluation (A and B every --eval-every steps, DiLoCo every round) at or below
B's final loss; null (with the best loss reached) if never. The compute time per step is
measured in this process on one thread: A's and B's from their own steps (B's is one
worker's forward and backward plus the AdamW step: the workers run in parallel), DiLoCo's
from `diloco_math.inner_steps` itself (H steps timed once per H). Downloads (the global
weights each round, or B's averaged gradient) are not modelled, nor is the fog's own cost per
round (process start, importing torch), which is reported separately as wall seconds.

    python bench/diloco.py                      # ~15-20 minutes on 2 cores
    python bench/diloco.py --quick              # ~2 minutes: 100 steps
    python bench/diloco.py --steps 1500 --h 10 50 100 --runs 2

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import diloco_byzantine  # bench/diloco_byzantine.py, beside this file
from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.node.faults import POISONS
from fogwheel.workloads import corpus, diloco, diloco_math, transformer

MODEL = transformer.ModelConfig(context=64, d_model=64, n_layers=2, n_heads=4, d_ff=256)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0


class BenchmarkFailed(Exception):
    """A round's pseudo-gradient was rejected or training diverged: the figures are void."""


def progress(message: str) -> None:
    """Status for the person watching; stderr, so that stdout ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Curve:
    """One config's training: validation loss at (steps per worker, syncs, bytes so far)."""

    name: str
    points: list[tuple[int, float]] = field(default_factory=list)  # (steps, val loss)
    step_s: float = 0.0  # compute seconds per step (modelled as run in parallel)
    sync_every: int = 1  # steps between synchronisations (0: never)
    sync_bytes: list[int] = field(default_factory=list)  # bytes per worker of each sync
    bytes_per_worker: float = 0.0
    bytes_per_worker_max: int = 0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.points[-1][1]

    def seconds_at(self, steps: int, link_bps: float, latency: float) -> float:
        """Modelled time to reach `steps`: compute, plus every sync done by then."""
        syncs = steps // self.sync_every if self.sync_every else 0
        comm = sum(latency + b / link_bps for b in self.sync_bytes[:syncs])
        return steps * self.step_s + comm

    def time_to(self, target: float, link_bps: float, latency: float) -> float | None:
        for steps, loss in self.points:
            if loss <= target:
                return self.seconds_at(steps, link_bps, latency)
        return None


# -- A and B: in this process -----------------------------------------------------------------


def _adamw(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """The same AdamW as DiLoCo's inner steps: no decay on the norm gains."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=diloco_math.ADAM_BETAS)


def _finite(name: str, loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise BenchmarkFailed(f"{name}: the training loss is {float(loss)} at step {step}")


Warm = tuple[dict[str, torch.Tensor], dict[str, Any]] | None  # weights, AdamW state_dict


def _from_warm(seed: int, lr: float, warm: Warm) -> tuple[nn.Module, torch.optim.AdamW]:
    """The seed's model and a fresh AdamW, or the warm start's weights and AdamW state."""
    model = transformer.build(MODEL, seed)
    opt = _adamw(model, lr)
    if warm is not None:
        model.load_state_dict(warm[0])
        opt.load_state_dict(warm[1])
    model.train()
    return model, opt


def warm_start(args: argparse.Namespace, seed: int, train: bytes) -> Warm:
    """`--warm-start` steps of A's training: the checkpoint every config starts from."""
    if args.warm_start <= 0:
        return None
    model, opt = _from_warm(seed, args.lr, None)
    gen = torch.Generator().manual_seed(seed * 7919 + 2)
    for step in range(1, args.warm_start + 1):
        x, y = corpus.sample_batch(train, args.workers * args.batch, MODEL.context, gen)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        _finite("warm start", loss, step)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, copy.deepcopy(opt.state_dict())


def train_single(
    args: argparse.Namespace, seed: int, train: bytes, val: bytes, params: int, warm: Warm = None
) -> Curve:
    """A: one process, batch K x b from the whole training set, no communication."""
    model, opt = _from_warm(seed, args.lr, warm)
    gen = torch.Generator().manual_seed(seed * 7919 + 1)
    curve = Curve("A", sync_every=0)
    times = []
    t_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        x, y = corpus.sample_batch(train, args.workers * args.batch, MODEL.context, gen)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        times.append(time.perf_counter() - t0)
        _finite("A", loss, step)
        if step % args.eval_every == 0 or step == args.steps:
            curve.points.append((step, diloco_math.evaluate(model, MODEL, val, args.val_windows)))
    curve.step_s = statistics.median(times)
    curve.wall_s = time.perf_counter() - t_start
    return curve


def train_sync(
    args: argparse.Namespace,
    seed: int,
    shards: list[bytes],
    val: bytes,
    params: int,
    warm: Warm = None,
) -> Curve:
    """B: K workers' gradients on their own shards, averaged, one AdamW step, every step."""
    k_workers = args.workers
    model, opt = _from_warm(seed, args.lr, warm)
    gens = [torch.Generator().manual_seed(seed * 7919 + 100 + k) for k in range(k_workers)]
    curve = Curve("B", sync_every=1, sync_bytes=[4 * params] * args.steps)
    times = []
    t_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        for k in range(k_workers):
            x, y = corpus.sample_batch(shards[k], args.batch, MODEL.context, gens[k])
            loss = model.loss(x, y)
            (loss / k_workers).backward()  # accumulates the mean of the K gradients
            _finite("B", loss, step)
        t1 = time.perf_counter()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        t2 = time.perf_counter()
        times.append((t1 - t0) / k_workers + (t2 - t1))  # one worker's share, in parallel
        if step % args.eval_every == 0 or step == args.steps:
            curve.points.append((step, diloco_math.evaluate(model, MODEL, val, args.val_windows)))
    curve.step_s = statistics.median(times)
    curve.wall_s = time.perf_counter() - t_start
    curve.bytes_per_worker = curve.bytes_per_worker_max = 4 * params * args.steps
    return curve


def inner_step_seconds(h: int, args: argparse.Namespace, shard: bytes, seed: int) -> float:
    """Seconds per inner step of `diloco_math.inner_steps` itself (what a fog task runs),
    timed here on one thread: two rounds of H steps, the second continuing the first's
    AdamW state as on the fog; the faster of the two, per step."""
    state = transformer.build(MODEL, seed).state_dict()
    timings, opt_state = [], None
    for r in range(2):
        t0 = time.perf_counter()
        result = diloco_math.inner_steps(
            MODEL, state, shard, h, lr=args.lr, weight_decay=WEIGHT_DECAY,
            batch=args.batch, seed=seed + r, opt_state=opt_state,
        )  # fmt: skip
        timings.append((time.perf_counter() - t0) / h)
        opt_state = result.opt_state
    return min(timings)


# -- C, D and E: on the fog -------------------------------------------------------------------


def train_diloco(
    client: Client,
    args: argparse.Namespace,
    seed: int,
    name: str,
    h: int,
    step_s: float,
    work: Path,
    compression: str = "fp16",
    absent_rate: float = 0.0,
    fragments: int = 1,
    outer: tuple[float, float] | None = None,
    initial: dict[str, torch.Tensor] | None = None,
) -> Curve:
    """One DiLoCo run on the fog: rounds = steps / H (x F with fragments), a fresh run dir."""
    outer_lr, outer_momentum = outer or (args.outer_lr, args.outer_momentum)
    config = diloco.TrainConfig(
        model=MODEL.to_dict(),
        workers=args.workers,
        rounds=args.steps // h * fragments,
        inner_steps=h,
        fragments=fragments,
        batch=args.batch,
        inner_lr=args.lr,
        weight_decay=WEIGHT_DECAY,
        outer_lr=outer_lr,
        outer_momentum=outer_momentum,
        compression=compression,
        seed=seed,
        val_windows=args.val_windows,
        absent_rate=absent_rate,
    )
    directory = Path(tempfile.mkdtemp(prefix=f"run-{name}-", dir=work))
    t0 = time.perf_counter()
    trainer = diloco.Trainer.start(client, config, directory, initial=initial)

    def report(record: diloco.RoundRecord, run: diloco.Run) -> None:
        if record.rejected:
            raise BenchmarkFailed(f"{name}: round {record.round} rejected a pseudo-gradient")
        every = max(1, config.rounds // 10)
        if record.round % every == 0 or record.round == config.rounds:
            progress(
                f"  {name} round {record.round}/{config.rounds}: val {record.val_loss:.4f}, "
                f"{record.reported} reported, {record.seconds:.1f} s"
            )

    run = trainer.train(report)
    wall = time.perf_counter() - t0
    shutil.rmtree(directory, ignore_errors=True)
    history = run.history
    per_worker = list(run.bytes_per_worker.values())
    curve = Curve(
        name,
        points=[(rec.round * h // fragments, rec.val_loss) for rec in history],
        step_s=step_s,
        sync_every=h // fragments,
        # a round's sync: each present worker sends its own pseudo-gradient, in parallel
        sync_bytes=[rec.bytes_up // max(rec.reported, 1) for rec in history],
        bytes_per_worker=sum(per_worker) / args.workers,
        bytes_per_worker_max=max(per_worker, default=0),
        wall_s=wall,
    )
    curve.extra = {
        "h": h,
        "rounds": len(history),
        "compression": config.compression,
        "fragments": fragments,
        "outer_lr": outer_lr,
        "outer_momentum": config.outer_momentum,
        "peak_sync_bytes": max(rec.bytes_up_max for rec in history),
        "absent_rate": absent_rate,
        "initial_val_loss": trainer.initial_val,
        "fog_round_s": round(statistics.median(rec.seconds for rec in history), 2),
        "reported": sum(rec.reported for rec in history),
        "dropped": sum(rec.dropped for rec in history),
        "restarted": sum(rec.restarted for rec in history),
        "samples": sum(rec.reported for rec in history) * h // fragments * args.batch,
    }
    if not all(torch.isfinite(torch.tensor(loss)) for _, loss in curve.points):
        raise BenchmarkFailed(f"{name}: the validation loss is not finite")
    return curve


# -- one run: every config, same seed ---------------------------------------------------------


def run_once(
    args: argparse.Namespace, client: Client, seed: int, work: Path
) -> tuple[dict[str, Curve], int]:
    torch.set_num_threads(1)  # as on the fog's nodes, and timings free of the other core
    shards, val = corpus.split_corpus(corpus.load_corpus(), args.workers)
    train = b"".join(shards)
    params = transformer.build(MODEL, seed).param_count()
    curves: dict[str, Curve] = {}
    if args.warm_start:
        progress(f"[seed {seed}] warm start: {args.warm_start} steps of A, for every config")
    warm = warm_start(args, seed, train)
    initial = warm[0] if warm else None

    progress(f"[seed {seed}] B: synchronous data-parallel, {args.steps} steps")
    curves["B"] = train_sync(args, seed, shards, val, params, warm)
    progress(f"  B: val {curves['B'].loss:.4f}, {curves['B'].step_s * 1e3:.1f} ms a step")
    progress(f"[seed {seed}] A: one process, batch {args.workers * args.batch}")
    curves["A"] = train_single(args, seed, train, val, params, warm)
    progress(f"  A: val {curves['A'].loss:.4f}, {curves['A'].step_s * 1e3:.1f} ms a step")

    main_h = max(args.h)
    f = args.fragments
    hs = set(args.h) | {args.topk_h, main_h // f}
    step_s = {h: inner_step_seconds(h, args, shards[0], seed) for h in sorted(hs)}
    plan: list[tuple[str, int, str, float]] = [(f"C_h{h}", h, "fp16", 0.0) for h in args.h]
    plan += [(f"D_int8_h{main_h}", main_h, "int8", 0.0)]
    plan += [(f"E_churn_h{main_h}", main_h, "fp16", args.absent_rate)]
    plan += [(f"T_topk_h{args.topk_h}", args.topk_h, args.topk, 0.0)]
    plan += [(f"S_stream{f}_h{main_h}", main_h, "fp16", 0.0)]
    for name, h, compression, absent in plan:
        fragments = f if name.startswith("S_") else 1
        topk = name.startswith("T_")
        rounds = args.steps // h * fragments
        progress(f"[seed {seed}] {name}: DiLoCo, {rounds} rounds of {h // fragments} steps")
        curves[name] = train_diloco(
            client, args, seed, name, h, step_s[h // fragments], work, compression, absent,
            fragments=fragments,
            outer=(args.topk_outer_lr, 0.0) if topk else None,
            initial=initial,
        )  # fmt: skip
        c = curves[name]
        progress(
            f"  {name}: val {c.loss:.4f} ({c.loss / curves['B'].loss:.3f} of B), "
            f"{c.bytes_per_worker / 1e6:.2f} MB a worker, {c.wall_s:.0f} s on the fog"
        )
    return curves, params


def _compressed_figures(
    args: argparse.Namespace, curves: dict[str, Curve], c_main: Curve
) -> dict[str, Any]:
    """Top-k against B (loss, and B's bytes over top-k's most-sending worker's), and the
    streaming run's peak bytes of one sync against whole-model DiLoCo's at the same H."""
    b = curves["B"]
    t = curves[f"T_topk_h{args.topk_h}"]
    s = curves[f"S_stream{args.fragments}_h{max(args.h)}"]
    return {
        "topk_loss_ratio": round(t.loss / b.loss, 4),
        "topk_bytes_ratio": round(b.bytes_per_worker / t.bytes_per_worker_max, 1),
        "streaming_peak_ratio": round(
            s.extra["peak_sync_bytes"] / c_main.extra["peak_sync_bytes"], 4
        ),
        "streaming_loss_ratio": round(s.loss / c_main.loss, 4),
    }


def summarise(args: argparse.Namespace, curves: dict[str, Curve], params: int) -> dict[str, Any]:
    """The figures of one run: every config against B."""
    link = args.uplink_mbit * 1e6 / 8
    latency = args.latency_ms / 1e3
    b_loss = curves["B"].loss
    main_h = max(args.h)
    configs: dict[str, Any] = {}
    for name, c in curves.items():
        steps = c.points[-1][0]
        ttt = c.time_to(b_loss, link, latency)
        compute = steps * c.step_s
        configs[name] = {
            "loss": round(c.loss, 4),
            "loss_ratio": round(c.loss / b_loss, 4),
            "best_loss": round(min(loss for _, loss in c.points), 4),
            "bytes_per_worker": round(c.bytes_per_worker),
            "bytes_per_worker_max": c.bytes_per_worker_max,
            "syncs": steps // c.sync_every if c.sync_every else 0,
            "step_ms": round(c.step_s * 1e3, 2),
            "modelled_compute_s": round(compute, 1),
            "modelled_total_s": round(c.seconds_at(steps, link, latency), 1),
            "time_to_target_s": None if ttt is None else round(ttt, 1),
            "wall_s": round(c.wall_s, 1),
            **c.extra,
        }
    c_main = curves[f"C_h{main_h}"]
    figures: dict[str, Any] = {
        f"loss_ratio_h{h}": round(curves[f"C_h{h}"].loss / b_loss, 4) for h in args.h
    }
    figures |= {
        "bytes_ratio": round(curves["B"].bytes_per_worker / c_main.bytes_per_worker_max, 2),
        "churn_loss_ratio": round(curves[f"E_churn_h{main_h}"].loss / c_main.loss, 4),
        "int8_vs_fp16": round(curves[f"D_int8_h{main_h}"].loss / c_main.loss, 4),
        **_compressed_figures(args, curves, c_main),
        "b_loss": round(b_loss, 4),
        "speedup_to_target": None,
    }
    b_ttt, c_ttt = configs["B"]["time_to_target_s"], configs[f"C_h{main_h}"]["time_to_target_s"]
    if b_ttt and c_ttt:
        figures["speedup_to_target"] = round(b_ttt / c_ttt, 2)
    figures["configs"] = configs
    return figures


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="fogwheel-bench-diloco-"))
    try:
        with contextlib.ExitStack() as stack:
            progress(
                f"starting fogwheel: a coordinator and {args.nodes} node agents, "
                f"{args.cores} slots each"
            )
            fog = stack.enter_context(LocalFog(nodes=args.nodes, cores_per_node=args.cores))
            client = stack.enter_context(Client(fog.url, fog.api_key, replicas=1))
            for i in range(args.runs):
                curves, params = run_once(args, client, args.seed + i, work)
                runs.append(summarise(args, curves, params))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return combine(args, runs, params)


def _median(values: list[Any]) -> Any:
    """The median of the numbers; None if any is None (a target missed in some run)."""
    if any(v is None for v in values):
        return None
    return round(statistics.median(values), 4)


def combine(args: argparse.Namespace, runs: list[dict[str, Any]], params: int) -> dict[str, Any]:
    """One run's figures as they are; several runs' as medians, each run kept under `runs`."""
    main_h = max(args.h)
    first = runs[0]
    headline = [k for k in first if k != "configs"]
    figures = {k: _median([r[k] for r in runs]) for k in headline}
    configs = {}
    for name, c in first["configs"].items():
        configs[name] = {
            k: _median([r["configs"][name][k] for r in runs])
            if isinstance(v, int | float) and not isinstance(v, bool)
            else v
            for k, v in c.items()
        }
    c_main = configs[f"C_h{main_h}"]
    figures["goals"] = {
        f"h{main_h}_within_3pct_of_b": figures[f"loss_ratio_h{main_h}"] <= 1.03,
        "bytes_100x_fewer": figures["bytes_ratio"] >= 100,
        "churn_within_5pct_of_c": figures["churn_loss_ratio"] <= 1.05,
        "int8_within_1pct_of_fp16": abs(figures["int8_vs_fp16"] - 1) <= 0.01,
        "topk_within_3pct_of_b_at_1000x": figures["topk_loss_ratio"] <= 1.03
        and figures["topk_bytes_ratio"] >= 1000,
    }
    figures |= {f"loss_{name.lower()}": c["loss"] for name, c in configs.items()}
    figures |= {f"bytes_{name.lower()}": c["bytes_per_worker"] for name, c in configs.items()}
    figures |= {f"ttt_s_{name.lower()}": c["time_to_target_s"] for name, c in configs.items()}
    figures |= {
        "h_main": main_h,
        "c_best_loss": c_main["best_loss"],
        "params": params,
        "model": MODEL.to_dict(),
        "workers": args.workers,
        "batch": args.batch,
        "steps": args.steps,
        "samples_b": args.steps * args.workers * args.batch,
        "lr": args.lr,
        "outer_lr": args.outer_lr,
        "outer_momentum": args.outer_momentum,
        "warm_start": args.warm_start,
        "topk": args.topk,
        "topk_h": args.topk_h,
        "topk_outer_lr": args.topk_outer_lr,
        "fragments": args.fragments,
        "uplink_mbit": args.uplink_mbit,
        "latency_ms": args.latency_ms,
        "fog": f"{args.nodes}x{args.cores}",
        "runs": args.runs,
        "seed": args.seed,
        "configs": configs,
    }
    if args.runs > 1:
        figures["per_run"] = [{k: r[k] for k in headline} for r in runs]
    return figures


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"DiLoCo vs synchronous DP: {figures['params']:,} params, K={figures['workers']}, "
            f"{figures['steps']} steps x batch {figures['batch']}, "
            f"{figures['uplink_mbit']:g} Mbit/s + {figures['latency_ms']:g} ms a sync"
            + (f", median of {figures['runs']} runs" if figures["runs"] > 1 else "")
        )
    )
    for column in (
        "config", "val loss", "/ B", "MB a worker", "syncs", "ms a step",
        f"s to B's {figures['b_loss']:.3f}", "modelled s", "fog wall s",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "config" else "right")
    for name, c in figures["configs"].items():
        table.add_row(
            name,
            f"{c['loss']:.4f}",
            f"{c['loss_ratio']:.3f}",
            f"{c['bytes_per_worker'] / 1e6:.2f}",
            f"{c['syncs']}",
            f"{c['step_ms']:.1f}",
            _fmt(c["time_to_target_s"], ".1f"),
            f"{c['modelled_total_s']:.1f}",
            f"{c['wall_s']:.0f}",
        )
    console = Console(stderr=True, width=130)
    console.print(table)
    h = figures["h_main"]
    for goal, met in figures["goals"].items():
        console.print(f"  {goal}: {'met' if met else 'NOT met'}")
    console.print(
        f"  C H={h}: loss {figures[f'loss_ratio_h{h}']:.3f} of B, "
        f"{figures['bytes_ratio']:.1f}x fewer bytes; churn {figures['churn_loss_ratio']:.3f} "
        f"of C; int8 {figures['int8_vs_fp16']:.4f} of fp16"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=750, help="B's steps (750)")
    parser.add_argument("--h", type=int, nargs="+", default=[10, 50], help="H values (10 50)")
    parser.add_argument("--workers", type=int, default=4, help="K (4)")
    parser.add_argument("--batch", type=int, default=16, help="b, a worker's batch (16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW lr, all configs (3e-3)")
    parser.add_argument("--outer-lr", type=float, default=0.7, help="DiLoCo outer lr (0.7)")
    parser.add_argument("--outer-momentum", type=float, default=0.8, help="(0.8)")
    parser.add_argument("--absent-rate", type=float, default=0.25, help="E's churn (0.25)")
    parser.add_argument("--warm-start", type=int, default=150, help="shared warm start (150)")
    parser.add_argument("--topk", default="topk:0.05:2:0.9", help="T's codec (topk:0.05:2:0.9)")
    parser.add_argument("--topk-h", type=int, default=15, help="T's H (15)")
    parser.add_argument("--topk-outer-lr", type=float, default=1.5, help="T's outer lr (1.5)")
    parser.add_argument("--fragments", type=int, default=2, help="S's fragments (2)")
    parser.add_argument("--eval-every", type=int, default=10, help="A/B eval interval (10)")
    parser.add_argument("--val-windows", type=int, default=256, help="validation windows")
    parser.add_argument("--uplink-mbit", type=float, default=5.0, help="link model (5)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="per sync (50)")
    parser.add_argument("--nodes", type=int, default=2, help="local node agents (2)")
    parser.add_argument("--cores", type=int, default=2, help="slots per node (2)")
    parser.add_argument("--runs", type=int, default=1, help="seeds; medians reported (1)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (0)")
    parser.add_argument("--quick", action="store_true", help="100 steps (T at H=10): ~2 minutes")
    parser.add_argument(
        "--no-byzantine", dest="byzantine", action="store_false",
        help="skip the byzantine section: 1 of --byzantine-devices poisoning (diloco_byzantine.py)",
    )  # fmt: skip
    parser.add_argument("--byzantine-devices", type=int, default=10, help="(10)")
    parser.add_argument("--byzantine-attack", choices=POISONS, default="sign-flip")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 100
        args.topk_h = 10 if args.steps % args.topk_h else args.topk_h
    bad = [h for h in [*args.h, args.topk_h] if h < 1 or args.steps % h]
    if max(args.h) % args.fragments:
        parser.error(f"--fragments {args.fragments} does not divide H {max(args.h)}")
    if bad:
        parser.error(f"--steps {args.steps} is not a multiple of H {bad}")
    args.h = sorted(set(args.h))
    t0 = time.perf_counter()
    try:
        figures = measure(args)
        if args.byzantine:  # its own two fogs of single-slot devices, once, the first seed
            shards, _ = corpus.split_corpus(corpus.load_corpus(), args.workers)
            warm = warm_start(args, args.seed, b"".join(shards))  # the arms' own start
            initial = warm[0] if warm else None
            figures |= diloco_byzantine.bench_section(args, MODEL, initial)
            met = diloco_byzantine.goal_met(figures)
            figures["goals"]["byzantine_within_3pct_all_detected"] = met
    except BenchmarkFailed as e:
        progress(f"BENCHMARK FAILED: {e}")
        return 1
    figures["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    if not args.json:
        print_table(figures)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
