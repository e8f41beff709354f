"""Owners: who may join, whose results count as one vote, and whose crashes count.

An owner is an account the operator creates; it holds devices, join tokens and earnings. Only
the operator can make owners, so an owner is the scarce identity and a device is not: anyone
with a join token can join devices (Sybils), up to the token's cap and rate. Hence:

- **Joins** (`admit`): a token admits at most `max_devices` devices, at most `rate_per_hour`
  a hour (a token bucket holding `burst(rate)` joins), until it expires or is revoked — the
  shape of Kubernetes' bootstrap tokens with a usage limit.
- **Votes** (`voter`): results from devices of one owner count as one vote, so colluding
  devices of one owner never out-vote another owner's device. The operator's own devices (the
  default owner, whose token is the coordinator's `--join-token`) each vote alone: the
  operator vouches that they are distinct machines. Hand that token only to your own devices.
- **Placement** (`barred`): a copy of a task goes to a device whose voter and whose network
  (/24 of IPv4, /48 of IPv6) have not held a copy of it yet. Loopback and private addresses
  say nothing about where a device is (a local fog is all 127.0.0.1): no network rule there.
- **Crashes** (`failure_verdict`): BOINC counts client errors against `max_error_results`;
  here a device's crash or lost lease counts against the task's `max_attempts` only when the
  device is proven (past probation) and its voter has not failed the task before. Any other
  failure gives the task one more attempt. A task that keeps failing everywhere still ends:
  after `POISON_FAILURES` failures of any kind it fails.
Everything here is pure.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fogwheel.core import ratelimit

OPERATOR = "operator"  # the default owner: the operator's own devices
CLAIM_MAX_CORES = 64  # what a device may claim at join; more is not believed
CLAIM_MAX_MEMORY_MB = 1 << 20  # 1 TB
CLAIM_MAX_DISK_MB = 1 << 26  # 64 TB
TOKEN_MAX_DEVICES = 100  # default device cap of a token made with `fogwheel tokens create`
TOKEN_RATE_PER_HOUR = 60.0  # default join rate of such a token
FLAG_MAX_DEVICES = 10_000  # the coordinator's --join-token (the operator's own devices)
FLAG_RATE_PER_HOUR = 36_000.0
POISON_FAILURES = 12  # failures of any kind after which a task fails anyway


# -- joins ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A join token's limits and counters, as the store keeps them."""

    owner: str
    max_devices: int
    rate_per_hour: float
    joined: int = 0  # devices admitted so far
    bucket: float = 0.0  # joins the bucket held at `bucket_at`
    bucket_at: float = 0.0
    expires_at: float | None = None
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Admit:
    """Join; the token's counters become `token`."""

    token: Token


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not join: `status` is the HTTP status (401 gone, 403 used up, 429 too fast)."""

    status: int
    reason: str
    retry_after_s: float | None = None


def burst(rate_per_hour: float) -> float:
    """Joins a full bucket holds: a tenth of an hour's rate, at least one."""
    return max(1.0, math.floor(rate_per_hour / 10))


def bucket_now(tok: Token, now: float) -> float:
    """The bucket's joins at `now`: refilled at the token's rate, up to `burst`."""
    limit = ratelimit.Limit(tok.rate_per_hour / 3600.0, burst(tok.rate_per_hour))
    return ratelimit.refill(ratelimit.Bucket(tok.bucket, tok.bucket_at), limit, now)


def admit(tok: Token, now: float) -> Admit | Refuse:
    """Whether one more device may join with `tok` at `now`."""
    if tok.revoked:
        return Refuse(
            401, "this join token was revoked: ask its owner or the operator for a new one"
        )
    if tok.expires_at is not None and now >= tok.expires_at:
        return Refuse(401, "this join token has expired: ask the operator for a new one")
    if tok.joined >= tok.max_devices:
        return Refuse(
            403,
            f"this join token has admitted its {tok.max_devices} devices: "
            "ask the operator for a token with a higher --max-devices",
        )
    have = bucket_now(tok, now)
    if have < 1.0:
        wait = (1.0 - have) * 3600.0 / tok.rate_per_hour
        return Refuse(
            429,
            f"too many joins with this token (at most {tok.rate_per_hour:g} an hour): "
            f"try again in {math.ceil(wait)} s",
            retry_after_s=wait,
        )
    return Admit(
        Token(
            tok.owner,
            tok.max_devices,
            tok.rate_per_hour,
            tok.joined + 1,
            have - 1.0,
            now,
            tok.expires_at,
            tok.revoked,
        )
    )


def bounded_claim(cores: int, memory_mb: int, disk_mb: int) -> tuple[int, int, int]:
    """A device's claimed resources, capped at what a device can really have."""
    return (
        max(1, min(cores, CLAIM_MAX_CORES)),
        max(16, min(memory_mb, CLAIM_MAX_MEMORY_MB)),
        max(0, min(disk_mb, CLAIM_MAX_DISK_MB)),
    )


# -- who a device is: its vote, its network -------------------------------------------------


def network_of(host: str | None) -> str | None:
    """The network a device connects from (/24 of IPv4, /48 of IPv6); None when the address
    tells nothing (loopback, private, link-local, unparsable)."""
    if not host:
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def voter(node: str, owner: str | None) -> str:
    """Whose vote a device's result is: its owner's, except the operator's own devices (and
    devices that joined before owners existed), which each vote alone."""
    if owner is None or owner == OPERATOR:
        return f"node:{node}"
    return f"owner:{owner}"


@dataclass(frozen=True, slots=True)
class Device:
    """A device as placement and verification see it."""

    node: str
    owner: str | None = None
    network: str | None = None

    @property
    def voter(self) -> str:
        return voter(self.node, self.owner)


def barred(asking: Device, held: Iterable[Device]) -> bool:
    """Whether `asking` may not take a copy of a task that the `held` devices held or ran:
    one of them is the same device, belongs to the same voter, or is on the same network."""
    for d in held:
        if d.node == asking.node or d.voter == asking.voter:
            return True
        if asking.network is not None and d.network == asking.network:
            return True
    return False


# -- crashes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """A device's crash or lost lease of a task."""

    voter: str
    proven: bool  # the device is past probation (core/trust.py)


COUNT, REFUND, GIVE_UP = "count", "refund", "give-up"


def failure_verdict(this: Failure, earlier: Sequence[Failure]) -> str:
    """What a failure does to its task: COUNT (uses up one of its `max_attempts`), REFUND
    (the task gets one more attempt: a new device, or an owner that failed it already,
    cannot exhaust another customer's task) or GIVE_UP (it failed on so many devices that
    the task itself is the likely cause)."""
    if len(earlier) + 1 >= POISON_FAILURES:
        return GIVE_UP
    if not this.proven:
        return REFUND
    if any(e.proven and e.voter == this.voter for e in earlier):
        return REFUND
    return COUNT


def gave_up() -> str:
    """The clause a task that GIVE_UP failed carries."""
    return (
        f"gave up after {POISON_FAILURES} failures on devices: the task itself is the likely cause"
    )
