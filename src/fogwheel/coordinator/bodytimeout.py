"""Cut off request bodies that come too slowly with 408, holding no worker thread meanwhile.

uvicorn bounds idle keep-alive connections but not a body in flight: a client that sends its
headers and then trickles the body (or stops) would keep the request open for ever. This ASGI
middleware waits for each piece of the body on the event loop with a deadline. Two rules, as
nginx's `client_body_timeout` and Apache's mod_reqtimeout `MinRate` have them:

- idle: no byte for `idle_s` seconds ends the request;
- rate: after the first `idle_s` seconds, the body must keep up an average of `min_rate`
  bytes a second, so one byte every few seconds cannot hold a request open either.

Only the body is timed: once it is complete, `receive` is passed through untouched (streaming
responses wait on it to hear of a disconnect).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.exceptions import HTTPException


class BodyTimeout:
    """ASGI middleware: a deadline on every `receive` until the request body is complete."""

    def __init__(self, app: Any, idle_s: float = 30.0, min_rate: float = 1024.0) -> None:
        self.app = app
        self.idle_s = idle_s
        self.min_rate = min_rate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        seen = 0
        done = False

        async def timed() -> dict[str, Any]:
            nonlocal seen, done
            if done:
                return await receive()  # type: ignore[no-any-return]
            now = time.monotonic()
            # the rate rule's deadline: when `seen` bytes fall behind min_rate * elapsed
            by_rate = start + max(self.idle_s, seen / self.min_rate)
            wait = min(self.idle_s, by_rate - now)
            if wait <= 0:
                raise _TooSlow(self._too_slow(seen, now - start))
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                raise _TooSlow(self._too_slow(seen, time.monotonic() - start)) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
            else:
                done = True  # http.disconnect: nothing more will come
            return message  # type: ignore[no-any-return]

        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed, tracked)
        except _TooSlow as e:
            # The app let it through unanswered; otherwise its own handler already sent the 408.
            if not started:
                await _refuse(send, 408, str(e.detail))

    def _too_slow(self, seen: int, elapsed: float) -> str:
        return (
            f"the request body came too slowly ({seen} bytes in {elapsed:.0f} s; at most "
            f"{self.idle_s:g} s without a byte and at least {self.min_rate:g} bytes/s are "
            "needed): send it again on a faster connection"
        )


async def _refuse(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooSlow(HTTPException):
    """Raised from `receive`, so that the app answers 408 in its own error format; the
    connection is closed after the answer, since the rest of the body was never read."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message, headers={"connection": "close"})
