"""Refuse request bodies over a size limit with 413, before they are read into memory.

A blob upload (`PUT /v1/blobs/…`) has a limit of its own, `blob_max_bytes`: its route streams
the body to disk rather than holding it (coordinator/app.py `put_blob`)."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException


class BodyLimit:
    """ASGI middleware: checks Content-Length up front and counts streamed bytes as they come."""

    def __init__(self, app: Any, max_bytes: int, blob_max_bytes: int | None = None) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.blob_max_bytes = blob_max_bytes or max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_blob = scope.get("method") == "PUT" and scope.get("path", "").startswith("/v1/blobs/")
        limit = self.blob_max_bytes if is_blob else self.default_max_bytes
        await self._limited(scope, receive, send, limit, is_blob)

    async def _limited(
        self, scope: dict[str, Any], receive: Any, send: Any, max_bytes: int, is_blob: bool
    ) -> None:
        too_big = self._too_big(max_bytes, is_blob)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(send, 400, "Content-Length is not a number")
                    return
                if declared > max_bytes:
                    await self._refuse(send, 413, too_big)
                    return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _TooLarge(too_big)
            return message

        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            # The app let it through unanswered; otherwise its own handler already sent the 413.
            if not started:
                await self._refuse(send, 413, too_big)

    @staticmethod
    def _too_big(max_bytes: int, is_blob: bool) -> str:
        if is_blob:
            return (
                f"blob over the coordinator's blob limit of {max_bytes} bytes "
                "(the operator sets it with `fogwheel coordinator --max-blob-mb`)"
            )
        return (
            f"request body over the limit of {max_bytes} bytes; upload large data as blobs "
            "(`fogwheel blobs put FILE`, or pass files as inputs: the CLI and SDK upload them)"
        )

    @staticmethod
    async def _refuse(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from `receive`, so that the app answers 413 in its own error format."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)
