"""Times every HTTP request by its route template and binds it as the context of its log lines.

A plain ASGI middleware (starlette/middleware/trustedhost.py is the model). The label is the
template of the route that matched (`/v1/jobs/{job_id}`), which FastAPI leaves in the scope
(`scope["route"]`) once the router has matched, never the raw path: the label set is as
small as the app's routes (bounded cardinality, and no id or signed URL in a label), and a
path no route matches is one label, `unmatched`. A method outside HTTP's usual ones is
`other`. The status is its class (`2xx` … `5xx`); an exception that escapes the app counts as
`5xx`, which is what its caller is answered. With `--verbose` each request is a DEBUG line
of the `fogwheel.http` logger: method, route template, status and milliseconds (no path, no
query: those may carry ids or a signed URL's signature).
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fogwheel import logs

log = logging.getLogger("fogwheel.http")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that matched the request, or `unmatched`."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    if scope.get("endpoint") is not None:  # a mounted app (static files): where it is mounted
        return f"{str(scope.get('root_path', ''))[:100]}/{{path}}"
    return UNMATCHED


class Observe:
    def __init__(self, app: ASGIApp, requests: Histogram) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = logs.bind_request(scope)
        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - start
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(scope)
            self.requests.labels(method, route, f"{status // 100}xx").observe(elapsed)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %d %.1f ms", method, route, status, 1000 * elapsed)
            logs.unbind_request(token)
