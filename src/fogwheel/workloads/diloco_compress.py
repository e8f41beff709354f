"""Pseudo-gradient codecs: dense (fp32, fp16, int8) and chunked top-k with low-bit values.

Top-k follows SparseLoCo (Sarfi et al. 2025, arXiv 2508.15706) and DeMo (Peng et al. 2024,
arXiv 2411.19870): the parameters, flattened in name order, are cut into chunks of `chunk`
elements (4096 by default), and from each chunk only the k = ceil(density x chunk) entries of
largest magnitude are sent, each as its offset inside its chunk and a `bits`-bit level (2, 4
or 8) of a uniform midrise quantiser whose scale is the chunk's largest selected magnitude (one
float32 a chunk). A chunk's k sorted offsets are Elias-Fano coded (Elias 1974, Fano 1971):
with l = floor(log2(chunk / k)), each offset's low l bits are written as they are and its high
part in unary, one set bit a value in a bitmap of k + (chunk - 1) // 2**l + 1 bits: about
l + 2 bits an offset (6-8 at 1-10 % density) where a uint16 took 16, since the offsets are
sorted and distinct and the code spends no bits on their order. What is not sent is not lost:
the worker keeps it as its ERROR FEEDBACK (Seide et al. 2014; Karimireddy et al. 2019) and
adds it to its next pseudo-gradient, so every coordinate arrives eventually. The residual is
computed from the very bytes that are sent, so the coordinator's decoded update plus the new
residual equals the worker's accumulated pseudo-gradient exactly.

The bytes come from untrusted devices. `decode` checks every header field against the model
the coordinator holds before it allocates anything: the element count and a digest of the
names and shapes must be the model's, the chunk size and k in range, the total length exact,
every offset inside its chunk and strictly increasing (no index twice), every scale finite.
Anything else is a `BadPseudoGradient`, never a crash, and the work it causes is bounded by
the model's size, not by the bytes' claims.

Layout of a top-k pseudo-gradient (little-endian): b"FWK2"; bits (u8); 0 (u8); k (u16);
chunk (u32); elements (u64); layout digest (8 bytes, BLAKE2b of the names and shapes); then
one float32 scale a chunk; then the offsets, a bit stream (least significant bit of each byte
first, the last byte zero-padded) of each chunk's k_c = min(k, chunk's length) offsets in turn,
Elias-Fano coded (the bitmap of the high parts, then the k_c low parts of l_c bits each); then
every chunk's levels, `bits` bits each, packed low bits first, the last byte zero-padded.
(FWK1, before 2026-12-02, sent each offset as a uint16.)
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fogwheel.workloads.diloco_math import BadPseudoGradient, compress, decompress
from fogwheel.workloads.transformer import MAGIC as DENSE_MAGIC
from fogwheel.workloads.transformer import read_state, state_to_bytes

TOPK_MAGIC = b"FWK2"
TOPK_BITS = (2, 4, 8)
DEFAULT_CHUNK = 4096
MAX_CHUNK = 1 << 16  # offsets are uint16
_HEADER = struct.Struct("<4sBBHIQ8s")
_EF_FORMAT = "fogwheel-error-feedback-1"


@dataclass(frozen=True)
class Dense:
    """Every element sent: float32 ("none"), float16, or int8 with a per-tensor scale."""

    dtype: Literal["fp32", "fp16", "int8"]
    feedback = False  # keeps no residual

    def __str__(self) -> str:
        return self.dtype


@dataclass(frozen=True)
class TopK:
    """The `density` largest of each chunk, `bits` bits a value, the rest kept as feedback.

    `decay` is SparseLoCo's beta: the kept residual is multiplied by it before the next
    pseudo-gradient is added (e <- decay x e + delta), so what was never sent fades instead of
    piling up; 1 keeps it whole (plain error feedback), 0 keeps none. It is the worker's own
    arithmetic, not on the wire: the coordinator decodes every decay alike.
    """

    density: float
    bits: int
    chunk: int = DEFAULT_CHUNK
    decay: float = 1.0
    feedback = True  # keeps what it did not send, as error feedback

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"top-k density must be in (0, 1], not {self.density}")
        if self.bits not in TOPK_BITS:
            raise ValueError(f"top-k bits must be one of {TOPK_BITS}, not {self.bits}")
        if not 1 <= self.chunk <= MAX_CHUNK:
            raise ValueError(f"top-k chunk must be 1..{MAX_CHUNK} elements, not {self.chunk}")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"top-k error feedback decay must be in [0, 1], not {self.decay}")

    @property
    def k(self) -> int:
        """Entries sent from each full chunk: at least one."""
        return max(1, min(self.chunk, math.ceil(self.density * self.chunk)))

    def __str__(self) -> str:
        tail = "" if self.decay == 1.0 else f":{self.decay:g}"
        return f"topk:{self.density:g}:{self.bits}{tail}"


Codec = Dense | TopK


def parse_codec(spec: str) -> Codec:
    """`none`, `fp32`, `fp16`, `int8` or `topk:DENSITY:BITS[:DECAY]` (e.g. `topk:0.02:2`, or
    `topk:0.02:2:0.95` for error feedback that decays by 0.95 a round) as a Codec.

    ValueError, saying what is accepted, for anything else.
    """
    text = spec.strip().lower()
    if text in ("none", "fp32"):
        return Dense("fp32")
    if text in ("fp16", "int8"):
        return Dense(text)  # type: ignore[arg-type]
    usage = (
        "compression must be none, fp16, int8 or topk:DENSITY:BITS[:DECAY] (density in (0, 1], "
        "bits 2, 4 or 8, error feedback decay in [0, 1], 1 if left out; e.g. topk:0.02:2)"
    )
    parts = text.split(":")
    if parts[0] != "topk" or len(parts) not in (3, 4):
        raise ValueError(f"{usage}, not {spec!r}")
    try:
        density, bits = float(parts[1]), int(parts[2])
        decay = float(parts[3]) if len(parts) == 4 else 1.0
        if not (math.isfinite(density) and math.isfinite(decay)):
            raise ValueError(f"density {parts[1]} or decay {parts[3:]} is not a number")
        return TopK(density, bits, decay=decay)
    except ValueError as e:
        raise ValueError(f"{usage}, not {spec!r} ({e})") from None


def layout_digest(shapes: Mapping[str, tuple[int, ...] | torch.Size]) -> bytes:
    """8 bytes that name the tensors and their shapes, so a delta for another model fails."""
    body = json.dumps([[n, list(shapes[n])] for n in sorted(shapes)], separators=(",", ":"))
    return hashlib.blake2b(body.encode(), digest_size=8).digest()


def _chunk_counts(elements: int, chunk: int, k: int) -> tuple[int, int, int]:
    """Full chunks, the last partial chunk's length (0 if none), entries sent in all."""
    full, rest = divmod(elements, chunk)
    return full, rest, full * k + min(k, rest)


def encoded_size(elements: int, codec: TopK) -> int:
    """The exact length of a top-k pseudo-gradient of `elements` values."""
    return _size(elements, codec.chunk, codec.k, codec.bits)


def _size(elements: int, chunk: int, k: int, bits: int) -> int:
    full, rest, sent = _chunk_counts(elements, chunk, k)
    chunks = full + (1 if rest else 0)
    index = full * _index_bits(chunk, k) + (_index_bits(rest, min(k, rest)) if rest else 0)
    return _HEADER.size + 4 * chunks + (index + 7) // 8 + (sent * bits + 7) // 8


# -- offsets: Elias-Fano, a chunk's k sorted offsets in about k x (log2(chunk / k) + 2) bits ----


def _low_bits(length: int, k: int) -> int:
    """l = floor(log2(length / k)): the bits of each offset written as they are."""
    return (length // k).bit_length() - 1


def _index_bits(length: int, k: int) -> int:
    """The Elias-Fano bits of k distinct offsets in a chunk of `length`: the high parts'
    bitmap (k set bits among k + (length - 1) // 2**l + 1) and k low parts of l bits."""
    low = _low_bits(length, k)
    return k + ((length - 1) >> low) + 1 + k * low


def _ef_encode(offsets: np.ndarray, length: int) -> np.ndarray:
    """Each row of sorted `offsets` (count, k) in a chunk of `length` as its row of bits."""
    count, k = offsets.shape
    low = _low_bits(length, k)
    width = k + ((length - 1) >> low) + 1
    bitmap = np.zeros((count, width), np.uint8)
    bitmap[np.arange(count)[:, None], (offsets >> low) + np.arange(k)] = 1
    lows = (offsets[:, :, None] >> np.arange(low)) & 1
    return np.concatenate([bitmap, lows.reshape(count, k * low).astype(np.uint8)], axis=1)


def _ef_decode(bits: np.ndarray, count: int, k: int, length: int) -> np.ndarray:
    """`_ef_encode`'s inverse: (count, k) offsets, or BadPseudoGradient if a bitmap row does
    not hold exactly k set bits (the caller checks range and order)."""
    low = _low_bits(length, k)
    width = k + ((length - 1) >> low) + 1
    rows = bits.reshape(count, width + k * low)
    bitmap = rows[:, :width]
    if (bitmap.sum(axis=1, dtype=np.int64) != k).any():
        raise BadPseudoGradient(f"top-k offsets: each chunk's bitmap must hold {k} entries")
    high = np.nonzero(bitmap)[1].reshape(count, k) - np.arange(k)
    lows = rows[:, width:].reshape(count, k, low).astype(np.int64)
    return (high << low) | (lows << np.arange(low)).sum(axis=2, dtype=np.int64)


# -- levels: a uniform midrise quantiser, 2**bits levels in [-scale, scale] ---------------------


def _quantise(values: Tensor, scale: Tensor, bits: int) -> Tensor:
    top = (1 << bits) - 1
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((values / safe * top + top) / 2)
    return q.clamp(0, top).to(torch.uint8)


def _dequantise(q: Tensor, scale: Tensor, bits: int) -> Tensor:
    top = (1 << bits) - 1
    return scale * ((2 * q.to(torch.float32) - top) / top)


def _pack(levels: np.ndarray, bits: int) -> bytes:
    per = 8 // bits
    pad = (-len(levels)) % per
    grid = np.concatenate([levels, np.zeros(pad, np.uint8)]).reshape(-1, per).astype(np.uint16)
    shifts = (np.arange(per, dtype=np.uint16) * bits)[None, :]
    return (grid << shifts).sum(axis=1).astype(np.uint8).tobytes()


def _unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    per = 8 // bits
    raw = np.frombuffer(data, np.uint8)
    shifts = (np.arange(per, dtype=np.uint8) * bits)[None, :]
    levels = (raw[:, None] >> shifts) & ((1 << bits) - 1)
    return levels.reshape(-1)[:count]


# -- top-k ------------------------------------------------------------------------------------


def _flatten(delta: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([delta[n].detach().float().reshape(-1) for n in sorted(delta)])


def _unflatten(flat: Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    out, at = {}, 0
    for name in sorted(shapes):
        n = math.prod(shapes[name])
        out[name] = flat[at : at + n].reshape(shapes[name]).clone()
        at += n
    return out


def _blocks(flat: Tensor, chunk: int, k: int) -> list[tuple[Tensor, int]]:
    """`flat` as its full chunks (one 2-D block) and its partial last chunk, with each's k."""
    full, rest, _ = _chunk_counts(flat.numel(), chunk, k)
    blocks = [(flat[: full * chunk].reshape(full, chunk), k)] if full else []
    if rest:
        blocks.append((flat[full * chunk :].reshape(1, rest), min(k, rest)))
    return blocks


def _encode_topk(flat: Tensor, shapes: Mapping[str, tuple[int, ...]], codec: TopK) -> bytes:
    if not torch.isfinite(flat).all():
        raise BadPseudoGradient("cannot compress a pseudo-gradient with NaN or infinite values")
    scales, index, levels = [], [], []
    for block, k in _blocks(flat, codec.chunk, codec.k):
        idx = torch.topk(block.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
        values = torch.gather(block, 1, idx)
        scale = values.abs().amax(dim=1, keepdim=True)
        scales.append(scale.reshape(-1))
        index.append(_ef_encode(idx.numpy(), block.shape[1]).reshape(-1))
        levels.append(_quantise(values, scale, codec.bits).reshape(-1))
    header = _HEADER.pack(
        TOPK_MAGIC, codec.bits, 0, codec.k, codec.chunk, flat.numel(), layout_digest(shapes)
    )
    return b"".join(
        [
            header,
            torch.cat(scales).numpy().astype("<f4").tobytes(),
            np.packbits(np.concatenate(index), bitorder="little").tobytes(),
            _pack(torch.cat(levels).numpy(), codec.bits),
        ]
    )


def _decode_topk(data: bytes, shapes: Mapping[str, tuple[int, ...]]) -> Tensor:
    """The dense float32 vector a top-k pseudo-gradient stands for, after every check."""
    if len(data) < _HEADER.size:
        raise BadPseudoGradient(f"top-k pseudo-gradient of {len(data)} bytes has no header")
    magic, bits, zero, k, chunk, elements, digest = _HEADER.unpack_from(data)
    expected = sum(math.prod(s) for s in shapes.values())
    if magic != TOPK_MAGIC or zero != 0 or bits not in TOPK_BITS:
        raise BadPseudoGradient(f"not a top-k pseudo-gradient (bits {bits}, reserved {zero})")
    if elements != expected or digest != layout_digest(shapes):
        raise BadPseudoGradient(
            f"top-k pseudo-gradient is for another model ({elements} elements, this model "
            f"has {expected}, or its names and shapes differ)"
        )
    if not 1 <= chunk <= MAX_CHUNK or not 1 <= k <= chunk:
        raise BadPseudoGradient(f"top-k chunk {chunk} or k {k} out of range")
    size = _size(elements, chunk, k, bits)
    if len(data) != size:
        raise BadPseudoGradient(f"top-k pseudo-gradient is {len(data)} bytes, should be {size}")
    full, rest, sent = _chunk_counts(elements, chunk, k)
    chunks = full + (1 if rest else 0)
    at = _HEADER.size
    scales = np.frombuffer(data, "<f4", chunks, at).astype(np.float32)
    at += 4 * chunks
    spans = [(0, full, k, chunk)] if full else []
    if rest:
        spans.append((full, 1, min(k, rest), rest))
    index_bits = sum(count * _index_bits(length, kc) for _, count, kc, length in spans)
    stream = np.unpackbits(
        np.frombuffer(data, np.uint8, (index_bits + 7) // 8, at), bitorder="little"
    )
    if stream[index_bits:].any():
        raise BadPseudoGradient("top-k offsets: the last byte's padding bits must be zero")
    at += (index_bits + 7) // 8
    levels = _unpack(data[at:], sent, bits)
    if sent * bits % 8 and data[-1] >> (sent * bits % 8):
        raise BadPseudoGradient("top-k levels: the last byte's padding bits must be zero")
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise BadPseudoGradient("top-k scales must be finite and non-negative")
    flat = torch.zeros(elements, dtype=torch.float32)
    taken = read = 0
    for first, count, kc, length in spans:
        span_bits = count * _index_bits(length, kc)
        offs = _ef_decode(stream[read : read + span_bits], count, kc, length)
        read += span_bits
        if (offs >= length).any() or (np.diff(offs, axis=1) <= 0).any():
            raise BadPseudoGradient("top-k offsets must lie in their chunk, strictly increasing")
        q = torch.from_numpy(levels[taken : taken + count * kc].reshape(count, kc).copy())
        s = torch.from_numpy(scales[first : first + count].copy())[:, None]
        index = torch.from_numpy(offs + (first + np.arange(count)[:, None]) * chunk)
        flat[index.reshape(-1)] = _dequantise(q, s, bits).reshape(-1)
        taken += count * kc
    return flat


# -- the public pair --------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """What a worker sends (`data`) and the error feedback it keeps for next time."""

    data: bytes
    residual: dict[str, Tensor] | None


def encode(
    delta: Mapping[str, Tensor], codec: Codec, residual: Mapping[str, Tensor] | None = None
) -> Encoded:
    """`delta` (plus the kept `residual`, for top-k) as bytes, and the new residual.

    Dense codecs keep no residual (their error is below int8's half step). For top-k the
    accumulated update is delta + decay x residual; what the bytes carry is subtracted from it,
    and the remainder is the new residual, float32, in `delta`'s names.
    """
    if isinstance(codec, Dense):
        return Encoded(compress(delta, codec.dtype), None)
    shapes = {n: tuple(t.shape) for n, t in delta.items()}
    flat = _flatten(delta)
    if residual is not None and {n: tuple(t.shape) for n, t in residual.items()} == shapes:
        flat = flat + codec.decay * _flatten(residual)
    data = _encode_topk(flat, shapes, codec)
    sent = _decode_topk(data, shapes)
    return Encoded(data, _unflatten(flat - sent, shapes))


def decode(
    data: bytes,
    reference_shapes: Mapping[str, tuple[int, ...] | torch.Size],
    expected: str | None = None,
) -> dict[str, Tensor]:
    """The float32 pseudo-gradient in `data`, checked against the model's shapes and, if
    `expected` (a compression spec) is given, sent with that kind of codec.

    A run's workers all use the run's codec: a device that sends another (say fp32 where top-k
    was asked, 180 times the bytes) is refused, not accommodated. Raises BadPseudoGradient,
    saying why, on anything malformed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadPseudoGradient(f"a pseudo-gradient is bytes, not {type(data).__name__}")
    data = bytes(data)
    shapes = {n: tuple(int(d) for d in s) for n, s in reference_shapes.items()}
    codec = None if expected is None else parse_codec(expected)
    if data[:4] == TOPK_MAGIC:
        if codec is not None and not isinstance(codec, TopK):
            raise BadPseudoGradient(f"a top-k pseudo-gradient in a run that sends {codec}")
        out = _unflatten(_decode_topk(data, shapes), shapes)
        if codec is not None and (data[4], data[6] | data[7] << 8) != (codec.bits, codec.k):
            raise BadPseudoGradient(f"a top-k pseudo-gradient not of this run's {codec}")
        return out
    if data[:4] == DENSE_MAGIC:
        if codec is not None and not isinstance(codec, Dense):
            raise BadPseudoGradient(f"a dense pseudo-gradient in a run that sends {codec}")
        out = decompress(data, {n: torch.Size(s) for n, s in shapes.items()})
        if codec is not None and read_state(data)[1].get("mode") != codec.dtype:
            raise BadPseudoGradient(f"a pseudo-gradient not of this run's {codec}")
        return out
    raise BadPseudoGradient("not a pseudo-gradient: unknown magic bytes")


def residual_to_bytes(residual: Mapping[str, Tensor]) -> bytes:
    """The error feedback as the node keeps it (its `keep/` directory), float32."""
    return state_to_bytes(dict(residual), {"format": _EF_FORMAT})


def residual_from_bytes(data: bytes, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Kept error feedback, or an empty dict if it does not fit (another model) or is bad.

    The node's own kept state, but a node's disk is not to be trusted blindly either: a
    residual that is malformed, misshapen or not finite is dropped, not added in.
    """
    try:
        tensors, meta = read_state(data)
    except ValueError:
        return {}
    if meta.get("format") != _EF_FORMAT:
        return {}
    if {n: tuple(t.shape) for n, t in tensors.items()} != dict(shapes):
        return {}
    if not all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values()):
        return {}
    return tensors
