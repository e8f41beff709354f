"""The web console's files, served at `/` and `/console/<file>` (docs/console.md).

The console is plain ES modules and CSS committed in `coordinator/console/`: no build step,
nothing fetched from another host. Its data comes from /v1 with the key the user signs in
with (kept in sessionStorage, sent as `Authorization: Bearer`), so these pages themselves
need no key and hold no data.

Every name a device or customer chose is shown as text (the scripts never put such text into
innerHTML), and the Content-Security-Policy below is the second wall: scripts, styles and
requests only from this origin, no inline script, no plugins, no framing.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

PACKAGE = "fogwheel.coordinator"
FOLDER = "console"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\.(js|css|html|svg)$")
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",  # revalidate: a coordinator upgraded serves its new console
}


@functools.cache
def console_files() -> dict[str, bytes]:
    """Every file of the console by name (read once; the names are the allow-list)."""
    folder = resources.files(PACKAGE) / FOLDER
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file() and _NAME.match(f.name)}


def install_console(app: FastAPI) -> None:
    """The console's page at `/` and its files at `/console/<name>`."""

    def answer(name: str) -> Response:
        body = console_files().get(name)
        suffix = name[name.rfind(".") :] if "." in name else ""
        if body is None or suffix not in MEDIA_TYPES:
            raise HTTPException(
                404, f"no console file {name[:80]!r}: the console is at / (docs/console.md)"
            )
        return Response(body, media_type=MEDIA_TYPES[suffix], headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def console_page() -> Response:
        return answer("index.html")

    @app.get("/console/{name}", include_in_schema=False)
    def console_file(name: str) -> Response:
        return answer(name)
