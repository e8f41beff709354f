"""Robust outer aggregation of pseudo-gradients: mean, CenteredClip, trimmed mean, median.

DiLoCo averages its workers' pseudo-gradients; on the fog a worker is a stranger's device, and
one that returns a well-formed but poisoned update (sign-flipped, scaled, random) moves a mean
as far as it likes. These aggregators bound what a minority can do:

- `centered_clip`: CenteredClip (Karimireddy, He and Jaggi 2021, "Learning from History for
  Byzantine Robust Optimization"; the aggregator of BTARD, Gorbunov et al., ICML 2022):
  v <- v + mean_i clip(x_i - v, tau), a few times from a robust start. Every point, honest or
  not, pulls v at most tau/n an iteration, so f < n/2 outliers of any size move it a bounded
  distance. Here the start is the coordinate median and tau the median distance of the points
  from it, so tau never exceeds the honest points' spread (more than half are honest).
- `trimmed_mean`: per coordinate, the `trim` largest and smallest values dropped (Yin et al.
  2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates").
- `coordinate_median`: per coordinate, the median (the same paper).

Pure numpy on the updates as the rows of one (n, d) matrix, so that the property tests run
without torch; the driver flattens its tensors into rows (`workloads/diloco_guard.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Aggregate = Literal["mean", "centered-clip", "trimmed-mean", "median"]
AGGREGATES: tuple[Aggregate, ...] = ("mean", "centered-clip", "trimmed-mean", "median")
CLIP_ITERATIONS = 3  # BTARD's CenteredClip converges in a few; each adds tau to the bound
Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]


def _rows(points: Matrix | Sequence[Vector]) -> Matrix:
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"aggregation needs an (n, d) matrix of n >= 1 updates, not {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("an update holds NaN or infinite values: reject it before aggregating")
    return x


def mean(points: Matrix | Sequence[Vector], weights: Sequence[float] | None = None) -> Vector:
    """The (weighted) mean: DiLoCo's own aggregate, robust to nothing."""
    x = _rows(points)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(x),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights {list(w)} must be one non-negative number per update")
    result: Vector = (w[:, None] * x).sum(axis=0) / w.sum()
    return result


def coordinate_median(points: Matrix | Sequence[Vector]) -> Vector:
    """Per coordinate, the median: with f < n/2 outliers it lies within the honest range."""
    result: Vector = np.median(_rows(points), axis=0)
    return result


def default_trim(n: int) -> int:
    """How many values a side `trimmed_mean` drops by default: a fifth of n, at least one
    once there are three updates, and always fewer than half."""
    if n < 3:
        return 0
    return min(max(1, n // 5), (n - 1) // 2)


def trimmed_mean(points: Matrix | Sequence[Vector], trim: int | None = None) -> Vector:
    """Per coordinate, the mean of what is left after the `trim` largest and smallest values
    are dropped (`default_trim(n)` unless given); robust to at most `trim` outliers."""
    x = _rows(points)
    n = len(x)
    k = default_trim(n) if trim is None else trim
    if k < 0 or 2 * k >= n:
        raise ValueError(f"cannot trim {k} a side from {n} updates: keep at least one")
    ordered = np.sort(x, axis=0)
    result: Vector = ordered[k : n - k].mean(axis=0)
    return result


def centered_clip(
    points: Matrix | Sequence[Vector],
    tau: float | None = None,
    iterations: int = CLIP_ITERATIONS,
) -> Vector:
    """CenteredClip from the coordinate median, with tau the median distance to it (unless
    given). With f < n/2 outliers the result is within (iterations + 1) times the diameter
    of the honest points' bounding box of their mean, however large the outliers are."""
    x = _rows(points)
    v = coordinate_median(x)
    if tau is None:
        tau = float(np.median(np.linalg.norm(x - v, axis=1)))
    if not tau >= 0:
        raise ValueError(f"tau must be a number >= 0, not {tau}")
    if tau == 0:
        return v  # more than half the points sit on the median
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        far = norms > tau
        scale = np.ones_like(norms)
        scale[far] = tau / norms[far]
        v = v + (diff * scale[:, None]).mean(axis=0)
    return v


def aggregate(
    method: Aggregate, points: Matrix | Sequence[Vector], weights: Sequence[float] | None = None
) -> Vector:
    """The aggregate of the rows by `method`; `weights` count for the mean only (the robust
    ones treat every update alike: a weight is a device's own claim)."""
    if method == "mean":
        return mean(points, weights)
    if method == "centered-clip":
        return centered_clip(points)
    if method == "trimmed-mean":
        return trimmed_mean(points)
    if method == "median":
        return coordinate_median(points)
    raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {method!r}")
