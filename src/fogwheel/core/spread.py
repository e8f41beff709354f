"""How well a CDN segment's shares are spread over devices, as pure functions.

A segment is erasure-coded k-of-n: any k of its n shares rebuild it. Its shares protect it only
as far as they sit on *different* devices: eight shares on three devices survive far fewer
failures than eight shares on eight. So a segment is judged by its holders, not by its share
count:

- `full`: all n shares on live devices, n distinct devices among them;
- `degraded`: at least k shares on live devices, and it survives the loss of any one device,
  but fewer than n shares or fewer than n distinct devices;
- `at_risk`: k or more shares now, but one device holds so many that losing it leaves fewer
  than k (one device failure from needing the origin);
- `below_k`: fewer than k shares on live devices: peers alone cannot rebuild it.

The origin (the coordinator's blob store) keeps every share, so a segment below k is still
served, from the origin, while the coordinator lives; the states say how much the fog itself
can be relied on. Nothing here reads a clock or a database: store/cdn.py feeds it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

STATES = ("full", "degraded", "at_risk", "below_k")


@dataclass(frozen=True, slots=True)
class Spread:
    """One segment: shares on live devices, distinct devices, the worst single loss."""

    shares: int  # distinct shares held by at least one live device
    devices: int  # distinct live devices holding any of its shares
    after_one_loss: int  # shares left when the device whose loss hurts most is gone
    state: str  # one of STATES


def spread(holders: Mapping[str, Collection[str]], k: int, n: int) -> Spread:
    """Judge a segment from `holders`: share -> the live devices holding it."""
    held = {share: set(devs) for share, devs in holders.items() if devs}
    devices = set().union(*held.values()) if held else set()
    shares = len(held)
    # losing device d loses the shares that only d holds
    after = min((sum(1 for devs in held.values() if devs != {d}) for d in devices), default=0)
    if shares < k:
        state = "below_k"
    elif after < k:
        state = "at_risk"
    elif shares >= n and len(devices) >= n:
        state = "full"
    else:
        state = "degraded"
    return Spread(shares, len(devices), after, state)


def worst(states: Collection[str]) -> str:
    """The worst of several segments' states (`full` for none)."""
    return max(states, key=STATES.index, default="full")


def too_few_devices(devices: int, k: int, n: int) -> str | None:
    """A warning for a publisher whose fog has fewer live serving devices than n, or None.

    It says what the spread will be (shares placed evenly, at most one a device while any is
    free of the segment) and what one or two device failures do to it, and what to change."""
    if devices >= n:
        return None
    if devices <= 0:
        return (
            f"no live device serves CDN shares: every fetch of these {n} shares a segment comes "
            "from the origin until nodes with a chunk server join (start `fogwheel node`)"
        )
    most = math.ceil(n / devices)  # the most shares of a segment one device will hold
    left = n - most
    plural = "s" if devices != 1 else ""
    said = (
        f"{devices} live device{plural} for n={n}: a segment's shares will sit on {devices} "
        f"device{plural}, up to {most} on one; "
    )
    if left >= k:
        said += f"losing 1 device still leaves {left} shares (k={k} rebuilds)"
    else:
        said += (
            f"losing 1 device can leave {max(left, 0)} shares, fewer than k={k}: the fog "
            "alone can no longer rebuild the segment (fetches fall back to the origin)"
        )
    k_hint = min(k, max(1, devices - 1))
    return f"{said} — add devices or use --n {devices} --k {k_hint}"
