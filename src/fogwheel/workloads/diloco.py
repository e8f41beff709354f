"""DiLoCo on the fog: rounds of inner training as tasks, the outer step in the driver.

Each round is one job of K Python tasks, one a worker. Task k reads the global weights (a blob
the driver uploads once a round; the nodes fetch it) and worker k's shard (uploaded once a
run, cached by the nodes that read it), runs H AdamW steps (`diloco_math.inner_steps`) and
writes its pseudo-gradient, compressed (fp16 by default, int8 or fp32), as the output file
`delta`. The inner optimizer's state never leaves the node: the task keeps it in its `keep/`
directory under the key `RUN/wK/rR` (`TaskIn.keep_out`), and worker k's next task asks for it
(`keep_in`), so placement waits a few seconds for the node that holds it; a task that lands
elsewhere (the node vanished) restarts AdamW cleanly from the global weights.

The driver takes the outer step (Nesterov SGD, lr 0.7, momentum 0.9) as soon as
`min_workers` of the K pseudo-gradients are in, or when the round's deadline passes with at
least one: stragglers and vanished nodes do not stall training. Pseudo-gradients that come
later are dropped (their tasks are cancelled), and counted. Every pseudo-gradient is decoded
without pickle, checked for the model's names and shapes, finiteness and a sane norm; a bad
one is rejected, never averaged in.

After each round the global weights and the outer optimizer's momentum are uploaded as blobs
and a small manifest (`run.json`) is written to the run directory, atomically; `resume` picks
the run up from there, after the driver, the coordinator or every node was killed (a round in
flight is re-attached to, not run twice). Seeds are derived from the run's seed, the round and
the worker, so a resumed run computes the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fogwheel.client import Blob, Client, TaskOutput

MANIFEST = "run.json"
TASK_MEMORY_MB = 1536  # address space: importing torch alone maps about 600 MB
MAX_DELTA_NORM = 1e3  # a pseudo-gradient larger than this is garbage, not learning


@dataclass
class TrainConfig:
    """A DiLoCo run. `model` is a `ModelConfig.to_dict()`."""

    model: dict[str, Any]
    workers: int = 4
    rounds: int = 10
    inner_steps: int = 50
    batch: int = 16
    inner_lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 0
    outer_lr: float = 0.7
    # None: 0.9, or 0 with top-k, whose error feedback is the momentum (SparseLoCo: with both,
    # the kept residual is pushed twice and training diverges)
    outer_momentum: float | None = None
    outer_nesterov: bool = True
    compression: str = "fp16"  # none (fp32), fp16, int8 or topk:DENSITY:BITS (diloco_compress)
    fragments: int = 1  # Streaming DiLoCo: F fragments, one synced a round (diloco_fragments)
    min_workers: int | None = None  # default: all K
    round_timeout: float = 600.0  # seconds after which the round closes with what it has
    seed: int = 0
    val_windows: int = 64
    absent_rate: float = 0.0  # simulated churn: each worker sits a round out with this chance
    aggregate: str = "centered-clip"  # mean | centered-clip | trimmed-mean | median
    audit_rate: float = 0.1  # a worker's round recomputed on a second device (diloco_guard)
    gauntlet_windows: int = 32  # held-out windows scoring each update (0: no such check)
    # One worker a device: worker k's first task needs the capability f"{pin}{k}" (devices
    # started with `fogwheel node --capability {pin}{k}`), and its kept state holds it there
    # from then on (placement's sticky wait). None: any device, and a fast one may take two.
    pin: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.rounds < 1 or self.inner_steps < 1 or self.batch < 1:
            raise ValueError("workers, rounds, inner steps and batch must each be at least 1")
        from fogwheel.workloads.diloco_compress import parse_codec

        codec = parse_codec(self.compression)  # ValueError says what is valid
        self.compression = str(codec)
        if self.outer_momentum is None:
            self.outer_momentum = 0.0 if codec.feedback else 0.9
        if self.fragments < 1 or self.inner_steps % self.fragments:
            raise ValueError(
                f"fragments ({self.fragments}) must be at least 1 and divide the inner steps "
                f"({self.inner_steps}): each round runs inner steps / fragments"
            )
        if self.min_workers is not None and not 1 <= self.min_workers <= self.workers:
            raise ValueError(f"min workers must be between 1 and {self.workers}")
        if not 0.0 <= self.absent_rate < 1.0:
            raise ValueError(f"the absent rate must be in [0, 1), not {self.absent_rate}")
        from fogwheel.workloads.diloco_robust import AGGREGATES

        if self.aggregate not in AGGREGATES or not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError(
                f"aggregate must be one of {', '.join(AGGREGATES)} (not {self.aggregate!r}) "
                f"and the audit rate in [0, 1] (not {self.audit_rate})"
            )
        if self.gauntlet_windows < 0:
            raise ValueError(f"gauntlet windows must be >= 0, not {self.gauntlet_windows}")
        if self.pin is not None and (
            not self.pin or len(self.pin) > 180 or any(c.isspace() or c == "\0" for c in self.pin)
        ):
            raise ValueError(
                f"pin must be a capability prefix of 1-180 characters without spaces, not "
                f"{self.pin!r} (worker k then needs the capability {{pin}}k, e.g. diloco-w0)"
            )

    def present(self, rnd: int) -> list[int]:
        """The workers that take part in round `rnd` (all, unless churn is simulated); at
        least one. Drawn from the run's seed, so a resumed run draws the same."""
        if self.absent_rate == 0:
            return list(range(self.workers))
        import random

        rng = random.Random(task_seed(self.seed, rnd, 7919))
        here = [k for k in range(self.workers) if rng.random() >= self.absent_rate]
        return here or [rng.randrange(self.workers)]

    @property
    def momentum(self) -> float:
        """The outer momentum, resolved (`outer_momentum` None means the codec's default)."""
        assert self.outer_momentum is not None  # set by __post_init__
        return self.outer_momentum

    @property
    def needed(self) -> int:
        return self.min_workers or self.workers


@dataclass
class RoundRecord:
    round: int
    train_loss: float
    val_loss: float
    reported: int
    dropped: int  # pseudo-gradients that came too late (their tasks were cancelled)
    rejected: int  # pseudo-gradients that failed the checks
    restarted: int  # workers whose inner optimizer state was not there (a new node)
    bytes_up: int  # pseudo-gradient bytes sent by the workers this round
    seconds: float
    job_id: int
    weights_sha: str = ""  # the global weights after this round
    bytes_up_max: int = 0  # the largest one pseudo-gradient of the round (a sync's peak)
    audited: int = 0  # workers whose round a quorum of devices recomputed (diloco_guard)
    suspected: int = 0  # updates left out by the held-out check (audited next round)
    undone: int = 0  # updates of devices caught lying taken out of the model this round


@dataclass
class Run:
    """The durable state of a run, as `run.json` holds it."""

    run_id: str
    config: TrainConfig
    round: int = 0  # rounds completed
    weights: dict[str, Any] | None = None  # Blob of the global weights after `round`
    outer: dict[str, Any] | None = None  # Blob of the outer optimizer's state
    shards: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int | None = None  # job id of the round being run
    submitting: str | None = None  # client token of a round being submitted (idempotent)
    workers_in_flight: list[int] = field(default_factory=list)  # its workers, in task order
    last_round: dict[str, int] = field(default_factory=dict)  # worker -> round of its kept state
    history: list[RoundRecord] = field(default_factory=list)
    bytes_per_worker: dict[str, int] = field(default_factory=dict)
    initial_val_loss: float | None = None  # of the initial weights
    robust: dict[str, Any] = field(default_factory=dict)  # audits and ledger (diloco_guard)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{MANIFEST}.tmp"
        body = asdict(self)
        tmp.write_text(json.dumps(body, indent=1))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(directory / MANIFEST)

    @classmethod
    def load(cls, directory: Path) -> Run:
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no training run in {directory} (no {MANIFEST})")
        body = json.loads(path.read_text())
        body["config"] = TrainConfig(**body["config"])
        body["history"] = [RoundRecord(**h) for h in body["history"]]
        return cls(**body)


def _blob(d: dict[str, Any]) -> Blob:
    return Blob(d["sha"], d["size"])


def _ref(b: Blob) -> dict[str, Any]:
    return {"sha": b.sha, "size": b.size}


# -- what runs on the nodes -------------------------------------------------------------------


def inner_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker k's H inner steps: `weights` and `shard` in, `delta` out, AdamW kept in keep/."""
    from fogwheel.workloads import diloco_math, transformer

    config = transformer.ModelConfig.from_dict(spec["model"])
    global_state = transformer.state_from_bytes(Path("weights").read_bytes())
    if spec.get("fresh"):  # an audit: from public inputs only, so that another device agrees
        shutil.rmtree("keep", ignore_errors=True)
    kept = Path("keep") / "adamw"
    opt_state = kept.read_bytes() if kept.is_file() else None
    result = diloco_math.inner_steps(
        config,
        global_state,
        Path("shard").read_bytes(),
        spec["steps"],
        lr=spec["lr"],
        weight_decay=spec["weight_decay"],
        batch=spec["batch"],
        seed=spec["seed"],
        opt_state=opt_state,
        warmup_steps=spec["warmup_steps"],
    )
    delta, feedback = _encode_with_feedback(result.delta, spec["compression"], Path("keep") / "ef")
    Path("delta").write_bytes(delta)
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(result.opt_state)
    return {
        "loss": result.loss,
        "samples": result.samples,
        "restored": opt_state is not None,
        "delta_bytes": len(delta),
        "feedback": feedback,  # top-k: its kept error feedback was there and added in
    }


def _encode_with_feedback(
    delta: dict[str, Any], compression: str, kept: Path
) -> tuple[bytes, bool]:
    """The pseudo-gradient's bytes, and whether the error feedback kept in `kept` (top-k
    only) was there and added in; the new feedback is left there for the next round."""
    from fogwheel.workloads import diloco_compress

    shapes = {n: tuple(t.shape) for n, t in delta.items()}
    residual = (
        diloco_compress.residual_from_bytes(kept.read_bytes(), shapes) if kept.is_file() else None
    )
    encoded = diloco_compress.encode(delta, diloco_compress.parse_codec(compression), residual)
    if encoded.residual is not None:
        kept.parent.mkdir(exist_ok=True)
        kept.write_bytes(diloco_compress.residual_to_bytes(encoded.residual))
    return encoded.data, bool(residual)


def task_seed(seed: int, rnd: int, worker: int) -> int:
    return (seed * 1_000_003 + rnd * 1009 + worker) % (2**31)


def task_spec(
    cfg: TrainConfig,
    groups: list[tuple[str, ...]],
    r: int,
    k: int,
    last_ran: int | None,
    audit: bool = False,
) -> dict[str, Any]:
    """Worker k's task spec for round `r` (`inner_task`'s, or with fragments
    `streaming_task`'s); `last_ran` is the round it last ran, None if never. The driver
    submits it; bench/diloco_sweep.py runs it in process."""
    from fogwheel.workloads import diloco_fragments

    spec: dict[str, Any] = {
        "model": cfg.model,
        "steps": cfg.inner_steps // cfg.fragments,
        "lr": cfg.inner_lr,
        "weight_decay": cfg.weight_decay,
        "batch": cfg.batch,
        "seed": task_seed(cfg.seed, r, k),
        "warmup_steps": cfg.warmup_steps,
        "compression": cfg.compression,
    }
    if cfg.fragments > 1:
        fragment = diloco_fragments.synced(r, cfg.fragments)
        stale = diloco_fragments.stale(last_ran, r, cfg.fragments)
        spec["fragment"] = fragment
        spec["send"] = list(groups[fragment])
        spec["merge"] = [n for i in stale for n in groups[i]]
    if audit:  # recomputed on two devices from public inputs (diloco_guard)
        spec["fresh"] = True
    return spec


# -- the driver -------------------------------------------------------------------------------

Progress = Callable[[RoundRecord, Run], None]


class Trainer:
    """Drives a run: `Trainer.start(client, config, directory)` or `Trainer.resume(...)`,
    then `train()`."""

    def __init__(self, client: Client, run: Run, directory: Path) -> None:
        from fogwheel.workloads import corpus, diloco_fragments, diloco_math, transformer

        self.client = client
        self.run = run
        self.dir = directory
        self.cfg = run.config
        self.model_config = transformer.ModelConfig.from_dict(self.cfg.model)
        data = corpus.load_corpus()
        shards, self.val = corpus.split_corpus(data, self.cfg.workers)
        if not run.shards:
            run.shards = [_ref(client.put_blob(s, upload=True)) for s in shards]  # read every round
        if run.weights is None:
            model = transformer.build(self.model_config, self.cfg.seed)
        else:
            state = transformer.state_from_bytes(client.fetch(_blob(run.weights)))
            model = transformer.from_state(self.model_config, state)
        self.model = model
        self.shapes = {k: v.shape for k, v in model.state_dict().items()}
        self.groups = diloco_fragments.partition(self.shapes, self.cfg.fragments)
        self.outer: Any = (
            diloco_math.OuterOptimizer(
                model,
                lr=self.cfg.outer_lr,
                momentum=self.cfg.momentum,
                nesterov=self.cfg.outer_nesterov,
            )
            if self.cfg.fragments == 1
            else diloco_fragments.FragmentedOuter(
                model,
                self.groups,
                lr=self.cfg.outer_lr,
                momentum=self.cfg.momentum,
                nesterov=self.cfg.outer_nesterov,
            )
        )
        if run.outer is not None:
            self.outer.load_state_bytes(client.fetch(_blob(run.outer)))
        self.initial_val = (
            diloco_math.evaluate(model, self.model_config, self.val, self.cfg.val_windows)
            if not run.history
            else None
        )
        from fogwheel.workloads.diloco_guard import Guard

        self.guard = Guard(self)  # audits, the held-out check, robust steps, undo

    @classmethod
    def start(
        cls, client: Client, config: TrainConfig, directory: Path, initial: Any = None
    ) -> Trainer:
        """A new run; from the weights `initial` (a state dict: a warm start) if given, else
        from the model built from the run's seed."""
        if (directory / MANIFEST).exists():
            raise FileExistsError(f"{directory} already holds a run: resume it or pick another")
        run = Run(run_id=uuid.uuid4().hex[:12], config=config)
        if initial is not None:
            from fogwheel.workloads import transformer

            run.weights = _ref(client.put_blob(transformer.state_to_bytes(initial), upload=True))
        trainer = cls(client, run, directory)
        run.initial_val_loss = trainer.initial_val
        trainer._checkpoint()
        return trainer

    @classmethod
    def resume(cls, client: Client, directory: Path) -> Trainer:
        return cls(client, Run.load(directory), directory)

    # -- rounds -------------------------------------------------------------------------------

    def train(self, progress: Progress | None = None) -> Run:
        while self.run.round < self.cfg.rounds:
            record = self.round()
            if progress:
                progress(record, self.run)
        return self.run

    def round(self) -> RoundRecord:
        from fogwheel.workloads import diloco_compress, diloco_fragments, diloco_math

        r = self.run.round
        sent = self.groups[diloco_fragments.synced(r, self.cfg.fragments)]
        shapes = {n: self.shapes[n] for n in sent}  # the fragment whose turn it is, or all
        t0 = time.monotonic()
        audit_job = self.run.robust.get("audit_job")
        if self.run.in_flight is not None:
            job_id = self.run.in_flight
            futures = self.client.attach(job_id, outputs=["delta"])
            audits = [] if audit_job is None else self.client.attach(audit_job, outputs=["delta"])
        else:
            # The token is saved before the job is submitted: a driver killed between the two
            # submits again with it after --resume and gets the same job back, never a twin
            # whose tasks would find the kept state already moved on.
            if self.run.submitting is None:
                present = self.cfg.present(r)
                audited = self.guard.plan(r, present)  # these run as a job of their own
                self.run.robust["audit_workers"] = audited
                self.run.workers_in_flight = [k for k in present if k not in audited]
                self.run.submitting = uuid.uuid4().hex
                self.run.save(self.dir)
            futures = self._submit(r, self.run.workers_in_flight, self.run.submitting)
            audited, token = self.run.robust["audit_workers"], f"{self.run.submitting}-audit"
            audits = self._submit(r, audited, token, audit=True) if audited else []
            placed = futures[0].job_id
            assert placed is not None  # submit_many places every task before it returns
            job_id = self.run.in_flight = placed
            self.run.robust["audit_job"] = audits[0].job_id if audits else None
            self.run.submitting = None
            self.run.save(self.dir)
        who = self.run.workers_in_flight
        results = {who[i]: out for i, out in self._gather(futures, t0, len(who)).items()}
        verified = self.guard.gather_audits(audits, t0 + self.cfg.round_timeout)
        results |= verified
        who = who + self.run.robust["audit_workers"]
        kept_updates = []  # (worker, delta, samples, its blob) for the guard's ledger
        deltas, weights, losses = [], [], []
        rejected = restarted = up = peak = 0
        for k, out in sorted(results.items()):  # worker order: the sum is the same every run
            try:
                raw = self.client.fetch(out.files["delta"])
                up += len(raw)  # sent, whatever becomes of it
                peak = max(peak, len(raw))
                key = f"w{k}"
                self.run.bytes_per_worker[key] = self.run.bytes_per_worker.get(key, 0) + len(raw)
                delta = diloco_compress.decode(raw, shapes, self.cfg.compression)
                diloco_math.check_norm(delta, MAX_DELTA_NORM)
            except (ValueError, KeyError) as e:  # BadPseudoGradient is a ValueError
                rejected += 1
                self._log(f"round {r}: worker {k}'s pseudo-gradient rejected: {e}")
                continue
            deltas.append(delta)
            weights.append(float(out.value["samples"]))
            kept_updates.append((k, delta, weights[-1], self._durable(out.files["delta"], raw)))
            losses.append(float(out.value["loss"]))
            ran_before = f"w{k}" in self.run.last_round
            fresh = k in verified  # an audit starts AdamW afresh on purpose
            restarted += 1 if ran_before and not out.value.get("restored") and not fresh else 0
        for k in results:
            if k not in verified:  # an audited worker's kept state is still its last round's
                self.run.last_round[f"w{k}"] = r
        counts = self.guard.finish(r, shapes, kept_updates, sorted(results), job_id, set(verified))
        val = diloco_math.evaluate(self.model, self.model_config, self.val, self.cfg.val_windows)
        saved = self._save_state()
        record = RoundRecord(
            round=r + 1,
            train_loss=sum(losses) / len(losses) if losses else float("nan"),
            val_loss=val,
            reported=len(results),
            dropped=len(who) - len(results),
            rejected=rejected,
            restarted=restarted,
            bytes_up=up,
            seconds=time.monotonic() - t0,
            job_id=job_id,
            weights_sha=saved["sha"],
            bytes_up_max=peak,
            **counts,
        )
        self.run.history.append(record)
        self.run.round = r + 1
        self.run.in_flight = None
        self.run.robust["audit_job"] = None
        self._checkpoint()
        return record

    def _submit(self, r: int, workers: list[int], token: str, audit: bool = False) -> list[Any]:
        from fogwheel.workloads import diloco_fragments, transformer

        cfg = self.cfg
        streaming = cfg.fragments > 1
        weights = self.client.put_blob(transformer.state_to_bytes(self.model.state_dict()))
        calls: list[tuple[tuple[dict[str, Any]], dict[str, Any]]] = []
        inputs, keep, needs = [], [], []
        for k in workers:
            last_ran = self.run.last_round.get(f"w{k}")
            calls.append(((task_spec(cfg, self.groups, r, k, last_ran, audit),), {}))
            inputs.append({"weights": weights, "shard": _blob(self.run.shards[k])})
            prev = f"{self.run.run_id}/w{k}/r{last_ran}" if last_ran is not None else None
            # An audit asks for the worker's kept state, so that one copy runs on the device
            # being checked, but keeps nothing: the device's AdamW moments and error feedback
            # stay as they were and carry on in the worker's next round (a fresh audit wiping
            # them cost top-k 2.6 % of the loss: docs/training.md).
            keep.append((prev, None if audit else f"{self.run.run_id}/w{k}/r{r}"))
            # A worker's first task goes to its own device (cfg.pin); later ones follow the
            # kept state. Never an audit's: its second copy must run on another device.
            pinned = cfg.pin is not None and last_ran is None and not audit
            needs.append([f"{cfg.pin}{k}"] if pinned else [])
        return self.client.submit_many(
            diloco_fragments.streaming_task if streaming else inner_task,
            calls,
            name=f"train {self.run.run_id} round {r + 1}" + (" audit" if audit else ""),
            inputs=inputs,
            outputs=["delta"],
            keep=keep,
            needs=needs if any(needs) else None,
            # workers' results differ by design: checked by decompress/check_norm; an audit
            # is a pure function of its inputs, so two devices must agree (diloco_guard)
            replicas=2 if audit else 1,
            backups=False,  # a backup would restart AdamW elsewhere: the deadline handles it
            memory_mb=TASK_MEMORY_MB,
            wall_s=max(60.0, self.cfg.round_timeout * 2),
            max_attempts=2,
            client_token=token,
        )

    def _gather(self, futures: list[Any], t0: float, present: int) -> dict[int, TaskOutput]:
        """Results until `min_workers` (of those present) are in, or the deadline passes with
        at least one; keyed by task index."""
        results: dict[int, TaskOutput] = {}
        pending = set(futures)
        index = {f: i for i, f in enumerate(futures)}
        deadline = t0 + self.cfg.round_timeout
        while pending and len(results) < min(self.cfg.needed, present):
            left = deadline - time.monotonic()
            if left <= 0 and results:
                break
            done, pending = wait(pending, timeout=max(left, 1.0), return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    results[index[f]] = f.result()
                except Exception as e:  # the task failed for good: the round goes on without it
                    self._log(f"worker {index[f]} failed this round: {e}")
            if not pending and not results:
                raise RuntimeError("every worker of the round failed; see `fogwheel jobs`")
        if pending:
            with contextlib.suppress(Exception):
                self.client.cancel(futures[0].job_id)  # late pseudo-gradients are dropped
        return results

    def _checkpoint(self) -> None:
        if self.run.weights is None:
            self._save_state()
        self.run.save(self.dir)

    def _durable(self, blob: Blob, raw: bytes) -> dict[str, Any]:
        """A pseudo-gradient's blob as the guard's ledger keeps it (sha and size), fetchable
        later by those alone: a small output file travels inline in its task's result and the
        coordinator keeps no copy of it, so such a one is uploaded (the undo reads it again)."""
        if blob.data is not None:
            blob = self.client.put_blob(raw, upload=True)
        return _ref(blob)

    def _save_state(self) -> dict[str, Any]:
        """The global weights and the outer optimizer's state as blobs in `run` (the
        weights' returned). Uploaded
        even when small enough to travel inline: run.json keeps only their sha and size, and
        `resume` and the guard's undo (which loads an earlier round's) fetch them by that."""
        from fogwheel.workloads import transformer

        state = transformer.state_to_bytes(self.model.state_dict())
        self.run.weights = _ref(self.client.put_blob(state, upload=True))
        self.run.outer = _ref(self.client.put_blob(self.outer.state_bytes(), upload=True))
        return self.run.weights

    def _log(self, message: str) -> None:
        with open(self.dir / "train.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    # -- what the user sees at the end --------------------------------------------------------

    def write_report(self, sample_prompt: bytes = b"The ") -> dict[str, Any]:
        """loss.csv, loss.png (when matplotlib is there) and a text sample, in the run dir."""
        from fogwheel.workloads import transformer

        rows = self.run.history
        with open(self.dir / "loss.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["round", "train_loss", "val_loss", "reported", "dropped", "bytes_up"])
            for h in rows:
                w.writerow([h.round, h.train_loss, h.val_loss, h.reported, h.dropped, h.bytes_up])
        png = None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([h.round for h in rows], [h.train_loss for h in rows], label="train")
            first = [(0, self.run.initial_val_loss)] if self.run.initial_val_loss else []
            val = first + [(h.round, h.val_loss) for h in rows]
            ax.plot([r for r, _ in val], [v for _, v in val], label="validation")
            ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
            ax.set_xlabel("round")
            ax.set_ylabel("loss (nats per byte)")
            ax.set_title(f"DiLoCo, {self.cfg.workers} workers, H={self.cfg.inner_steps}")
            ax.legend()
            fig.tight_layout()
            png = self.dir / "loss.png"
            fig.savefig(png, dpi=100)
            plt.close(fig)
        except ImportError:
            pass
        sample = transformer.generate(self.model, sample_prompt, 200, seed=self.cfg.seed)
        (self.dir / "sample.txt").write_bytes(sample)
        return {
            "csv": str(self.dir / "loss.csv"),
            "png": str(png) if png else None,
            "sample": sample.decode("utf-8", "replace"),
        }
