"""Trust nobody's device: reputation, adaptive spot checks, quorum verdicts, quarantine.

The anchor is BOINC's adaptive replication (a host earns trust with consecutive valid results
and its jobs are then replicated only sometimes). fogwheel keeps the idea and tightens it:
- a new node's every result is checked against another node's until it has a streak of
  `PROBATION` agreed results;
- after that a result is spot-checked with a probability that falls as the streak grows,
  `max(MIN_CHECK_RATE, PROBATION / streak)`, so a proven node costs ~5-10 % extra work, never 0;
- one disputed result quarantines a node (no work, no pay for the disputed work) and its
  recent unchecked results are checked again.
Everything here is pure: the shell supplies the random draws.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from fogwheel.core.frozen import fast_init

PROBATION = 10  # agreed results in a row before a node's results may go unchecked
MIN_CHECK_RATE = 0.05  # a proven node is still spot-checked this often, forever
QUORUM = 2  # matching results from distinct nodes that make a checked result agreed
MAX_REPLICAS = 5  # results gathered for one task before it fails for lack of agreement


@fast_init
@dataclass(frozen=True, slots=True)
class Record:
    """A node's track record as a verifier sees it."""

    agreed: int = 0
    disputed: int = 0
    streak: int = 0  # agreed results since the last dispute (or since joining)
    quarantined: bool = False


def reputation(rec: Record) -> float:
    """A Beta(1, 1) posterior mean of honesty in which one dispute weighs like ten agreements."""
    return (rec.agreed + 1) / (rec.agreed + 10 * rec.disputed + 2)


def check_rate(rec: Record) -> float:
    """Probability that a result from this node is checked against another node's."""
    if rec.quarantined or rec.streak < PROBATION:
        return 1.0
    return max(MIN_CHECK_RATE, min(1.0, PROBATION / rec.streak))


def quorum_for(rec: Record, draw: float) -> int:
    """How many matching results the task whose first result came from `rec` needs.

    `draw` is uniform in [0, 1) from the shell's random source."""
    return QUORUM if draw < check_rate(rec) else 1


def record_after(rec: Record, agreed: bool) -> Record:
    """The record after one verdict on this node's result."""
    if agreed:
        return Record(rec.agreed + 1, rec.disputed, rec.streak + 1, rec.quarantined)
    return Record(rec.agreed, rec.disputed + 1, 0, True)


@fast_init
@dataclass(frozen=True, slots=True)
class Accept:
    """`digest` is agreed; `agreeing` nodes earn credit, `disputing` ones are quarantined."""

    digest: str
    agreeing: tuple[str, ...]
    disputing: tuple[str, ...]
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not decided yet: `replicas` more results from nodes not in `exclude` are needed."""

    replicas: int
    exclude: frozenset[str]
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """No agreement within MAX_REPLICAS results: the task fails with `reason`."""

    disputing: tuple[str, ...]
    reason: str


Verdict = Accept | NeedMore | Reject

_VOTES = operator.itemgetter(1)


def verdict(
    results: Sequence[tuple[str, str]], quorum: int, outstanding: int, involved: frozenset[str]
) -> Verdict:
    """Decide on a task from its results so far: `(node, digest)` pairs, one per node.

    `outstanding` replicas are still running; `involved` is every node that ever held one
    (they may not hold another: replicas go to distinct nodes)."""
    if not results:
        return NeedMore(max(0, 1 - outstanding), involved, "no result yet")
    counts: dict[str, int] = {}  # digest -> votes, in the order first seen
    for _, d in results:
        counts[d] = counts.get(d, 0) + 1
    if len(counts) == 1:  # one answer (the common case): it is the most voted, untied
        digest, votes = next(iter(counts.items()))
        if votes >= quorum:  # every result agrees: nobody disputes
            agreeing = tuple(sorted([n for n, _ in results]))
            why = (
                f"{votes} of {len(results)} results agree"
                if quorum > 1
                else f"accepted unchecked from {agreeing[0]}"
            )
            return Accept(digest, agreeing, (), why)
        tied = False
    else:
        digest, votes = max(counts.items(), key=_VOTES)  # the first most voted (most_common)
        tied = sum(1 for n in counts.values() if n == votes) > 1
    if votes >= quorum and not tied:
        agreeing = tuple(sorted(n for n, d in results if d == digest))
        disputing = tuple(sorted(n for n, d in results if d != digest))
        why = (
            f"{votes} of {len(results)} results agree"
            if quorum > 1
            else f"accepted unchecked from {agreeing[0]}"
        )
        return Accept(digest, agreeing, disputing, why)
    if len(results) + outstanding >= MAX_REPLICAS:
        if outstanding:
            return NeedMore(0, involved, f"waiting for {outstanding} running replicas")
        return Reject(
            tuple(sorted(n for n, _ in results)),
            f"results disagree: {len(counts)} different answers from {len(results)} nodes",
        )
    room = MAX_REPLICAS - len(results) - outstanding
    need = min(max(quorum - votes, 1 if tied else 0) - outstanding, room)
    if len(counts) > 1:
        why = f"{len(counts)} different answers so far; asking another node"
    else:
        why = f"checking {results[0][0]}'s result on another node"
    return NeedMore(max(0, need), involved, why)
