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


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods some route takes at `scope`'s path, sorted (none: no such path).

    Each method is asked of every route as the router would ask it (a full match: path and
    method), so routes nested in included routers or mounts count as well as flat ones."""
    routes = list(routes)
    return sorted(
        method
        for method in METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    )


def not_allowed_sentence(method: str, path: str, allowed: list[str]) -> str:
    """'DELETE is not allowed on /v1/jobs: it takes GET, POST'."""
    if not allowed:
        return f"{method} is not allowed on {path}"
    return f"{method} is not allowed on {path}: it takes {', '.join(allowed)}"
