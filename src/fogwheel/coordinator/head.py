"""HEAD wherever GET is: GET's status and header fields, without the content.

RFC 9110 §9.1: all general-purpose servers MUST support GET and HEAD; §9.3.2: HEAD is GET
without content, the same header fields. FastAPI's routes take only the methods they name, so
without this `curl -I`, `wget --spider` and link checkers get 405 from /v1/health or /docs.
A route that names HEAD itself (the CDN's content) answers it; elsewhere the request runs as
a GET and its body is dropped. The GET's work is done in full (a HEAD costs what a GET
costs, no more), and the server sends no bytes of it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fogwheel.coordinator.allow import routes_taking


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or "app" not in scope:
            await self.app(scope, receive, send)
            return
        routes = scope["app"].router.routes
        if routes_taking(routes, scope, "HEAD") or not routes_taking(routes, scope, "GET"):
            await self.app(scope, receive, send)  # its own HEAD, or a 404 / 405 as it is
            return
        ended = False

        async def headers_only(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.body":
                if ended:
                    return
                ended = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
