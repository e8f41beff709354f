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

import typer

from fogwheel.core.explain import explain_refusal
from fogwheel.core.urls import coordinator_base
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
    """The --coordinator callback: the base URL the API lives under (core/urls.py), or the
    form it should take."""
    if not value:
        return value
    try:
        return coordinator_base(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
