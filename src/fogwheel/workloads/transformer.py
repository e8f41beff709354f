"""A small decoder-only byte-level Transformer, and its weights as bytes without pickle.

The model that DiLoCo rounds train on volunteer devices (4 cores, 512 MB): bytes in, next-byte
logits out. The default `ModelConfig` has 820,352 parameters (3.3 MB in float32), small enough
that a weak node holds the weights, AdamW's two moments and the activations of a batch of 16.

Architecture (GPT-2 shape, modern parts): token embedding; rotary positions on queries and keys
(Su et al. 2021, "RoFormer"), or learned positions when `rope=False`; pre-norm blocks of causal
multi-head self-attention (`scaled_dot_product_attention`) and a GELU MLP, with RMSNorm (Zhang &
Sennrich 2019); a final norm; the output head tied to the embedding (Press & Wolf 2017).

Weights travel between the coordinator and untrusted nodes, so they never go through pickle:
`state_to_bytes` writes a fixed layout (magic, header length, a JSON header, raw little-endian
tensors) and `state_from_bytes` checks every field before it builds a tensor.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAGIC = b"FWT1"
MAX_HEADER_BYTES = 16 << 20
_MAX_NDIM = 8
_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "<f4"),
    "float16": (torch.float16, "<f2"),
    "int8": (torch.int8, "i1"),
}
_DTYPE_NAMES = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}
_ROPE_BASE = 10000.0


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a `Transformer`; the default has 820,352 parameters."""

    vocab: int = 256
    context: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.0
    rope: bool = True

    def __post_init__(self) -> None:
        if min(self.vocab, self.context, self.d_model, self.n_layers, self.n_heads, self.d_ff) < 1:
            raise ValueError(f"every size in {self} must be at least 1")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.rope and (self.d_model // self.n_heads) % 2:
            raise ValueError("rotary positions need an even head size (d_model / n_heads)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout} is not in [0, 1)")

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A model of 24,736 parameters that trains in milliseconds, for tests."""
        return cls(context=32, d_model=32, n_layers=2, n_heads=2, d_ff=64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from plain data (a task argument), rejecting unknown keys and wrong types."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        for key, value in data.items():
            want = {"int": int, "float": (int, float), "bool": bool}[str(known[key])]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ValueError(f"ModelConfig.{key} must be {known[key]}, not {value!r}")
        return cls(**data)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of each head's features by the position's angles (RoPE)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class _Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        batch, length, width = x.shape
        q, k, v = (
            t.view(batch, length, self.n_heads, -1).transpose(1, 2)
            for t in self.qkv(x).split(width, dim=2)
        )
        if rope is not None:
            cos, sin = rope
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class _Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model)
        self.attn = _Attention(config)
        self.norm2 = nn.RMSNorm(config.d_model)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope))
        return x + self.drop(self.down(F.gelu(self.up(self.norm2(x)))))


class Transformer(nn.Module):
    """A decoder-only Transformer over bytes: `forward(idx) -> logits`, `loss(idx, targets)`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.d_model)
        self.positions = None if config.rope else nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)
        if config.rope:
            head = config.d_model // config.n_heads
            inv_freq = _ROPE_BASE ** (-torch.arange(0, head, 2, dtype=torch.float64) / head)
            angles = torch.outer(torch.arange(config.context, dtype=torch.float64), inv_freq)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        """Logits of shape (batch, length, vocab) for byte ids of shape (batch, length)."""
        length = idx.shape[1]
        if length > self.config.context:
            raise ValueError(f"sequence of {length} tokens exceeds context {self.config.context}")
        x = self.embed(idx)
        rope = None
        if self.positions is not None:
            x = x + self.positions(torch.arange(length, device=idx.device))
        else:
            rope = (self.rope_cos[:length], self.rope_sin[:length])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope)
        return F.linear(self.norm(x), self.embed.weight)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy in nats."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build(config: ModelConfig, seed: int = 0) -> Transformer:
    """A freshly initialised model; equal (config, seed) give bitwise-equal weights.

    Normal(0, 0.02) weights, the residual projections scaled by 1/sqrt(2 * n_layers) as in
    GPT-2, so the residual stream's variance does not grow with depth. The global RNG is left
    untouched.
    """
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from it
        model = Transformer(config)
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim < 2:
                param.fill_(1.0)  # norm gains
            else:
                std = residual_std if name.endswith(("proj.weight", "down.weight")) else 0.02
                param.normal_(0.0, std, generator=generator)
    return model


def from_state(config: ModelConfig, state: Mapping[str, Tensor]) -> Transformer:
    """A model holding `state`; ValueError if its names or shapes are not this config's."""
    model = build(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    given = {name: tuple(t.shape) for name, t in state.items()}
    if given != expected:
        missing = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        wrong = sorted(n for n in set(given) & set(expected) if given[n] != expected[n])
        raise ValueError(
            f"state does not fit {config}: missing {missing}, unexpected {extra}, "
            f"wrong shape {wrong}"
        )
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(state[name])
    return model


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: bytes,
    n: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> bytes:
    """`prompt` followed by `n` sampled bytes; deterministic for a given seed.

    The model sees at most its last `context` bytes. Temperature 0 takes the most likely byte.
    An empty prompt starts from a newline, which is not returned.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = list(prompt) or [ord("\n")]
    start = len(tokens) - len(prompt)
    was_training = model.training
    model.eval()
    try:
        for _ in range(n):
            window = torch.tensor([tokens[-model.config.context :]], dtype=torch.long)
            logits = model(window)[0, -1].float()
            if temperature <= 0:
                tokens.append(int(logits.argmax()))
                continue
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, -math.inf)
            probs = torch.softmax(logits, dim=-1)
            tokens.append(int(torch.multinomial(probs, 1, generator=generator)))
    finally:
        model.train(was_training)
    return bytes(tokens[start:])


def state_to_bytes(state: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> bytes:
    """Tensors (float32, float16 or int8) and optional plain-JSON `meta` as bytes, no pickle.

    Layout: b"FWT1", the header's length (uint32 little-endian), the header (JSON, sorted keys:
    `tensors` as name/dtype/shape/offset/nbytes in name order, and `meta`), then each tensor's
    raw little-endian bytes in that order. Equal states give equal bytes.
    """
    entries = []
    chunks = []
    offset = 0
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, not {name!r}")
        dtype = _DTYPE_NAMES.get(tensor.dtype)
        if dtype is None:
            raise ValueError(f"{name}: dtype {tensor.dtype} is not one of {sorted(_DTYPES)}")
        raw = tensor.detach().cpu().contiguous().numpy().astype(_DTYPES[dtype][1]).tobytes()
        entries.append(
            {
                "name": name,
                "dtype": dtype,
                "shape": list(tensor.shape),
                "offset": offset,
                "nbytes": len(raw),
            }
        )
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps(
        {"tensors": entries, "meta": dict(meta or {})},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"header holds {name}, which is not allowed")


def read_state(data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the meta of `state_to_bytes` output; ValueError on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"state must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError(f"not a fogwheel tensor file: it does not start with {MAGIC!r}")
    (header_len,) = struct.unpack("<I", data[4:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise ValueError(f"header length {header_len} runs past the {len(data)} bytes given")
    try:
        header = json.loads(data[8 : 8 + header_len], parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or set(header) != {"tensors", "meta"}:
        raise ValueError("header must be an object with exactly the keys 'tensors' and 'meta'")
    if not isinstance(header["tensors"], list) or not isinstance(header["meta"], dict):
        raise ValueError("header 'tensors' must be a list and 'meta' an object")
    body = data[8 + header_len :]
    state: dict[str, Tensor] = {}
    expected_offset = 0
    for entry in header["tensors"]:
        name, tensor, expected_offset = _read_tensor(entry, body, expected_offset)
        if name in state:
            raise ValueError(f"tensor {name!r} appears twice")
        state[name] = tensor
    if expected_offset != len(body):
        raise ValueError(f"{len(body) - expected_offset} bytes follow the last tensor")
    return state, header["meta"]


def _read_tensor(entry: Any, body: bytes, offset: int) -> tuple[str, Tensor, int]:
    """One header entry checked against the body; the tensor and where the next must start."""
    keys = {"name", "dtype", "shape", "offset", "nbytes"}
    if not isinstance(entry, dict) or set(entry) != keys:
        raise ValueError(f"tensor entry must have exactly the keys {sorted(keys)}: {entry!r}")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"tensor name must be a non-empty string: {name!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"{name}: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ValueError(f"{name}: shape must be up to {_MAX_NDIM} non-negative ints: {shape!r}")
    torch_dtype, np_dtype = _DTYPES[dtype]
    nbytes = math.prod(shape) * np.dtype(np_dtype).itemsize
    if entry["offset"] != offset:
        raise ValueError(f"{name}: offset {entry['offset']!r} should be {offset}")
    if entry["nbytes"] != nbytes:
        raise ValueError(f"{name}: nbytes {entry['nbytes']!r} does not match shape {shape}")
    if offset + nbytes > len(body):
        raise ValueError(f"{name}: data runs past the end ({offset + nbytes} > {len(body)} bytes)")
    array = np.frombuffer(body, dtype=np_dtype, count=math.prod(shape), offset=offset)
    tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).reshape(shape)
    return name, tensor.to(torch_dtype), offset + nbytes


def state_from_bytes(data: bytes) -> dict[str, Tensor]:
    """The tensors written by `state_to_bytes`; raises ValueError, saying why, if malformed."""
    return read_state(data)[0]
