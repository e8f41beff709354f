"""The numeric core of a DiLoCo round, as pure functions over tensors and bytes.

DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language
Models", arXiv:2311.08105) trains one model on k workers that talk once every H steps: each
worker runs H steps of AdamW from the global weights on its own shard (`inner_steps`), sends
its pseudo-gradient, global - local (`compress`), and the coordinator averages the
pseudo-gradients and takes one Nesterov-momentum SGD step with them (`OuterOptimizer`; the
paper's lr 0.7, momentum 0.9). OpenDiLoCo (Jaghouar et al. 2024) and INTELLECT-1 send the
pseudo-gradients in fp16 or int8; on the fog they come from untrusted volunteers, so
`decompress` and `check_norm` reject malformed or absurd ones before they are averaged in.

Nothing here does I/O or reads the clock; the driver runs `inner_steps` as a fog task and
the outer step on the coordinator's side. Everything that crosses the wire is bytes in the
`state_to_bytes` layout, never pickle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from fogwheel.workloads.corpus import eval_windows, sample_batch
from fogwheel.workloads.transformer import (
    ModelConfig,
    Transformer,
    from_state,
    read_state,
    state_to_bytes,
)

Compression = Literal["fp32", "fp16", "int8"]
ADAM_BETAS = (0.9, 0.95)
_ADAM_FORMAT = "fogwheel-adamw-1"
_DELTA_FORMAT = "fogwheel-delta-1"
_OUTER_FORMAT = "fogwheel-outer-sgd-1"
_MOMENTS = ("exp_avg", "exp_avg_sq")
_WIRE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}


class BadPseudoGradient(ValueError):
    """A worker's pseudo-gradient is malformed, misshapen, not finite or absurdly large."""


@dataclass(frozen=True)
class InnerResult:
    """What one worker's H inner steps produce.

    `delta` is the pseudo-gradient (global - local, float32); `opt_state` the AdamW moments
    and step count to continue from next round; `loss` the mean training loss of the steps;
    `samples` the windows seen (a weight for the outer average); `step` AdamW's step count.
    """

    delta: dict[str, Tensor]
    opt_state: bytes
    loss: float
    samples: int
    step: int


@contextmanager
def _single_thread_seeded(seed: int) -> Iterator[None]:
    """One intra-op thread and a seeded global RNG, both restored afterwards.

    One thread makes the float sums independent of the machine's core count; the forked RNG
    makes dropout repeatable without disturbing the caller's.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _adamw(model: Transformer, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no decay on the norm gains (1-D parameters), as is usual for Transformers."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=ADAM_BETAS)


def _adam_state_to_bytes(model: Transformer, optimizer: torch.optim.AdamW, step: int) -> bytes:
    tensors: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        tensors[f"exp_avg/{name}"] = state["exp_avg"]
        tensors[f"exp_avg_sq/{name}"] = state["exp_avg_sq"]
    return state_to_bytes(tensors, {"format": _ADAM_FORMAT, "step": step})


def _load_adam_state(model: Transformer, optimizer: torch.optim.AdamW, data: bytes) -> int:
    """Continue from `data` if it fits the model's parameters; the step count, or 0 if not.

    A state for another model shape starts AdamW afresh; malformed bytes raise ValueError.
    """
    tensors, meta = read_state(data)
    step = meta.get("step")
    if meta.get("format") != _ADAM_FORMAT or not isinstance(step, int) or step < 0:
        raise ValueError(f"not an AdamW state: meta {meta!r}")
    named = dict(model.named_parameters())
    expected = {f"{kind}/{name}": p.shape for name, p in named.items() for kind in _MOMENTS}
    if {k: t.shape for k, t in tensors.items()} != expected or step == 0:
        return 0
    if not all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values()):
        raise ValueError("AdamW state holds non-float32 or non-finite moments")
    ordered = (p for group in optimizer.param_groups for p in group["params"])
    index = {id(p): i for i, p in enumerate(ordered)}  # how state_dict() numbers them
    state_dict = optimizer.state_dict()
    state_dict["state"] = {
        index[id(p)]: {
            "step": torch.tensor(float(step)),
            **{kind: tensors[f"{kind}/{name}"] for kind in _MOMENTS},
        }
        for name, p in named.items()
    }
    optimizer.load_state_dict(state_dict)
    return step


def inner_steps(
    config: ModelConfig,
    global_state: Mapping[str, Tensor],
    shard: bytes,
    steps: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    batch: int = 16,
    seed: int,
    opt_state: bytes | None = None,
    grad_clip: float = 1.0,
    warmup_steps: int = 0,
) -> InnerResult:
    """Run `steps` AdamW steps from `global_state` on random windows of `shard`.

    The worker's half of a DiLoCo round (Algorithm 1, lines 4-8). Bitwise deterministic for
    the same arguments on any machine's thread count. `warmup_steps` ramps the learning rate
    linearly over AdamW's first steps, counted across rounds through `opt_state`.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"steps ({steps}) and batch ({batch}) must be at least 1")
    with _single_thread_seeded(seed):
        model = from_state(config, global_state)
        model.train()
        optimizer = _adamw(model, lr, weight_decay)
        start = 0 if opt_state is None else _load_adam_state(model, optimizer, opt_state)
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for step in range(start + 1, start + steps + 1):
            scale = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            x, y = sample_batch(shard, batch, config.context, generator)
            loss = model.loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total += loss.item()
        local = model.state_dict()
        delta = {
            name: (tensor.float() - local[name].float()).detach()
            for name, tensor in global_state.items()
        }
        return InnerResult(
            delta=delta,
            opt_state=_adam_state_to_bytes(model, optimizer, start + steps),
            loss=total / steps,
            samples=steps * batch,
            step=start + steps,
        )


def compress(delta: Mapping[str, Tensor], mode: Compression = "fp16") -> bytes:
    """A pseudo-gradient as bytes: float32, float16, or int8 with a float32 scale per tensor.

    int8 is symmetric: scale = max|x| / 127 (rounded to float32), q = round(x / scale), so
    each element comes back within scale / 2.
    """
    if mode not in _WIRE_DTYPES:
        raise ValueError(f"compression must be one of {sorted(_WIRE_DTYPES)}, not {mode!r}")
    meta: dict[str, object] = {"format": _DELTA_FORMAT, "mode": mode}
    if mode != "int8":
        return state_to_bytes({k: v.to(_WIRE_DTYPES[mode]) for k, v in delta.items()}, meta)
    quantised: dict[str, Tensor] = {}
    scales: dict[str, float] = {}
    for name, tensor in delta.items():
        values = tensor.detach().float()
        peak = values.abs().max() if values.numel() else torch.tensor(0.0)
        if not torch.isfinite(peak):
            raise BadPseudoGradient(f"{name}: cannot quantise non-finite values")
        scale = (peak / 127).float()
        safe = scale if scale > 0 else torch.tensor(1.0)
        quantised[name] = torch.round(values / safe).clamp(-127, 127).to(torch.int8)
        scales[name] = float(scale)
    meta["scales"] = scales
    return state_to_bytes(quantised, meta)


def decompress(data: bytes, reference_shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """The float32 pseudo-gradient in `data`, checked against the model's parameter shapes.

    Raises BadPseudoGradient if the bytes are malformed, a name is missing or unexpected, a
    shape or dtype is wrong, or a value is not finite.
    """
    try:
        tensors, meta = read_state(data)
    except ValueError as e:
        raise BadPseudoGradient(f"malformed pseudo-gradient: {e}") from None
    mode = meta.get("mode")
    if meta.get("format") != _DELTA_FORMAT or mode not in _WIRE_DTYPES:
        raise BadPseudoGradient(f"not a pseudo-gradient: meta {meta!r}")
    expected = {name: tuple(shape) for name, shape in reference_shapes.items()}
    given = {name: tuple(t.shape) for name, t in tensors.items()}
    if set(given) != set(expected):
        missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        raise BadPseudoGradient(f"names do not match the model: missing {missing}, extra {extra}")
    for name, shape in expected.items():
        if given[name] != shape:
            raise BadPseudoGradient(f"{name}: shape {list(given[name])}, model has {list(shape)}")
        if tensors[name].dtype != _WIRE_DTYPES[mode]:
            raise BadPseudoGradient(f"{name}: dtype {tensors[name].dtype} in a {mode} delta")
    scales = meta.get("scales") if mode == "int8" else None
    if mode == "int8" and (not isinstance(scales, dict) or set(scales) != set(expected)):
        raise BadPseudoGradient("int8 pseudo-gradient needs exactly one scale per tensor")
    out: dict[str, Tensor] = {}
    for name in expected:
        values = tensors[name].float()
        if scales is not None:
            scale = scales[name]
            if not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
                raise BadPseudoGradient(f"{name}: int8 scale {scale!r} is not finite and >= 0")
            values = values * torch.tensor(scale, dtype=torch.float32)
        if not torch.isfinite(values).all():
            raise BadPseudoGradient(f"{name}: holds NaN or infinite values")
        out[name] = values
    return out


def global_norm(delta: Mapping[str, Tensor]) -> float:
    """The L2 norm of all tensors together, in float64."""
    return math.sqrt(sum(float(t.double().square().sum()) for t in delta.values()))


def check_norm(delta: Mapping[str, Tensor], max_norm: float) -> float:
    """The global L2 norm of `delta`; BadPseudoGradient if it is not finite or above max_norm.

    An honest worker's pseudo-gradient after H steps of lr η is at most about H·η·√params;
    one far beyond that is garbage or an attack, and is rejected rather than averaged in.
    """
    norm = global_norm(delta)
    if not math.isfinite(norm) or norm > max_norm:
        raise BadPseudoGradient(f"pseudo-gradient norm {norm:.4g} exceeds the limit {max_norm}")
    return norm


class OuterOptimizer:
    """The coordinator's half of DiLoCo: Nesterov SGD on the averaged pseudo-gradients.

    Wraps `torch.optim.SGD(lr=0.7, momentum=0.9, nesterov=True)` over the global model's
    parameters (DiLoCo §3); the pseudo-gradient plays the role of the gradient.
    """

    def __init__(
        self, model: nn.Module, lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True
    ) -> None:
        self.model = model
        self.params = dict(model.named_parameters())
        self.steps = 0
        self.optimizer = torch.optim.SGD(
            self.params.values(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0
        )

    def step(
        self, deltas: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None
    ) -> None:
        """Set each parameter's gradient to the (weighted) mean pseudo-gradient, and step."""
        if not deltas:
            raise ValueError("an outer step needs at least one pseudo-gradient")
        weights = [1.0] * len(deltas) if weights is None else list(weights)
        if len(weights) != len(deltas) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights {weights} must be one non-negative number per delta")
        for delta in deltas:
            if {k: tuple(t.shape) for k, t in delta.items()} != {
                k: tuple(p.shape) for k, p in self.params.items()
            }:
                raise BadPseudoGradient("pseudo-gradient names or shapes do not match the model")
        total = sum(weights)
        with torch.no_grad():
            for name, param in self.params.items():
                mean = torch.zeros_like(param)
                for delta, weight in zip(deltas, weights, strict=True):
                    mean.add_(delta[name].to(param.dtype), alpha=weight)
                param.grad = mean.div_(total)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    def state_bytes(self) -> bytes:
        """The momentum buffers and the step count, in the `state_to_bytes` layout."""
        buffers = {
            f"momentum_buffer/{name}": self.optimizer.state[p]["momentum_buffer"]
            for name, p in self.params.items()
            if self.optimizer.state[p].get("momentum_buffer") is not None
        }
        return state_to_bytes(buffers, {"format": _OUTER_FORMAT, "steps": self.steps})

    def load_state_bytes(self, data: bytes) -> None:
        """Restore `state_bytes()` output; ValueError if it does not fit this model."""
        tensors, meta = read_state(data)
        steps = meta.get("steps")
        if meta.get("format") != _OUTER_FORMAT or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"not an outer optimizer state: meta {meta!r}")
        names = {f"momentum_buffer/{name}": p for name, p in self.params.items()}
        if tensors and {k: t.shape for k, t in tensors.items()} != {
            k: p.shape for k, p in names.items()
        }:
            raise ValueError("outer optimizer state does not fit this model's parameters")
        self.optimizer.state.clear()
        for key, tensor in tensors.items():
            param = names[key]
            self.optimizer.state[param]["momentum_buffer"] = tensor.to(param.dtype).clone()
        self.steps = steps


@torch.no_grad()
def evaluate(
    model_or_state: Transformer | Mapping[str, Tensor],
    config: ModelConfig,
    val: bytes,
    max_windows: int = 64,
    batch: int = 16,
) -> float:
    """Mean next-byte cross-entropy (nats) over fixed, evenly spaced windows of `val`."""
    if isinstance(model_or_state, Transformer):
        model = model_or_state
    else:
        model = from_state(config, model_or_state)
    x, y = eval_windows(val, config.context, max_windows)
    was_training = model.training
    model.eval()
    try:
        total = sum(
            float(model.loss(x[i : i + batch], y[i : i + batch])) * len(x[i : i + batch])
            for i in range(0, len(x), batch)
        )
    finally:
        model.train(was_training)
    return total / len(x)
