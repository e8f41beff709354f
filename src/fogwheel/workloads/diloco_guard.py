"""Byzantine-robust DiLoCo in the driver: audits, the held-out check, robust steps, undo.

What `diloco.Trainer` asks of it each round (the decisions are core/update_audit.py's):

1. `plan(r, present)`: which workers' round is an *audit*. An audited worker's task runs as a
   job of its own with two replicas (`replicas=2`, the coordinator's quorum) and a `fresh`
   spec: AdamW starts from zero moments, so the round is a pure function of the global
   weights, the shard and the seed (`diloco_math.inner_steps` is bitwise deterministic for
   them), and any honest device computes the same bytes. The task still asks for the
   worker's kept state (`keep_in`), so one copy goes to the device that ran the worker last:
   the one being checked; it keeps nothing (no `keep_out`), so that device's AdamW moments and
   error feedback are left as they were and the worker's next round carries on from them. The
   coordinator compares the copies and quarantines a device whose
   copy disagrees with the agreed one (store/verify.py, core/trust.py): the trust machinery
   that checks every other job, not a judgement of the driver's.
2. `judge`: every update that passed the format checks is scored on a held-out batch
   (Templar's Gauntlet): worker k's update applied alone to the global weights. Suspects are
   left out of this round's step and audited next round.
3. `step`: the outer step on a robust aggregate of what is left (`diloco_robust`), recorded
   in a ledger: round, worker, device, the delta's blob, whether a quorum verified it.
4. `undo`: a device the coordinator has quarantined since has its contributions after its
   last verified one taken out: the weights and the outer optimizer's state from before the
   first of them are loaded again and the outer steps from there are taken again without them
   (the others' deltas were computed from the weights of the time, so this is the outer step
   recomputed without the liar, not the run it would have been).

Known limits: a device can tell an audited task from its `fresh` flag (an audit cannot be
disguised while inner optimizer state stays on the devices), so a careful liar behaves in
audits; the held-out check and the robust aggregate are what bound it then. Audits need two
live devices of distinct owners besides the one checked when it lies (the quorum's third).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import wait
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from fogwheel.core import update_audit
from fogwheel.core.update_audit import Contribution, Suspect
from fogwheel.workloads import diloco_math, diloco_robust, transformer

if TYPE_CHECKING:
    from fogwheel.client import TaskOutput
    from fogwheel.workloads.diloco import Trainer

AUDIT_SALT = 104_729  # the audit draws' seed, apart from the churn draws' and the tasks'


def flatten(deltas: Sequence[Mapping[str, Tensor]], names: Sequence[str]) -> np.ndarray:
    """The deltas as the rows of one float64 matrix, tensors in `names` order."""
    return np.stack(
        [
            np.concatenate([d[n].detach().double().reshape(-1).numpy() for n in names])
            for d in deltas
        ]
    )


def unflatten(row: np.ndarray, shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """One row back into float32 tensors of `shapes` (in its order)."""
    out: dict[str, Tensor] = {}
    at = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) if len(shape) else 1
        out[name] = torch.from_numpy(row[at : at + size].astype(np.float32)).reshape(shape)
        at += size
    return out


def robust_mean(
    method: diloco_robust.Aggregate,
    deltas: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float],
    shapes: Mapping[str, torch.Size],
) -> dict[str, Tensor]:
    """The aggregate pseudo-gradient by `method` (the weighted mean for "mean")."""
    names = list(shapes)
    row = diloco_robust.aggregate(method, flatten(deltas, names), weights)
    return unflatten(row, shapes)


def outer_step(
    outer: Any,
    method: str,
    deltas: Sequence[tuple[Mapping[str, Tensor], float]],
    shapes: Mapping[str, torch.Size],
) -> None:
    """One outer step of `outer` (an `OuterOptimizer` or a `FragmentedOuter`) on the `method`
    aggregate of the `(delta, weight)` pairs, which are all for one fragment (or the whole
    model); none: no step."""
    if not deltas:
        return
    names = {n: shapes[n] for n in deltas[0][0]}  # the round's fragment, or all
    agg = robust_mean(
        method,  # type: ignore[arg-type]
        [d for d, _ in deltas],
        [w for _, w in deltas],
        names,
    )
    outer.step([agg], [1.0])


def plan_audits(
    seed: int, r: int, present: list[int], suspects: Sequence[int], rate: float
) -> list[int]:
    """The present workers audited in round `r`: never all of them (the round's own job needs
    one task; a seeded draw picks which one is spared). Drawn from the run's seed, so a
    resumed run draws the same."""
    from fogwheel.workloads.diloco import task_seed

    if len(present) < 2 or (rate == 0 and not suspects):
        return []
    rng = random.Random(task_seed(seed, r, AUDIT_SALT))
    draws = [rng.random() for _ in present]
    chosen = update_audit.audit_plan(present, suspects, rate, draws)
    if len(chosen) == len(present):
        chosen.pop(rng.randrange(len(chosen)))
    return chosen


def held_out_split(val: bytes, context: int) -> bytes:
    """The held-out check's text: the validation split offset by half a context, so that its
    windows lie between the evaluation's own (the whole split if it is too short)."""
    held_out = val[context // 2 :]
    return val if len(held_out) <= context + 1 else held_out


def held_out_suspects(
    global_state: Mapping[str, Tensor],
    config: transformer.ModelConfig,
    held_out: bytes,
    windows: int,
    updates: Sequence[tuple[int, Mapping[str, Tensor]]],
) -> list[Suspect]:
    """The suspects among `(worker, delta)` (Templar's Gauntlet): each update applied alone to
    `global_state` (that is the worker's local model), scored on `windows` windows of
    `held_out` against the global weights' own loss (`update_audit.judge_updates`)."""
    if not updates:
        return []
    base, losses = held_out_losses(global_state, config, held_out, windows, updates)
    verdicts = update_audit.judge_updates(base, losses)
    return [v for v in verdicts if isinstance(v, Suspect)]


def held_out_losses(
    global_state: Mapping[str, Tensor],
    config: transformer.ModelConfig,
    held_out: bytes,
    windows: int,
    updates: Sequence[tuple[int, Mapping[str, Tensor]]],
) -> tuple[float, list[tuple[int, float]]]:
    """The global weights' loss on the held-out windows, and each `(worker, delta)` update's
    applied alone: what `held_out_suspects` judges."""
    state = {k: v.detach().clone() for k, v in global_state.items()}
    base = diloco_math.evaluate(state, config, held_out, windows)
    losses = []
    for k, delta in updates:
        local = {n: v - delta[n].to(v.dtype) if n in delta else v for n, v in state.items()}
        losses.append((k, diloco_math.evaluate(local, config, held_out, windows)))
    return base, losses


class Guard:
    """The robust half of a `Trainer`: state in `run.robust` (a plain dict in run.json)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.cfg = trainer.cfg
        state = trainer.run.robust
        state.setdefault("ledger", [])  # Contribution fields + "delta" (blob) + "weight"
        state.setdefault("checkpoints", {})  # round -> weights and outer blobs before it
        state.setdefault("suspects", [])  # workers to audit next round
        state.setdefault("caught", [])  # devices whose contributions were taken out
        state.setdefault("audit_job", None)
        state.setdefault("audit_workers", [])
        state.setdefault("undone", 0)
        self.state = state
        self.gauntlet = (
            held_out_split(trainer.val, trainer.model_config.context)
            if self.cfg.gauntlet_windows
            else b""
        )

    # -- 1. audits ----------------------------------------------------------------------------

    def plan(self, r: int, present: list[int]) -> list[int]:
        """The present workers audited in round `r` (`plan_audits`, with this run's seed and
        rate and the suspects of the round before)."""
        return plan_audits(self.cfg.seed, r, present, self.state["suspects"], self.cfg.audit_rate)

    def gather_audits(self, futures: list[Any], deadline: float) -> dict[int, TaskOutput]:
        """The audits' agreed results by worker, waiting until `deadline`; the rest cancelled."""
        workers = self.state["audit_workers"]
        if not futures:
            return {}
        done, pending = wait(futures, timeout=max(1.0, deadline - time.monotonic()))
        out: dict[int, TaskOutput] = {}
        for i, f in enumerate(futures):
            if f in done:
                try:
                    out[workers[i]] = f.result()
                except Exception as e:  # no agreement in time, or too few devices
                    self.t._log(f"audit of worker {workers[i]} failed: {e}")
        if pending:
            with contextlib.suppress(Exception):
                self.t.client.cancel(futures[0].job_id)
        return out

    # -- 2. the held-out check ----------------------------------------------------------------

    def judge(self, updates: Sequence[tuple[int, Mapping[str, Tensor]]]) -> list[Suspect]:
        """Suspects among `(worker, delta)` by each update's effect on the held-out loss."""
        if not self.gauntlet or not updates:
            return []
        return held_out_suspects(
            self.t.model.state_dict(),
            self.t.model_config,
            self.gauntlet,
            self.cfg.gauntlet_windows,
            updates,
        )

    # -- 3. the step, and 4. undo -------------------------------------------------------------

    def finish(
        self,
        r: int,
        shapes: Mapping[str, torch.Size],
        kept: list[tuple[int, dict[str, Tensor], float, dict[str, Any]]],
        reported: list[int],
        job_id: int,
        verified: set[int],
    ) -> dict[str, int]:
        """Round `r`'s outer step from the updates that passed the format checks (`kept`):
        suspects judged, senders looked up, the step taken (or the undo); counts for the
        round's record."""
        self.shapes = dict(shapes)
        rejected = set(reported) - {k for k, *_ in kept}  # failed the format or norm checks
        judged = self.judge([(k, d) for k, d, *_ in kept if k not in verified])
        for s in judged:
            self.t._log(f"round {r}: worker {s.worker}'s update left out: {s.reason}")
        senders = self.nodes_of(job_id, self.t.run.workers_in_flight)
        audit_job = self.state.get("audit_job")
        if audit_job is not None:
            senders |= self.nodes_of(audit_job, self.state["audit_workers"])
        undone = self.state["undone"]
        self.step(r, kept, senders, {s.worker for s in judged} | rejected)
        return {
            "audited": len(verified),
            "suspected": len(judged),
            "undone": self.state["undone"] - undone,
        }

    def nodes_of(self, job_id: int, workers: list[int]) -> dict[int, list[tuple[str, bool]]]:
        """Who sent each worker's result: `(device, verified)` pairs; for an audit every
        device whose copy the quorum agreed with, verified."""
        out: dict[int, list[tuple[str, bool]]] = {}
        for t in self.t.client.tasks(job_id, limit=100):
            k = workers[t["index"]]
            agreed = [h["node_id"] for h in t["history"] if h["outcome"] == "agreed"]
            if agreed:
                out[k] = [(n, True) for n in dict.fromkeys(agreed)]
                continue
            accepted = [h["node_id"] for h in t["history"] if h["outcome"] == "accepted"]
            if accepted or t.get("node_id"):  # an unchecked result: its one sender
                out[k] = [(accepted[-1] if accepted else t["node_id"], False)]
        return out

    def step(
        self,
        r: int,
        kept: list[tuple[int, dict[str, Tensor], float, dict[str, Any]]],
        senders: Mapping[int, list[tuple[str, bool]]],
        suspects: set[int],
    ) -> None:
        """Record round `r`'s contributions and take its outer step (or, when a device has
        been caught since, the steps from before its first unverified contribution)."""
        t = self.t
        self.state["checkpoints"][str(r)] = {"weights": t.run.weights, "outer": t.run.outer}
        for k, _, weight, blob in kept:
            for node, verified in senders.get(k, [("?", False)]):
                c = Contribution(r, k, node, verified)
                self.state["ledger"].append(
                    {**asdict(c), "delta": blob, "weight": weight, "used": k not in suspects}
                )
        self.state["suspects"] = sorted(suspects)
        caught = self._newly_caught()
        used = {(e["round"], e["worker"], e["node"]) for e in self.state["ledger"] if e["used"]}
        undo = [
            c
            for c in update_audit.updates_to_undo(self._ledger(), frozenset(caught))
            if (c.round, c.worker, c.node) in used  # a suspect's update never went in
        ]
        start = update_audit.replay_from(undo)
        self.state["caught"] = sorted(set(self.state["caught"]) | caught)
        if start is None:
            deltas = [(d, w) for k, d, w, _ in kept if k not in suspects]
            self._outer_step(deltas)
            return
        for c in undo:
            for e in self.state["ledger"]:
                if (e["round"], e["worker"], e["node"]) == (c.round, c.worker, c.node):
                    e["used"] = False
        import copy

        from fogwheel.errors import NotFound

        weights_now = copy.deepcopy(t.model.state_dict())
        outer_now = t.outer.state_bytes()
        try:
            self._replay(start, r)
        except NotFound as e:
            t.model.load_state_dict(weights_now)  # as it was before the replay began
            t.outer.load_state_bytes(outer_now)
            # A checkpoint or an update the replay needs is gone from the coordinator: keep
            # the model as it is, and leave only this round's updates of the caught out.
            for c in undo:
                for e2 in self.state["ledger"]:
                    if (e2["round"], e2["worker"], e2["node"]) == (c.round, c.worker, c.node):
                        e2["used"] = True
            t._log(
                f"round {r}: could not take out earlier updates of quarantined "
                f"{', '.join(sorted(caught))} ({e}); this round's are left out"
            )
            deltas = [(d, w) for k, d, w, _ in kept if k not in suspects]
            self._outer_step(deltas)
            return
        self.state["undone"] += len(undo)
        t._log(
            f"round {r}: took out {len(undo)} update(s) of quarantined "
            f"{', '.join(sorted(caught))} (rounds {start + 1}..{r + 1} taken again)"
        )

    def _ledger(self) -> list[Contribution]:
        return [
            Contribution(e["round"], e["worker"], e["node"], e["verified"])
            for e in self.state["ledger"]
        ]

    def _newly_caught(self) -> set[str]:
        """Devices of this run's ledger that the coordinator has quarantined since."""
        mine = {e["node"] for e in self.state["ledger"]} - set(self.state["caught"])
        if not mine:
            return set()
        return {
            n["id"]
            for n in self.t.client.nodes()
            if n["state"] == "quarantined" and n["id"] in mine
        }

    def _outer_step(self, deltas: Sequence[tuple[dict[str, Tensor], float]]) -> None:
        outer_step(self.t.outer, self.cfg.aggregate, deltas, self.t.shapes)

    def _replay(self, start: int, last: int) -> None:
        """Load the state before round `start` and take rounds start..last's steps again
        with the contributions still in use."""
        from fogwheel.client import Blob
        from fogwheel.workloads import diloco_compress, diloco_fragments, transformer

        t = self.t
        before = self.state["checkpoints"][str(start)]
        state = transformer.state_from_bytes(t.client.fetch(Blob(**before["weights"])))
        t.model.load_state_dict(state)
        t.outer.load_state_bytes(t.client.fetch(Blob(**before["outer"])))
        for r in range(start, last + 1):
            names = t.groups[diloco_fragments.synced(r, self.cfg.fragments)]
            shapes = {n: t.shapes[n] for n in names}
            seen: set[int] = set()
            deltas = []
            for e in self.state["ledger"]:
                if e["round"] != r or not e["used"] or e["worker"] in seen:
                    continue
                seen.add(e["worker"])  # an audit's agreeing devices share one delta
                raw = t.client.fetch(Blob(**e["delta"]))
                deltas.append((diloco_compress.decode(raw, shapes), float(e["weight"])))
            self._outer_step(deltas)
