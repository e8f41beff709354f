"""Fault injection for tests and benchmarks: a node that lies, or a node that is slow.

Off unless the node's own environment sets `FOGWHEEL_FAULT`; nothing the coordinator sends
can turn it on.

- `wrong-results[:RATE]`: a wrong result is a valid pickle of a different value (a string
  naming this lie), so only a comparison with another node's result can expose it.
- `collude[:TAG]`: every successful result is replaced by one fixed wrong value (a string
  naming TAG), the same on every node that runs with the same TAG: colluding devices that
  agree with each other, for the collusion benchmark (bench/trust.py).
- `bad-outputs`: every output file of a successful task is replaced by a few garbage bytes
  (a corrupt pseudo-gradient, say), well-formed as a Value: only the reader can tell.
- `slow:FACTOR`: every task takes FACTOR times as long (the node holds its slot and its
  result for the extra time), a straggler for the backup-task benchmark.
- `poison:ATTACK`: a DiLoCo worker that returns a well-formed but poisoned pseudo-gradient
  (its output file `delta`), for the Byzantine-robust training tests and benchmark: ATTACK is
  `sign-flip` (the honest update negated), `scale` (times 100), `random` (Gaussian noise of
  the honest update's norm) or `other-data` (the honest computation on a `shard` input
  replaced by random bytes of its length: trained on other data).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "FOGWHEEL_FAULT"
POISONS = ("sign-flip", "scale", "random", "other-data")
POISON_SCALE = 100.0


class Faults:
    def __init__(self, spec: str | None = None) -> None:
        spec = spec if spec is not None else os.environ.get(ENV, "")
        kind, _, rate = spec.partition(":")
        self.wrong_rate = float(rate or 1.0) if kind == "wrong-results" else 0.0
        self.slow_factor = float(rate or 5.0) if kind == "slow" else 1.0
        self.bad_outputs = kind == "bad-outputs"
        self.collude_tag = (rate or "cartel") if kind == "collude" else None
        self.poison = rate if kind == "poison" else None
        if self.poison is not None and self.poison not in POISONS:
            raise ValueError(f"{ENV}=poison:ATTACK takes one of {', '.join(POISONS)}")
        self._rng = random.Random()

    @property
    def active(self) -> bool:
        return (
            self.wrong_rate > 0
            or self.slow_factor != 1.0
            or self.bad_outputs
            or self.collude_tag is not None
            or self.poison is not None
        )

    def describe(self) -> str:
        if self.poison is not None:
            return f"this node poisons its DiLoCo pseudo-gradients ({self.poison})"
        if self.bad_outputs:
            return "this node replaces its tasks' output files by garbage"
        if self.collude_tag is not None:
            return f"this node returns the same wrong result as every {self.collude_tag!r} node"
        if self.slow_factor != 1.0:
            return f"this node runs every task {self.slow_factor:g}x slower"
        return f"this node returns wrong results (rate {self.wrong_rate:g})"

    def slow_down(self, wall_s: float, stop: Callable[[], object]) -> None:
        """Hold on for (FACTOR - 1) times the task's wall time, unless `stop()` turns true."""
        until = time.monotonic() + (self.slow_factor - 1.0) * wall_s
        while self.slow_factor > 1.0 and time.monotonic() < until and not stop():
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))

    def swap_inputs(self, inputs: dict[str, Path], scratch: Path) -> dict[str, Path]:
        """`other-data`: a `shard` input replaced by random bytes of its length (a new file
        under `scratch`; the cached blob is left alone)."""
        if self.poison != "other-data" or "shard" not in inputs:
            return inputs
        size = inputs["shard"].stat().st_size
        fake = scratch / f"fault-shard-{size}"  # one a size, made once: nothing piles up
        if not fake.exists():
            scratch.mkdir(parents=True, exist_ok=True)
            tmp = scratch / f".{fake.name}.{self._rng.getrandbits(32):08x}"
            tmp.write_bytes(self._rng.randbytes(size))
            tmp.replace(fake)
        return {**inputs, "shard": fake}

    def poison_outputs(self, files: dict[str, Path]) -> None:
        """`sign-flip`, `scale`, `random`: rewrite a `delta` output file in place, in its own
        wire format, so that it stays well-formed (only its effect gives it away)."""
        path = files.get("delta")
        if self.poison not in ("sign-flip", "scale", "random") or path is None:
            return
        from fogwheel.workloads import diloco_math, transformer

        tensors, meta = transformer.read_state(path.read_bytes())
        shapes = {name: t.shape for name, t in tensors.items()}
        delta = diloco_math.decompress(path.read_bytes(), shapes)
        bad = poison_delta(delta, self.poison, self._rng.getrandbits(63))
        path.write_bytes(diloco_math.compress(bad, meta["mode"]))

    def tamper(self, report: dict[str, Any]) -> dict[str, Any]:
        """Replace a successful result by a wrong one, at the configured rate."""
        if self.bad_outputs and report.get("ok") and report.get("outputs"):
            junk = b"FWT1\xff\xff" + self._rng.randbytes(10)
            garbage = {
                "sha": hashlib.sha256(junk).hexdigest(),
                "size": len(junk),
                "data": base64.b64encode(junk).decode(),
            }
            return {**report, "outputs": dict.fromkeys(report["outputs"], garbage)}
        if self.collude_tag is not None and report.get("ok"):
            lie = pickle.dumps(f"the {self.collude_tag} answer")
            return {**report, "value": _inline(lie)}
        if not report.get("ok") or self._rng.random() >= self.wrong_rate:
            return report
        lie = pickle.dumps(f"wrong result {self._rng.getrandbits(64):016x}")
        value = {
            "sha": hashlib.sha256(lie).hexdigest(),
            "size": len(lie),
            "data": base64.b64encode(lie).decode(),
        }
        return {**report, "value": value}


def poison_delta(delta: dict[str, Any], attack: str, seed: int) -> dict[str, Any]:
    """A pseudo-gradient (name -> float tensor) poisoned by `attack`: `sign-flip`, `scale` (x
    POISON_SCALE) or `random` (Gaussian noise of its global norm, from `seed`). Shared by the
    node's fault and the in-process benchmark of the aggregates (bench/diloco_aggregates.py)."""
    if attack == "sign-flip":
        return {k: -v for k, v in delta.items()}
    if attack == "scale":
        return {k: v * POISON_SCALE for k, v in delta.items()}
    if attack != "random":
        raise ValueError(f"{attack!r} is not a pseudo-gradient poison")
    import torch

    from fogwheel.workloads import diloco_math

    gen = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(v.shape, generator=gen) for k, v in delta.items()}
    ratio = diloco_math.global_norm(delta) / max(diloco_math.global_norm(noise), 1e-30)
    return {k: v * ratio for k, v in noise.items()}


def _inline(data: bytes) -> dict[str, Any]:
    return {
        "sha": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "data": base64.b64encode(data).decode(),
    }
