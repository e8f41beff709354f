"""The OpenAPI document and its two readers, Swagger UI at /docs and ReDoc at /redoc, offline.

The document is FastAPI's (OpenAPI 3.1) with what generators and linters look for: `servers`
(`--public-url`, else the relative `/`: the host the document was read from, OpenAPI 3.1
§4.8.5), the bearer schemes of coordinator/identity.py, and on every operation that takes a
key the 401 and 403 it may answer, with the error body (`Problem`). Operations without a key
(health, price, the coordinator's key, a node's join) carry no `security`.

Swagger UI and ReDoc come from the `fastapi-offline` wheel (Swagger UI's and ReDoc's own
bundles, installed with the package) and are served from here: no page loads anything from
another host, so /docs works on a machine with no internet, and tells no CDN who reads it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response

from fogwheel.errors import ConfigError
from fogwheel.protocol import Problem

ASSETS_PACKAGE = "fastapi_offline"  # its static/ holds swagger-ui-bundle.js and friends
ASSETS = {  # the only files served under /docs/assets/: name -> media type
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
ASSET_CACHE = "public, max-age=86400"  # the bundles change only with the package
AUTH_ERRORS: dict[str, dict[str, Any]] = {
    "401": {"description": "Missing, unknown or revoked key (`WWW-Authenticate: Bearer`)"},
    "403": {"description": "A key of a kind this operation does not take"},
}
SWAGGER_PARAMETERS = {
    "validatorUrl": None,  # Swagger UI would otherwise send the document to validator.swagger.io
}


def servers_for(public_urls: tuple[str, ...]) -> list[dict[str, str]]:
    """`servers`: the URLs the operator named, else `/` (wherever the document was read)."""
    for url in public_urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ConfigError(
                f"--public-url {url[:80]!r} is not a URL clients can reach: write "
                "http(s)://host[:port][/path], e.g. https://fog.example.com"
            )
    if public_urls:
        return [{"url": url.rstrip("/")} for url in public_urls]
    return [{"url": "/", "description": "this coordinator (relative to the document's URL)"}]


def build_document(app: FastAPI, public_urls: tuple[str, ...]) -> dict[str, Any]:
    """FastAPI's document with `servers` and each keyed operation's 401/403 responses."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        servers=servers_for(public_urls),
        license_info=app.license_info,
        tags=app.openapi_tags,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    problem = "#/components/schemas/Problem"
    schemas.setdefault("Problem", Problem.model_json_schema())
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            invalid = operation["responses"].get("422")
            if invalid is not None:  # app.py answers 422 as a Problem, not FastAPI's shape
                invalid["content"] = {"application/json": {"schema": {"$ref": problem}}}
            if not operation.get("security"):
                continue
            for status, answer in AUTH_ERRORS.items():
                operation["responses"].setdefault(
                    status,
                    {**answer, "content": {"application/json": {"schema": {"$ref": problem}}}},
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in json.dumps(doc["paths"]):
            schemas.pop(unused, None)
    return doc


def install(app: FastAPI, public_urls: tuple[str, ...] = ()) -> None:
    """The document at /openapi.json (built once), Swagger UI at /docs, ReDoc at /redoc.

    The app must be made with `docs_url=None, redoc_url=None` (FastAPI's own pages load
    their scripts from a public CDN)."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app, public_urls)
        return app.openapi_schema

    servers_for(public_urls)  # a bad --public-url fails the start, not the first reader
    app.openapi = document  # type: ignore[method-assign]
    title = f"{app.title} {app.version}"
    icon = "/docs/assets/favicon.png"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title}: API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url=icon,
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title}: API reference",
            redoc_js_url="/docs/assets/redoc.standalone.js",
            redoc_favicon_url=icon,
            with_google_fonts=False,
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, f"no asset {name[:80]!r}: /docs serves {', '.join(ASSETS)}")
        body = asset_bytes(name)
        return Response(body, media_type=media_type, headers={"cache-control": ASSET_CACHE})


@functools.cache
def asset_bytes(name: str) -> bytes:
    """One of the bundled files of Swagger UI or ReDoc (an allow-listed name: no path walks)."""
    if name not in ASSETS:
        raise KeyError(name)
    return (resources.files(ASSETS_PACKAGE) / "static" / name).read_bytes()
