"""How a `fogwheel` command fails: one line on stderr that names the option or the action that
fixes it, and an exit status.

`user_errors()` is the one context manager that turns fogwheel's own exceptions into that
line; `explain(error)` is the sentence, with the coordinator's refusals put in the CLI's words
(`core/explain.py`); `coordinator_url` is the callback that normalises --coordinator.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import typer

from fogwheel.core.explain import explain_refusal
from fogwheel.errors import ApiError, FogwheelError

_HTTP_SUFFIX = re.compile(r"^(?P<message>.*) \(HTTP (?P<status>\d{3})\)$", re.S)


def explain(error: BaseException | str) -> str:
    """The line to show for `error`: an ApiError (or a message ending in "(HTTP nnn)", as
    ApiError and the CLI's own requests write them) in the CLI's words, anything else as is."""
    if isinstance(error, ApiError):
        status, message = error.status, error.message
    else:
        m = _HTTP_SUFFIX.match(str(error))
        if not m:
            return str(error)
        status, message = int(m["status"]), m["message"]
    return f"{explain_refusal(status, message)} (HTTP {status})"


@contextlib.contextmanager
def user_errors(fail: Callable[[str], typer.Exit]) -> Iterator[None]:
    """Inside it, a FogwheelError ends the command with `fail(explain(error))`."""
    try:
        yield
    except FogwheelError as e:
        raise fail(explain(e)) from None


def coordinator_url(value: str | None) -> str | None:
    """--coordinator as the base URL the API lives under: trailing slashes and a trailing /v1
    (a URL copied from the API docs) dropped; any other path is kept, for a coordinator that
    a proxy serves under one."""
    if not value:
        return value
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise typer.BadParameter(
            f"{value!r} is not a coordinator URL: write it as http://HOST:PORT (or https://…), "
            "e.g. http://127.0.0.1:8470"
        )
    path = parts.path.rstrip("/")
    path = re.sub(r"/v1(/.*)?$", "", path)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
