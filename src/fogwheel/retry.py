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

Several coordinators on one database are one service: `Coordinators` says which of their URLs
to ask (the same one while it answers, the next when it fails, a wait only after every one has
failed in a row), and `FailoverTransport` sends each request of an `httpx.Client` to that URL
and tells it how the request went. The transport never sends a request twice itself: whether a
request may be sent again is the caller's decision (`may_resend`), since only it knows whether
the request is idempotent.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from fogwheel.core.urls import coordinator_base

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

    def __init__(
        self, policy: Backoff, *, budget_s: float | None, start: float, urls: int = 1
    ) -> None:
        """`urls`: how many coordinators share the tries; only a full round of them waits,
        so each wait of the policy stands for that many tries."""
        self.policy = policy
        self.tried = 0
        self.deadline = None if budget_s is None else start + budget_s
        limit = policy.attempts if budget_s is None else policy.attempts_within(budget_s)
        self.limit = limit * max(1, urls)

    def failed(self, now: float) -> bool:
        """Count a failed try; True when another may follow (then wait `self.delay()`)."""
        self.tried += 1
        if self.deadline is not None:
            return now < self.deadline and self.tried < self.limit
        return self.tried < self.limit

    def delay(self, rounds: int | None = None) -> float:
        """The wait before the next try: after the `rounds`-th round of failures (default:
        after the `tried`-th try, one coordinator)."""
        return self.policy.delay(self.tried if rounds is None else rounds)

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


# Answers that say this coordinator (or the balancer in front of it) cannot serve now, where
# another may: a gateway with no live upstream, one coming up or going down, a slow upstream.
FAILOVER_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def coordinator_urls(value: str | Sequence[str]) -> list[str]:
    """The base URLs of several coordinators of one fog, from a list or a comma-separated
    string ("http://a:8470,http://b:8470"), each normalised by `coordinator_base`, repeats
    dropped, order kept (the first is asked first). ValueError names a bad one."""
    items = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for piece in (p for item in items for p in item.split(",")):
        if piece.strip() and (base := coordinator_base(piece)) not in urls:
            urls.append(base)
    if not urls:
        raise ValueError("no coordinator URL: write one as http://HOST:PORT, several with commas")
    return urls


def may_resend(method: str, *, idempotent: bool | None, sent: bool) -> bool:
    """Whether a request that failed may be sent again (here or to another coordinator).

    One that surely never left (`sent=False`: the connection was refused or never made) may
    always; one that may have been acted on only when doing it twice is the same as once: the
    idempotent methods, or a POST its caller vouches for (`idempotent=True`: a submit with a
    client token, a cancel, a read such as the results poll)."""
    if not sent:
        return True
    if idempotent is not None:
        return idempotent
    return method.upper() in IDEMPOTENT_METHODS


def surely_unsent(exc: BaseException) -> bool:
    """Whether a transport error happened before any byte of the request left: no
    connection was made, so no coordinator can have acted on it."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class Coordinators:
    """Which of several equal coordinators to ask: the same one while it answers, the next
    in order when it fails, and a wait only once every one has failed in a row.

    Sticking to one URL keeps a client's long-polls and its uploads' partials on one
    process while it lives; any other would do, since they share one database. Thread-safe:
    an SDK's results watcher and its caller's thread share one."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("no coordinator URL")
        self.urls = tuple(urls)
        self._at = 0
        self._failures = 0  # in a row, across the URLs, since the last answer
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        with self._lock:
            return self.urls[self._at]

    def failed(self, url: str) -> None:
        """`url` did not answer (or answered "not now"): the next request goes to the next
        one. A failure of a URL already left behind (another thread moved on) is news to
        nobody and moves nothing."""
        with self._lock:
            if self.urls[self._at] != url:
                return
            self._at = (self._at + 1) % len(self.urls)
            self._failures += 1

    def answered(self, url: str) -> None:
        """`url` answered: the round of failures is over."""
        with self._lock:
            if self.urls[self._at] == url:
                self._failures = 0

    def rounds_failed(self) -> int:
        """How many full rounds of the URLs have failed in a row (wait after each)."""
        with self._lock:
            return self._failures // len(self.urls)

    def round_ended(self) -> bool:
        """Whether the last failure finished a round: every URL failed in a row, so wait
        before the next try rather than hammer them again at once."""
        with self._lock:
            return self._failures > 0 and self._failures % len(self.urls) == 0

    def base_of(self, url: httpx.URL | str) -> str:
        """The coordinator URL that `url` (a request's) went to."""
        text = str(url)
        for base in self.urls:
            if text == base or text.startswith(base + "/"):
                return base
        return self.current


class FailoverTransport(httpx.BaseTransport):
    """An httpx transport that sends each request to the coordinator `Coordinators` names
    now, and tells it how the request went (a transport error or a 502/503/504 fails that
    URL, any other answer clears it). It never sends a request again itself.

    The client above it is built with the first URL as its base; a request under that base
    is moved to the current one (its Host header too); any other URL goes as it is."""

    def __init__(self, coordinators: Coordinators, inner: httpx.BaseTransport) -> None:
        self.coordinators = coordinators
        self.inner = inner
        self._first = coordinators.urls[0]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        text = str(request.url)
        base = self.coordinators.current
        if base != self._first and (text == self._first or text.startswith(self._first + "/")):
            request.url = httpx.URL(base + text[len(self._first) :])
            request.headers["host"] = request.url.netloc.decode("ascii")
        target = self.coordinators.base_of(request.url)
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self.coordinators.failed(target)
            raise
        if response.status_code in FAILOVER_STATUSES:
            self.coordinators.failed(target)
        else:
            self.coordinators.answered(target)
        return response

    def close(self) -> None:
        self.inner.close()
