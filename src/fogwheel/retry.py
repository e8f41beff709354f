"""Retry with back-off, said out loud: one policy for the SDK, the agent and the CLI.

A request that fails for a reason that may heal by waiting (the coordinator restarting, a
refused or reset connection, HTTP 5xx or 429) is retried after a delay that doubles up to a
cap; each retry is announced ("retrying http://127.0.0.1:1 (connection refused), 3 of 8") so
that no wait is silent. A failure that waiting will not heal is not retried: an unknown host
(a DNS answer of "no such name") fails at once.

`Backoff` is the policy, `why_retry` classifies a transport error, and `Attempts` counts the
tries of one request against either a number of attempts or a time budget (a client that has
reached its coordinator before keeps trying through a restart; one that never has gives up
after `attempts` tries). Nothing here sleeps or reads the clock: the caller passes `now`.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

# getaddrinfo's answers that mean the name does not exist (not "try again later").
_NO_SUCH_NAME = {
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY", "EAI_FAIL", "EAI_SERVICE")
    if hasattr(socket, name)
}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between tries: `first_s`, doubled each time, never above `max_s`."""

    attempts: int = 8
    first_s: float = 0.25
    max_s: float = 2.0

    def delay(self, tried: int) -> float:
        """Seconds to wait after the `tried`-th failed try (1-based)."""
        return float(min(self.max_s, self.first_s * 2.0 ** max(0, tried - 1)))

    def attempts_within(self, budget_s: float) -> int:
        """How many tries fit in `budget_s` seconds of waiting (at least `attempts`)."""
        n, waited = 1, 0.0
        while waited + self.delay(n) <= budget_s and n < 10_000:
            waited += self.delay(n)
            n += 1
        return max(self.attempts, n)


class Attempts:
    """The tries of one request: `failed(now)` counts one and says whether to try again."""

    def __init__(self, policy: Backoff, *, budget_s: float | None, start: float) -> None:
        self.policy = policy
        self.tried = 0
        self.deadline = None if budget_s is None else start + budget_s
        self.limit = policy.attempts if budget_s is None else policy.attempts_within(budget_s)

    def failed(self, now: float) -> bool:
        """Count a failed try; True when another may follow (then wait `self.delay()`)."""
        self.tried += 1
        if self.deadline is not None:
            return now < self.deadline and self.tried < self.limit
        return self.tried < self.limit

    def delay(self) -> float:
        return self.policy.delay(self.tried)

    def announce(self, url: str, why: str) -> str:
        """The line that says a retry comes: "retrying URL (why), 3 of 8"."""
        return f"retrying {url} ({why}), {self.tried} of {self.limit}"


def why_retry(exc: BaseException) -> str | None:
    """A few words for a transport error that may heal by waiting ("connection refused",
    "timed out", …), or None for one that will not (an unknown host)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return None if e.errno in _NO_SUCH_NAME else "name lookup failed"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable"
        e = e.__cause__ or e.__context__
    name = type(exc).__name__
    if "Timeout" in name:
        return "timed out"
    if "Protocol" in name or "Read" in name or "Write" in name:
        return "connection dropped"
    return str(exc)[:80] or name


def is_unknown_host(exc: BaseException) -> bool:
    """Whether `exc` says the host name does not exist (retrying will not help)."""
    return why_retry(exc) is None
