"""Cross-origin reads of CDN content: which `Access-Control-*` headers an answer carries.

The Fetch standard's CORS protocol (fetch.spec.whatwg.org, "CORS protocol"). Two kinds of
request reach the content route: a signed URL (the URL is the capability, like a presigned S3
link, so any page may read it: `*`) and one with a bearer key (only the origins the operator
lists with `coordinator --cors-origin`; none by default, so only same-origin pages such as the
coordinator's own console). fogwheel uses no cookies, so `Access-Control-Allow-Credentials` is
never sent — and with it never the forbidden pair of `*` and credentials. Answers that depend on
the Origin say so with `Vary: Origin`, so a cache never hands one origin's answer to another.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ALLOWED_METHODS = ("GET", "HEAD")
ALLOWED_HEADERS = (
    "authorization",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
)
EXPOSED_HEADERS = "Content-Range, Accept-Ranges, ETag, Content-Length, Last-Modified"
PREFLIGHT_MAX_AGE = 600  # seconds a browser may keep a preflight's answer
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]{1,255}$")


def valid_origin(text: str) -> bool:
    """True for `*` or a serialized origin (`scheme://host[:port]`, no path), what
    `--cors-origin` takes."""
    return text == "*" or bool(_ORIGIN.match(text))


def allowed_origin(origin: str | None, allowed: Sequence[str], signed: bool) -> str | None:
    """The `Access-Control-Allow-Origin` value for a request from `origin`, or None for none."""
    if signed:
        return "*"
    if "*" in allowed:
        return "*"
    if origin is not None and origin in allowed:
        return origin
    return None


def response_headers(origin: str | None, allowed: Sequence[str], signed: bool) -> dict[str, str]:
    """The CORS headers of an actual response (200, 206, 304 and the errors alike, so a page
    can read why it was refused)."""
    out: dict[str, str] = {}
    value = allowed_origin(origin, allowed, signed)
    if value is not None:
        out["access-control-allow-origin"] = value
        out["access-control-expose-headers"] = EXPOSED_HEADERS
    if value != "*" and allowed:
        out["vary"] = "Origin"
    return out


def preflight_headers(
    origin: str | None, method: str, allowed: Sequence[str], signed: bool
) -> dict[str, str] | None:
    """The headers of a preflight's answer (OPTIONS with Access-Control-Request-Method), or
    None when this origin or method may not read the content."""
    value = allowed_origin(origin, allowed, signed)
    if value is None or method.upper() not in ALLOWED_METHODS:
        return None
    out = {
        "access-control-allow-origin": value,
        "access-control-allow-methods": ", ".join(ALLOWED_METHODS),
        "access-control-allow-headers": ", ".join(ALLOWED_HEADERS),
        "access-control-max-age": str(PREFLIGHT_MAX_AGE),
    }
    if value != "*":
        out["vary"] = "Origin"
    return out
