"""Device availability: alternating up and down intervals, per cluster of like hosts.

The model's shape comes from Javadi, Kondo, Vincent and Anderson, "Discovering statistical
models of availability in large distributed systems: an empirical study of SETI@home", IEEE
TPDS 22(11):1896-1903, 2011 (traces of the Failure Trace Archive). What we took from it, from
its abstract as stored by the `search` tool (m.moam.info and search.isc.ac copies of the paper):
- about 230,000 SETI@home host availability traces;
- about 21 % of hosts have availability that is a truly random (iid) process, and those hosts
  fall into a few clusters, each "modelled accurately with a few distinct distributions from
  different families" (the abstract names exponential, Weibull and Pareto as the families such
  traces fit; the issue names Weibull, log-normal and gamma per cluster);
- so: each device belongs to one cluster; its up (availability) and down (unavailability)
  intervals are drawn iid from that cluster's distributions.
What we could NOT find in any stored text: the paper's fitted parameters (its per-cluster tables
of shapes and scales). The numbers in `CLUSTERS` below are therefore OUR CHOICE, not the
paper's: heavy-tailed up intervals (Weibull and gamma shapes below 1, a wide log-normal) with
medians of one to a dozen hours, and log-normal down intervals, which is the qualitative picture
the paper and the Failure Trace Archive describe. docs/sim.md repeats this; replace the values
with the paper's tables when they are at hand (the test checks the draws against whatever the
table says).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Weibull:
    shape: float  # k
    scale_h: float  # lambda, hours

    def draw(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        return self.scale_h * HOUR * rng.weibull(self.shape, size)

    def median_s(self) -> float:
        return float(self.scale_h * HOUR * math.log(2.0) ** (1.0 / self.shape))

    def mean_s(self) -> float:
        return self.scale_h * HOUR * math.gamma(1.0 + 1.0 / self.shape)


@dataclass(frozen=True, slots=True)
class LogNormal:
    median_h: float  # exp(mu), hours
    sigma: float  # of ln X

    def draw(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        return rng.lognormal(math.log(self.median_h * HOUR), self.sigma, size)

    def median_s(self) -> float:
        return self.median_h * HOUR

    def mean_s(self) -> float:
        return self.median_h * HOUR * math.exp(self.sigma**2 / 2.0)


@dataclass(frozen=True, slots=True)
class Gamma:
    shape: float  # k
    scale_h: float  # theta, hours

    def draw(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        return rng.gamma(self.shape, self.scale_h * HOUR, size)

    def median_s(self) -> float:
        # No closed form: Wilson-Hilferty's approximation, within 3 % for shape >= 0.5.
        k = self.shape
        return self.scale_h * HOUR * k * (1.0 - 1.0 / (9.0 * k)) ** 3

    def mean_s(self) -> float:
        return self.shape * self.scale_h * HOUR


Dist = Weibull | LogNormal | Gamma


@dataclass(frozen=True, slots=True)
class Cluster:
    """Hosts whose availability follows one pair of distributions."""

    name: str
    share: float  # of the fleet
    up: Dist
    down: Dist

    def availability(self) -> float:
        """The long-run fraction of time up: E[up] / (E[up] + E[down])."""
        return self.up.mean_s() / (self.up.mean_s() + self.down.mean_s())


# OUR CHOICE of parameters (see the module docstring: the paper's tables were not found).
CLUSTERS: tuple[Cluster, ...] = (
    Cluster("steady", 0.35, Weibull(0.6, 12.0), LogNormal(1.0, 1.2)),
    Cluster("daily", 0.40, Gamma(0.7, 8.0), LogNormal(6.0, 1.0)),
    Cluster("flaky", 0.25, LogNormal(1.0, 1.4), LogNormal(3.0, 1.3)),
)


def draw_intervals(
    rng: np.random.Generator, cluster_of: np.ndarray, cycles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up and down intervals (seconds), `cycles` of each per device: arrays (devices, cycles).

    Drawn per cluster in one numpy call each, so a fleet of 100,000 takes milliseconds."""
    n = len(cluster_of)
    up = np.empty((n, cycles))
    down = np.empty((n, cycles))
    for i, cl in enumerate(CLUSTERS):
        rows = np.flatnonzero(cluster_of == i)
        up[rows] = cl.up.draw(rng, (len(rows), cycles))
        down[rows] = cl.down.draw(rng, (len(rows), cycles))
    return up, down


def assign_clusters(rng: np.random.Generator, n: int) -> np.ndarray:
    """Each device's cluster index, by the clusters' shares."""
    shares = np.array([c.share for c in CLUSTERS])
    return rng.choice(len(CLUSTERS), size=n, p=shares / shares.sum())
