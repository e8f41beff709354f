"""Who is asking: every request but /v1/health carries `Authorization: Bearer <secret>`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException, Request

from fogwheel.store import Principal, Store

# How long a revoked key may still work on another coordinator process, when the channel
# that tells the peers of revocations (coordinator/wakeups.py) is down or absent.
_CACHE_SECONDS = 10.0
_CACHE_MAX = 100_000  # principals cached: a fleet of 10,000 devices and its customers fit
REVOKED = "revoked"  # the peers' channel topic that says a key was revoked (wakeups.py)
_CHALLENGE = {"www-authenticate": 'Bearer realm="fogwheel"'}
# Every kind of principal, and what its secret is called (a 401 names the kinds it takes).
KINDS = ("customer", "admin", "owner", "node", "metrics")
_KEY_NAMES = {
    "customer": "a customer API key",
    "admin": "the admin key",
    "owner": "an owner key",
    "node": "a node credential",
    "metrics": "a metrics key",
}


def _kinds_words(kinds: tuple[str, ...]) -> str:
    """'a customer API key or a node credential'."""
    return " or ".join(_KEY_NAMES.get(k, f"a {k} key") for k in kinds)


class Authenticator:
    """Looks secrets up by their hash, with a short cache so that hot paths skip the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, Principal]] = {}
        self.peers: Any = None  # a PgWakeups, set by the server on PostgreSQL

    def principal(self, request: Request, kinds: tuple[str, ...] = ()) -> Principal:
        """Who sent `request`; 401 (naming the key `kinds` this endpoint takes, all when none
        are given) when no key was sent or the key is unknown or revoked."""
        takes = f"this endpoint takes {_kinds_words(kinds or KINDS)}"
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise HTTPException(
                401,
                f"missing credentials: send the header 'Authorization: Bearer <key>'; {takes}",
                headers=_CHALLENGE,
            )
        secret = secret.strip()
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        who = self.store.authenticate(secret)
        if who is None:
            raise HTTPException(401, f"unknown or revoked key: {takes}", headers=_CHALLENGE)
        if len(self._cache) >= _CACHE_MAX:
            self._evict(now)
        self._cache[secret] = (now, who)
        return who

    def _evict(self, now: float) -> None:
        """Drop the expired entries, and if that is not enough the older half.

        Clearing the whole cache instead (as once) made a fleet of more than `_CACHE_MAX`
        nodes look every credential up again at once, and every few seconds after."""
        for key in [k for k, (at, _) in self._cache.items() if now - at >= _CACHE_SECONDS]:
            del self._cache[key]
        if len(self._cache) >= _CACHE_MAX:  # all fresh: keep the newer half (insertion order)
            for key in list(self._cache)[: len(self._cache) // 2]:
                del self._cache[key]

    def answers_at_once(self, request: Request) -> bool:
        """Whether `principal(request)` needs no database (no key sent, or a fresh cache hit):
        an async caller may then ask on the event loop instead of in a worker thread."""
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return True
        hit = self._cache.get(secret.strip())
        return hit is not None and time.monotonic() - hit[0] < _CACHE_SECONDS

    def forget(self) -> None:
        """Drop every cached principal after a revocation, here and (told through the
        database) on every other coordinator process: they all ask the store again at once."""
        self._cache.clear()
        if self.peers is not None:
            self.peers.send(REVOKED)

    def forget_local(self) -> None:
        """A peer revoked a key: drop this process's cached principals."""
        self._cache.clear()

    def require(self, request: Request, *kinds: str) -> Principal:
        who = self.principal(request, kinds)
        if who.kind == "metrics" and who.kind not in kinds:
            raise HTTPException(
                403,
                "a metrics key reads /metrics and nothing else: this endpoint is for "
                f"{' or '.join(kinds)} keys",
            )
        if who.kind not in kinds:
            raise HTTPException(
                403,
                f"this endpoint is for {' or '.join(kinds)} keys, not for "
                f"{'an' if who.kind[0] in 'aeiou' else 'a'} {who.kind} key",
            )
        return who
