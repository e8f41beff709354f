"""Refuse a node's calls past its rate with 429, before the body is read (core/ratelimit.py).

ASGI middleware in front of everything under `/v1/nodes/me/`: the caller is its bearer
credential (hashed, never kept as is), so that the check needs neither the database nor the
body; a call without credentials goes on, and authentication answers it 401. Runs on the
event loop, one call at a time: the buckets need no lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from fogwheel.core import ratelimit
from fogwheel.errors import ConfigError

NODE_PATHS = "/v1/nodes/me/"


def limit_from_env() -> ratelimit.Limit:
    """FOGWHEEL_NODE_SYNC_RATE (calls a second per node; 0: off) and FOGWHEEL_NODE_SYNC_BURST."""
    rate = os.environ.get("FOGWHEEL_NODE_SYNC_RATE")
    burst = os.environ.get("FOGWHEEL_NODE_SYNC_BURST")
    try:
        r = float(rate) if rate else ratelimit.DEFAULT_RATE
        b = float(burst) if burst else max(ratelimit.DEFAULT_BURST, 2 * r)
        return ratelimit.Limit(r, b)
    except ValueError as e:
        raise ConfigError(f"FOGWHEEL_NODE_SYNC_RATE / FOGWHEEL_NODE_SYNC_BURST: {e}") from None


class NodeRate:
    """ASGI middleware: one token bucket per node credential on the node routes."""

    def __init__(
        self,
        app: Any,
        limit: ratelimit.Limit,
        *,
        on_limited: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.buckets = ratelimit.Buckets(limit)
        self.on_limited = on_limited
        self.clock = clock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or self.buckets.limit.off
            or not scope.get("path", "").startswith(NODE_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        key = _caller(scope)
        wait = 0.0 if key is None else self.buckets.take(key, self.clock())
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        if self.on_limited is not None:
            self.on_limited()
        limit = self.buckets.limit
        body = json.dumps(
            {
                "error": f"this node calls faster than its {limit.rate:g} a second (bursts of "
                f"{limit.burst:g}): wait {ratelimit.retry_after(wait)} s, as Retry-After says, "
                "and sync at the pace the coordinator's answers ask for"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", ratelimit.retry_after(wait).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _caller(scope: dict[str, Any]) -> bytes | None:
    """The bearer credential's digest: the bucket's key (None: no credential sent)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return hashlib.blake2b(value, digest_size=16).digest()
    return None
