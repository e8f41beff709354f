"""What a node's reported result becomes on the customer's machine: data, never code.

`decode_value` runs a value through the restricted decoder (`safe_pickle`), or full pickle
only when the customer opted in (`unsafe_trust_nodes`); `rebuild_exception` makes an exception
from the plain fields a worker reports (type name, message, args), never by unpickling, and
only of a builtin or trusted type (else `RemoteError`); `command_info` checks a command's exit
status and output tails for shape; `check_complete` fails a result that lacks an output file
its task requested.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle

from fogwheel import safe_pickle
from fogwheel.errors import IntegrityError, RemoteError, TaskFailed


def decode_value(decoder: safe_pickle.Decoder | None, raw: bytes) -> Any:
    """A node's value: through the restricted decoder, or full pickle when opted in."""
    if decoder is None:
        return cloudpickle.loads(raw)
    return decoder.loads(raw)


def rebuild_exception(decoder: safe_pickle.Decoder | None, err: Mapping[str, Any]) -> BaseException:
    """An exception like the one the task raised, built from plain fields, never unpickled:
    a builtin or trusted type from its args (or its message); any other, `RemoteError`."""
    type_name = str(err.get("type") or "Exception")
    message = str(err.get("message") or "")
    args = err.get("args")
    # With unsafe_trust_nodes the customer trusts whatever type a node names.
    trusted = decoder.exception_type if decoder is not None else _import_exception
    cls = trusted(type_name)
    if cls is not None:
        for attempt in (tuple(args) if isinstance(args, list) else None, (message,)):
            if attempt is None:
                continue
            try:
                exc = cls(*attempt)
            except Exception:
                continue
            if str(exc) == message or attempt == (message,):
                return exc
    return RemoteError(type_name, message)


def _import_exception(type_name: str) -> type[BaseException] | None:
    try:
        cls = safe_pickle.resolve(type_name if ":" in type_name else f"builtins:{type_name}")
    except Exception:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def command_info(raw: bytes) -> dict[str, Any]:
    """A command's exit status and output tails (JSON from the node), checked for shape."""
    try:
        info = json.loads(raw)
        out = {
            "returncode": int(info["returncode"]),
            "stdout": str(info.get("stdout", "")),
            "stderr": str(info.get("stderr", "")),
        }
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"a command's result did not decode: {e}") from None
    return out


def check_complete(files: Mapping[str, Any], names: Sequence[str] | None) -> None:
    missing = sorted(set(names or ()) - set(files))
    if missing:
        raise TaskFailed(
            f"the task's result lacks the output files it requested: {', '.join(missing)} "
            "(the node that reported it did not return them)"
        )
