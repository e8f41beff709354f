"""Who may call a route, said once: a dependency that checks the bearer key and declares it.

`caller(auth, "customer", "node")` is a FastAPI dependency giving the request's `Principal`
(401 without a known key, 403 for a key of another kind). Because it depends on one
`HTTPBearer` security scheme per kind of key, the OpenAPI document lists the five schemes in
`components.securitySchemes` and each operation's `security` names the keys it takes, as
alternatives (OpenAPI 3.1 §4.8.30: one requirement object per acceptable scheme). The check and
the document cannot drift apart: they are the same object.

The check runs on the event loop when the Authenticator can answer without the database (a
cached key, or none sent), else in a worker thread: a sync handler's one thread hop stays one,
so the sync route's admission control still measures the queue it means to.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from fogwheel import logs
from fogwheel.coordinator.auth import Authenticator
from fogwheel.store import Principal

# kind of principal -> (scheme name in the OpenAPI document, what the key is, its prefix)
_KEYS = {
    "customer": ("customerKey", "A customer API key (`fwc_…`), sent as a bearer token.", "fwc_"),
    "admin": ("adminKey", "The operator's admin key (`fwa_…`).", "fwa_"),
    "owner": ("ownerKey", "A device owner's key (`fwo_…`, `fogwheel owners create`).", "fwo_"),
    "node": (
        "nodeCredential",
        "A node's credential (`fwn_…`), answered by POST /v1/nodes/join to a join token.",
        "fwn_",
    ),
    "metrics": (
        "metricsKey",
        "A scrape-only key (`fwm_…`, `fogwheel keys create --role metrics`): it reads "
        "/metrics and nothing else.",
        "fwm_",
    ),
}
SCHEMES = {
    kind: HTTPBearer(
        scheme_name=name, description=what, bearerFormat=f"{prefix}…", auto_error=False
    )
    for kind, (name, what, prefix) in _KEYS.items()
}
SCHEME_NAMES = {kind: name for kind, (name, _, _) in _KEYS.items()}
# `openapi_extra=PUBLIC` on a route that takes no key: an explicit empty `security` says so
# (linters such as redocly's security-defined tell it from a route nobody declared)
PUBLIC: dict[str, Any] = {"security": []}


def caller(auth: Authenticator, *kinds: str) -> Any:
    """A dependency: the Principal that sent the request, one of `kinds` (401 / 403 else)."""
    unknown = set(kinds) - set(SCHEMES)
    if not kinds or unknown:
        raise ValueError(f"caller() takes kinds among {sorted(SCHEMES)}, not {sorted(unknown)}")

    async def check(request: Request, **_declared: Any) -> Principal:
        if auth.answers_at_once(request):
            who = auth.require(request, *kinds)
        else:
            who = await run_in_threadpool(auth.require, request, *kinds)
        logs.note_principal(request.scope, who.kind, who.id)  # for its log lines (logs.py)
        return who

    # One keyword parameter per scheme: FastAPI resolves each (it only reads the header) and
    # writes each into the operation's `security`; the check itself reads the header again.
    parameters = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
    ]
    parameters += [
        inspect.Parameter(
            f"{kind}_key",
            inspect.Parameter.KEYWORD_ONLY,
            default=Security(SCHEMES[kind]),
            annotation=HTTPAuthorizationCredentials | None,
        )
        for kind in kinds
    ]
    check.__signature__ = inspect.Signature(parameters, return_annotation=Principal)  # type: ignore[attr-defined]
    check.__name__ = f"caller_{'_or_'.join(kinds)}"
    return Depends(check)
