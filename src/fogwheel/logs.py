"""Log lines as text or as JSON lines, carrying the ids of the work they concern, never a secret.

`configure("json")` (`--log-format json`, `FOGWHEEL_LOG_FORMAT=json`, on the coordinator and
the node agent) writes one JSON object per line to stderr: `time` (ISO 8601, UTC), `level`,
`logger`, `message`, `exception` when there is one, and `job_id`, `task_id`, `node_id` (and
`customer_id`) wherever they are known. They are known from context, not from each call:

- the coordinator binds the ASGI scope of the request being handled (`bind_request`); the
  route's path parameters give the job and task, the caller's key (coordinator/identity.py
  `note_principal`) the node or customer, looked up when a line is written, so a line
  logged anywhere under a route (a store method, a worker thread) carries them;
- the node agent binds its node id for the whole process (`bind_process`) and each lease's
  job and task while it runs (`ids`).

Ids read from a request are an attacker's bytes: each is cut to 64 characters, and JSON
escaping keeps a line one line. Every message and traceback passes `redact` first, in both
formats: fogwheel's keys and tokens (`fwX_…`), bearer tokens, passwords in URLs and
`key=value` secrets are replaced by `[redacted]` (docs/metrics.md, "Logs").
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar, Token
from typing import Any


class LogFormat(enum.StrEnum):
    """How log lines are written (`--log-format`)."""

    TEXT = "text"
    JSON = "json"


FORMATS = tuple(f.value for f in LogFormat)
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
PRINCIPAL = "fogwheel.principal"  # ASGI scope key: (kind, id) of the caller's key
_ID_MAX = 64
# path parameters that name work, and the field each becomes
_PATH_IDS = (("job_id", "job_id"), ("task_id", "task_id"), ("node_id", "node_id"))

_request: ContextVar[MutableMapping[str, Any] | None] = ContextVar("fogwheel_request", default=None)
_ids: ContextVar[dict[str, str] | None] = ContextVar("fogwheel_ids", default=None)
_process: dict[str, str] = {}
_format = "text"

# fogwheel secrets are a prefix of three letters and an underscore (store/base.py new_secret)
_SECRET = re.compile(r"\b(fw[a-z])_[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s,;\"']+")
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.\-]*://[^/\s:@]*):[^@\s/]+@", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"(?i)\b(token|api_key|apikey|admin_key|key|secret|password|passwd|credential|sig|"
    r"signature)=([^\s&\"',;]+)"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` with every secret it seems to hold replaced by `[redacted]`."""
    text = _SECRET.sub(rf"\1_{REDACTED}", text)
    text = _BEARER.sub(rf"\1\2{REDACTED}", text)
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    return _KEY_VALUE.sub(rf"\1={REDACTED}", text)


# -- context ---------------------------------------------------------------------------------


def bind_process(**fields: object) -> None:
    """Fields true of every line this process writes from now on (the agent's node id)."""
    _process.update({k: _bounded(v) for k, v in fields.items() if v is not None})


@contextlib.contextmanager
def ids(**fields: object) -> Iterator[None]:
    """Fields of the lines written inside this block, in this thread (a lease's job, task)."""
    token = _ids.set({**(_ids.get() or {}), **{k: _bounded(v) for k, v in fields.items()}})
    try:
        yield
    finally:
        _ids.reset(token)


def set_ids(**fields: object) -> None:
    """Replace this thread's fields (a slot's lease while it runs; none: clear them)."""
    _ids.set({k: _bounded(v) for k, v in fields.items() if v is not None} or None)


def bind_request(scope: MutableMapping[str, Any]) -> Token[MutableMapping[str, Any] | None]:
    """The request whose lines come next (coordinator/observe.py); `unbind_request` after."""
    return _request.set(scope)


def unbind_request(token: Token[MutableMapping[str, Any] | None]) -> None:
    _request.reset(token)


def note_principal(scope: MutableMapping[str, Any], kind: str, id_: str) -> None:
    """Whose key the request carries, for its log lines (coordinator/identity.py)."""
    scope[PRINCIPAL] = (kind, id_)


def current_ids() -> dict[str, str]:
    """The ids known here and now: the process's, the request's, then this block's."""
    out = dict(_process)
    scope = _request.get()
    if scope is not None:
        params = scope.get("path_params") or {}
        for param, name in _PATH_IDS:
            if param in params:
                out[name] = _bounded(params[param])
        who = scope.get(PRINCIPAL)
        if who is not None and who[0] in ("node", "customer"):
            out[f"{who[0]}_id"] = _bounded(who[1])
    out.update(_ids.get() or {})
    return out


def _bounded(value: object) -> str:
    return str(value)[:_ID_MAX]


# -- formats -----------------------------------------------------------------------------------


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line; messages and tracebacks redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(getattr(record, "fogwheel_ids", None) or current_ids())
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        return json.dumps(line, default=str)


class RedactedText(logging.Formatter):
    """The usual text line, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _Ids(logging.Filter):
    """Takes the ids into the record in the thread that logs it (a handler may format later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.fogwheel_ids = current_ids()
        return True


def configure(log_format: str = "text", verbose: bool = False) -> None:
    """Send every log line to stderr in `log_format` (text or json), at INFO (DEBUG verbose)."""
    global _format
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: say text or json")
    _format = log_format
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
        handler.addFilter(_Ids())
    else:
        handler.setFormatter(RedactedText(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def configured_format() -> str:
    """The format `configure` set ("text" until it is called)."""
    return _format
