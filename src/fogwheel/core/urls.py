"""The coordinator's URL as the base the API lives under, however a user wrote it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_API_TAIL = re.compile(r"/v1(/.*)?$")


def coordinator_base(url: str) -> str:
    """`url` without trailing slashes, a query, or a trailing /v1 (a URL copied from the API
    docs, `http://host:8470/v1/jobs`); any other path is kept, for a coordinator that a proxy
    serves under one. ValueError, saying the form, when it is no http(s) URL."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{text!r} is not a coordinator URL: write it as http://HOST:PORT (or https://…), "
            "e.g. http://127.0.0.1:8470"
        )
    path = _API_TAIL.sub("", parts.path.rstrip("/"))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
