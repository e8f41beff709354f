"""Streaming DiLoCo: the model's parameters in F fragments, one fragment synchronised a round.

Streaming DiLoCo (Douillard et al. 2025, "Streaming DiLoCo with overlapping communication",
arXiv 2501.18512) cuts the parameters into F fragments and synchronises them in turn, H/F
inner steps apart, so that every fragment is still synchronised every H steps but no sync
moves the whole model: the peak bytes a worker sends at once fall by about F. On the fog a
round is one job: each task runs H/F inner steps and sends the pseudo-gradient of ONE
fragment, the one whose turn it is (`synced`). Between rounds a worker does not restart from
the global weights, as plain DiLoCo does; it keeps its own local weights on its node (kept
state, like AdamW's moments and the error feedback) and, at the start of its next task,
takes the global values of the fragments synchronised since it last ran (`stale`), replacing
its own (the paper's mixing factor alpha = 0). A worker whose kept state is gone (its node
vanished) starts from the global weights.

The outer step is DiLoCo's, one Nesterov optimizer a fragment (`FragmentedOuter`), each the
library's `OuterOptimizer` over that fragment's parameters, so that a fragment's momentum
moves only when that fragment is synchronised. Communication is not overlapped with compute
here: a round's job is a barrier (the driver's outer step comes between two rounds' tasks).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fogwheel.workloads.diloco_math import BadPseudoGradient, OuterOptimizer
from fogwheel.workloads.transformer import read_state, state_to_bytes

_OUTER_FORMAT = "fogwheel-outer-sgd-fragments-1"
_LOCAL_FORMAT = "fogwheel-local-weights-1"


def partition(shapes: Mapping[str, Sequence[int]], fragments: int) -> list[tuple[str, ...]]:
    """The tensors in `fragments` groups of near-equal element counts, each group's names sorted.

    Longest-processing-time first (Graham 1969): tensors from the largest down, each to the
    group that holds fewest elements so far (ties: the lowest index), names breaking ties, so
    every process computes the same partition. ValueError if there are fewer tensors than
    fragments.
    """
    if fragments < 1:
        raise ValueError(f"fragments must be at least 1, not {fragments}")
    if fragments > len(shapes):
        raise ValueError(f"{fragments} fragments for a model of {len(shapes)} tensors")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    groups: list[list[str]] = [[] for _ in range(fragments)]
    loads = [0] * fragments
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        lightest = min(range(fragments), key=lambda i: (loads[i], i))
        groups[lightest].append(name)
        loads[lightest] += sizes[name]
    return [tuple(sorted(g)) for g in groups]


def synced(rnd: int, fragments: int) -> int:
    """The fragment synchronised in round `rnd` (0-based): in turn."""
    return rnd % fragments


def stale(last: int | None, rnd: int, fragments: int) -> list[int]:
    """Fragments a worker that last ran round `last` must take from the global weights in `rnd`.

    Those synchronised in rounds last .. rnd - 1: the round it ran itself included, since its
    own pseudo-gradient of that round went into the outer step after its task ended. All of
    them if it never ran.
    """
    if last is None or rnd - last >= fragments:
        return list(range(fragments))
    return sorted({synced(r, fragments) for r in range(last, rnd)})


def local_to_bytes(local: Mapping[str, Tensor]) -> bytes:
    """A worker's own weights as its node keeps them between rounds."""
    return state_to_bytes({n: t.float() for n, t in local.items()}, {"format": _LOCAL_FORMAT})


def local_from_bytes(data: bytes, shapes: Mapping[str, Sequence[int]]) -> dict[str, Tensor] | None:
    """Kept local weights, or None if they are malformed, misshapen or not finite."""
    try:
        tensors, meta = read_state(data)
    except ValueError:
        return None
    expected = {n: tuple(s) for n, s in shapes.items()}
    if (
        meta.get("format") != _LOCAL_FORMAT
        or {n: tuple(t.shape) for n, t in tensors.items()} != expected
    ):
        return None
    if not all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values()):
        return None
    return tensors


def streaming_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker k's round of Streaming DiLoCo: H/F inner steps from its kept local weights (with
    the stale fragments refreshed from `weights`), the pseudo-gradient of fragment `send` out.
    """
    from fogwheel.workloads import diloco_compress, diloco_math, transformer

    config = transformer.ModelConfig.from_dict(spec["model"])
    global_state = transformer.state_from_bytes(Path("weights").read_bytes())
    shapes = {n: tuple(t.shape) for n, t in global_state.items()}
    keep = Path("keep")
    if spec.get("fresh"):  # an audit (diloco_guard): from public inputs only, as two devices
        shutil.rmtree(keep, ignore_errors=True)  # must compute the same bytes
    kept_adam, kept_local = keep / "adamw", keep / "local"
    kept_ef = keep / f"ef-{int(spec['fragment'])}"  # each fragment's own error feedback
    local = local_from_bytes(kept_local.read_bytes(), shapes) if kept_local.is_file() else None
    restored = local is not None
    if local is None:
        start = {n: t.float().clone() for n, t in global_state.items()}
    else:
        start = local
        for name in spec["merge"]:
            start[name] = global_state[name].float().clone()
    result = diloco_math.inner_steps(
        config,
        start,
        Path("shard").read_bytes(),
        spec["steps"],
        lr=spec["lr"],
        weight_decay=spec["weight_decay"],
        batch=spec["batch"],
        seed=spec["seed"],
        opt_state=kept_adam.read_bytes() if restored and kept_adam.is_file() else None,
        warmup_steps=spec["warmup_steps"],
    )
    after = {n: start[n] - result.delta[n] for n in start}  # result.delta = start - after
    names = spec["send"]
    delta = {n: global_state[n].float() - after[n] for n in names}
    codec = diloco_compress.parse_codec(spec["compression"])
    residual = None
    if restored and kept_ef.is_file():
        residual = diloco_compress.residual_from_bytes(
            kept_ef.read_bytes(), {n: shapes[n] for n in names}
        )
    encoded = diloco_compress.encode(delta, codec, residual)
    Path("delta").write_bytes(encoded.data)
    keep.mkdir(exist_ok=True)
    kept_adam.write_bytes(result.opt_state)
    kept_local.write_bytes(local_to_bytes(after))
    if encoded.residual is not None:
        kept_ef.write_bytes(diloco_compress.residual_to_bytes(encoded.residual))
    return {
        "loss": result.loss,
        "samples": result.samples,
        "restored": restored,
        "delta_bytes": len(encoded.data),
        "feedback": bool(residual),
    }


class _Subset(nn.Module):
    """Some of a model's parameters (the same Parameter objects) under index names."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"p{i}", p)


class FragmentedOuter:
    """One DiLoCo outer optimizer a fragment; `step` finds the fragment by the deltas' names.

    Same interface as `OuterOptimizer` (`step`, `state_bytes`, `load_state_bytes`, `steps`),
    so the driver takes its outer step the same way with or without fragments.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[Sequence[str]],
        lr: float = 0.7,
        momentum: float = 0.9,
        nesterov: bool = True,
    ) -> None:
        named = dict(model.named_parameters())
        self.groups = [tuple(g) for g in groups]
        self.outers = [
            OuterOptimizer(
                _Subset([named[n] for n in g]), lr=lr, momentum=momentum, nesterov=nesterov
            )
            for g in self.groups
        ]
        self.steps = 0

    def fragment_of(self, names: set[str]) -> int:
        for i, group in enumerate(self.groups):
            if set(group) == names:
                return i
        raise BadPseudoGradient(f"no fragment has exactly the names {sorted(names)[:3]}...")

    def step(
        self, deltas: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None
    ) -> None:
        """The outer step of the one fragment all `deltas` are for."""
        if not deltas:
            raise ValueError("an outer step needs at least one pseudo-gradient")
        i = self.fragment_of(set(deltas[0]))
        group = self.groups[i]
        renamed = []
        for delta in deltas:
            if set(delta) != set(group):
                raise BadPseudoGradient("the pseudo-gradients of one round are for one fragment")
            renamed.append({f"p{j}": delta[n] for j, n in enumerate(group)})
        self.outers[i].step(renamed, weights)
        self.steps += 1

    def state_bytes(self) -> bytes:
        """Every fragment's momentum buffers under the model's names, and the step counts."""
        buffers: dict[str, Tensor] = {}
        for group, outer in zip(self.groups, self.outers, strict=True):
            for j, name in enumerate(group):
                buf = outer.optimizer.state[outer.params[f"p{j}"]].get("momentum_buffer")
                if buf is not None:
                    buffers[f"momentum_buffer/{name}"] = buf
        steps = [o.steps for o in self.outers]
        return state_to_bytes(buffers, {"format": _OUTER_FORMAT, "steps": steps})

    def load_state_bytes(self, data: bytes) -> None:
        """Restore `state_bytes()` output; ValueError if it does not fit these fragments."""
        tensors, meta = read_state(data)
        steps = meta.get("steps")
        if (
            meta.get("format") != _OUTER_FORMAT
            or not isinstance(steps, list)
            or len(steps) != len(self.outers)
            or not all(isinstance(s, int) and s >= 0 for s in steps)
        ):
            raise ValueError(f"not a fragmented outer optimizer state: meta {meta!r}")
        where = {name: (i, j) for i, g in enumerate(self.groups) for j, name in enumerate(g)}
        for key, tensor in tensors.items():
            name = key.removeprefix("momentum_buffer/")
            if name not in where:
                raise ValueError(f"outer state holds {key!r}, which is no parameter")
            i, j = where[name]
            param = self.outers[i].params[f"p{j}"]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"outer state {key!r} does not fit its parameter")
        for outer in self.outers:
            outer.optimizer.state.clear()
        for key, tensor in tensors.items():
            i, j = where[key.removeprefix("momentum_buffer/")]
            param = self.outers[i].params[f"p{j}"]
            self.outers[i].optimizer.state[param]["momentum_buffer"] = tensor.float().clone()
        for outer, s in zip(self.outers, steps, strict=True):
            outer.steps = s
        self.steps = sum(steps)
