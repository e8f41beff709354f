"""The `Allow` header of a 405: every method the target resource takes, from all its routes.

RFC 9110 §15.5.6: a 405 response MUST carry an `Allow` header listing the target resource's
methods (§10.2.1). Starlette answers 405 from the first route whose path matched, so where
several routes share a path with different methods (`PUT` and `GET /v1/blobs/{sha}`) it names
only that one route's methods; this looks at every route of the app instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

# the methods of RFC 9110 §9 and PATCH (RFC 5789): what a route here may take
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


def routes_taking(routes: Iterable[BaseRoute], scope: Scope, method: str) -> bool:
    """Whether some route takes `method` at `scope`'s path, as the router would ask (a full
    match: path and method), so routes in included routers or mounts count as flat ones do."""
    asked = {**scope, "method": method}
    return any(route.matches(asked)[0] is Match.FULL for route in routes)


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods the app takes at `scope`'s path, sorted (none: no such path); HEAD
    wherever GET is, which coordinator/head.py answers (RFC 9110 §9.3.2)."""
    routes = list(routes)
    taken = {method for method in METHODS if routes_taking(routes, scope, method)}
    if "GET" in taken:
        taken.add("HEAD")
    return sorted(taken)


def not_allowed_sentence(method: str, path: str, allowed: list[str]) -> str:
    """'DELETE is not allowed on /v1/jobs: it takes GET, HEAD, POST'."""
    if not allowed:
        return f"{method} is not allowed on {path}"
    return f"{method} is not allowed on {path}: it takes {', '.join(allowed)}"
