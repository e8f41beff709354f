"""A real English text corpus that every Python install carries, and batches drawn from it.

Source: `pydoc_data.topics.topics`, the prose of the Python Language Reference topics that
`help()` shows (about 465 KB, 79 topics in Python 3.11). It is part of CPython and so under the
Python Software Foundation License Version 2 (https://docs.python.org/3/license.html), which
permits use and redistribution with the copyright notice kept. Every node already has it, so a
training task needs no download: a shard is named by its byte range, not shipped.

The byte-level split (shards for workers, a held-out tail for validation) and the batch samplers
are pure functions of their arguments; randomness comes only from the `torch.Generator` given.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

SEPARATOR = b"\n\n"


def load_corpus() -> bytes:
    """The pydoc topics joined in sorted key order with a blank line between, as UTF-8."""
    from pydoc_data.topics import topics

    return SEPARATOR.join(topics[key].strip("\n").encode() for key in sorted(topics)) + b"\n"


def split_corpus(data: bytes, shards: int, val_fraction: float = 0.05) -> tuple[list[bytes], bytes]:
    """`shards` contiguous training shards of near-equal size, and the held-out tail.

    The validation set is the last `val_fraction` of the data, cut just after a newline so it
    starts on a fresh line; the shards and the validation set concatenate back to `data`.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    cut = len(data) - int(len(data) * val_fraction)
    if cut < len(data):
        newline = data.rfind(b"\n", 0, cut)
        cut = newline + 1 if newline >= 0 else cut
    train, val = data[:cut], data[cut:]
    bounds = [i * len(train) // shards for i in range(shards + 1)]
    return [train[lo:hi] for lo, hi in itertools.pairwise(bounds)], val


def _windows(data: bytes, starts: np.ndarray, context: int) -> tuple[Tensor, Tensor]:
    array = np.frombuffer(data, dtype=np.uint8)
    windows = torch.from_numpy(array[starts[:, None] + np.arange(context + 1)].astype(np.int64))
    return windows[:, :-1], windows[:, 1:]


def _check_length(data: bytes, context: int) -> int:
    """How many windows of `context` inputs (and their next-byte targets) fit in `data`."""
    if context < 1:
        raise ValueError(f"context must be at least 1, not {context}")
    room = len(data) - context
    if room < 1:
        raise ValueError(f"{len(data)} bytes are too few for a window of {context} + 1")
    return room


def sample_batch(
    data: bytes, batch: int, context: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`batch` random windows: inputs (batch, context) and targets shifted by one, as int64."""
    room = _check_length(data, context)
    starts = torch.randint(0, room, (batch,), generator=generator).numpy()
    return _windows(data, starts, context)


def eval_windows(data: bytes, context: int, max_windows: int) -> tuple[Tensor, Tensor]:
    """Up to `max_windows` fixed windows spread evenly over `data`, for a repeatable loss."""
    room = _check_length(data, context)
    if max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, not {max_windows}")
    count = min(max_windows, room)
    starts = np.arange(count, dtype=np.int64) * (room - 1) // max(count - 1, 1)
    return _windows(data, starts, context)
