"""Which pseudo-gradients to doubt, which devices to audit, and what to undo when one lies.

Three decisions of Byzantine-robust DiLoCo (workloads/diloco_guard.py carries them out):

- `judge_updates`: Templar's Gauntlet idea (score a peer's update by its effect on the loss).
  Worker k's update applied alone to the global weights is worker k's own local model; its
  loss on a held-out batch against the global weights' loss says whether it learned anything.
  An update whose loss lies well above its peers' median (or far above the global
  weights') is a *suspect*: left out of this round's outer step and audited next.
- `audit_plan`: BTARD's random recomputation (Gorbunov et al., ICML 2022): every suspect,
  plus each other worker with probability `rate` (the shell passes the draws in), has its
  next round recomputed from the same seed and state on a second device; the coordinator's
  quorum judges the copies and quarantines the device whose copy disagrees (core/trust.py).
- `updates_to_undo`: a device caught lying has its updates since its last verified one
  dropped: the rounds from the first of them on are taken again without them.

Pure: no clock, no I/O, no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PEER_MARGIN = 0.08  # relative to the base loss: this far above the median update's is doubted
SPREAD_FACTOR = 3.0  # or this many median absolute deviations of the round's losses, if wider
ABSOLUTE_MARGIN = 0.25  # relative: an update this much worse than the global weights, alone


@dataclass(frozen=True, slots=True)
class Passed:
    """The update helped about as much as its peers' did."""

    worker: int
    gain: float  # base loss minus the loss after the update, on the held-out batch
    reason: str


@dataclass(frozen=True, slots=True)
class Suspect:
    """The update is left out of this round and its worker audited next round."""

    worker: int
    gain: float
    reason: str


UpdateVerdict = Passed | Suspect


def judge_updates(base_loss: float, losses: Sequence[tuple[int, float]]) -> list[UpdateVerdict]:
    """Verdicts on the round's updates from their held-out losses, `(worker, loss)` pairs.

    `base_loss` is the global weights' loss on the same windows. An update is a suspect if
    its loss is not finite, lies above the median update's by more than PEER_MARGIN of the
    base loss (or SPREAD_FACTOR median absolute deviations of the round's losses, if that is
    wider), or above the base loss itself by more than ABSOLUTE_MARGIN of it. Judged against
    its peers, not against the global weights: an honest worker's local model is often worse
    on held-out text than the averaged global one (after a warm start, every honest update of
    bench/diloco_sweep.py's probe raised it, by 0.01-0.14 nats of ~1.3-1.8, while sign-flipped
    ones did by 0.2-0.9 and updates trained on other data by 2-7). The median is over every
    update, so a minority of liars cannot move it far."""
    if not math.isfinite(base_loss):
        raise ValueError(f"the global weights' loss is {base_loss}: nothing can be judged")
    finite = [loss for _, loss in losses if math.isfinite(loss)]
    median = statistics.median(finite) if finite else base_loss
    spread = statistics.median(abs(x - median) for x in finite) if finite else 0.0
    margin = max(PEER_MARGIN * abs(base_loss), SPREAD_FACTOR * spread)
    ceiling = ABSOLUTE_MARGIN * abs(base_loss)
    out: list[UpdateVerdict] = []
    for k, loss in losses:
        gain = base_loss - loss
        if not math.isfinite(loss):
            out.append(Suspect(k, gain, "its update makes the held-out loss non-finite"))
        elif loss - median > margin:
            out.append(
                Suspect(
                    k,
                    gain,
                    f"its update's held-out loss is {loss - median:.4g} nats above the median "
                    f"update's {median:.4g} (margin {margin:.4g})",
                )
            )
        elif loss - base_loss > ceiling:
            out.append(Suspect(k, gain, f"its update raises the held-out loss by {-gain:.4g} nats"))
        else:
            out.append(Passed(k, gain, f"held-out loss {loss:.4g} (median update {median:.4g})"))
    return out


def audit_plan(
    workers: Sequence[int], suspects: Iterable[int], rate: float, draws: Sequence[float]
) -> list[int]:
    """The workers whose next round is recomputed on a second device: every suspect among
    `workers`, and each other one whose draw (uniform in [0, 1), one per worker, from the
    shell's random source) is below `rate`. In worker order."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the audit rate must be in [0, 1], not {rate}")
    if len(draws) != len(workers):
        raise ValueError(f"{len(draws)} draws for {len(workers)} workers")
    doubted = set(suspects)
    return sorted(k for k, d in zip(workers, draws, strict=True) if k in doubted or d < rate)


@dataclass(frozen=True, slots=True)
class Contribution:
    """One update that went into an outer step: round, worker, the device that sent it, and
    whether the coordinator's quorum verified it (an audited round that agreed)."""

    round: int
    worker: int
    node: str
    verified: bool = False


def updates_to_undo(ledger: Sequence[Contribution], caught: frozenset[str]) -> list[Contribution]:
    """The contributions of `caught` devices after each one's last verified contribution
    (all of them when it never had one verified), oldest first: what must leave the model."""
    last_verified: dict[str, int] = {}
    for c in ledger:
        if c.node in caught and c.verified:
            last_verified[c.node] = max(last_verified.get(c.node, -1), c.round)
    return sorted(
        (
            c
            for c in ledger
            if c.node in caught and not c.verified and c.round > last_verified.get(c.node, -1)
        ),
        key=lambda c: (c.round, c.worker),
    )


def replay_from(undo: Sequence[Contribution]) -> int | None:
    """The first round to take again (from the weights before it), or None: nothing to undo."""
    return min((c.round for c in undo), default=None)
